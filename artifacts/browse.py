"""Reading stored outputs as a browser does: the files of one or more trees under one listing, one file's bytes
streamed (checked against its SHA-256 as they go), and a folder as a tar archive written chunk by chunk.

Nothing here holds a file, let alone a folder, in memory: each chunk read from the store is handed on before the
next is read (StoreConfig.chunk_size), so a 5 GB output costs the reader two chunks of memory. Each file's last
chunk is held back until the whole file has hashed to its digest; bytes that do not end the stream with
IntegrityError instead: what was sent cannot be taken back, but the download stops short of its Content-Length
(a failed download), never a complete-looking wrong file.
"""

from __future__ import annotations

import hashlib
import posixpath
import tarfile
from collections.abc import AsyncGenerator, AsyncIterator
from typing import NamedTuple

from incl.artifacts import manifest as mf
from incl.artifacts.errors import IntegrityError, NotFound
from incl.artifacts.refs import blob_key, pack_key, read_manifest
from incl.artifacts.store import ArtifactStore

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE


class Item(NamedTuple):
    """An entry of the outputs: its path under the listing's root, its manifest entry, and the pack holding its
    bytes (None: a blob of its own, or not a file)."""
    path: str
    entry: mf.Entry
    pack: str | None = None

    @property
    def kind(self) -> str:
        return self.entry.kind

    @property
    def size(self) -> int:
        return self.entry.size


async def items(store: ArtifactStore, trees: list[tuple[str, str]]) -> list[Item]:
    """Every entry of `trees` ((folder, tree digest or ref) pairs; a folder is "" or "rank-K/"), each path under
    its folder, sorted by path; a non-empty folder is listed as a folder entry of its own."""
    out: list[Item] = []
    for folder, tree in trees:
        _, manifest = await read_manifest(store, tree)
        packs = manifest.pack_ids
        if folder:
            out.append(Item(folder.rstrip("/"), mf.Entry(path=folder.rstrip("/"), kind="dir", mode=0o755)))
        out += [Item(folder + e.path, e, packs[e.pack] if e.pack >= 0 else None) for e in manifest.entries]
    return sorted(out, key=lambda i: i.path)


def clean(path: str) -> str:
    """A path as the listing spells it ("" for the root); NotFound for one that climbs out."""
    stripped = path.strip("/")
    if not stripped:
        return ""
    norm = posixpath.normpath(stripped)
    if norm.startswith("..") or norm.startswith("/") or norm == ".":
        raise NotFound(f"{path!r} is not among the outputs", path=path)
    return norm


def under(listing: list[Item], path: str) -> list[Item]:
    """The entries `path` names: the file itself, or a folder with everything under it ("" is every entry);
    NotFound when it names none."""
    path = clean(path)
    if not path:
        return list(listing)
    inside = path + "/"
    chosen = [i for i in listing if i.path == path or i.path.startswith(inside)]
    if not chosen:
        raise NotFound(f"{path!r} is not among the outputs", path=path)
    return chosen


async def read(store: ArtifactStore, item: Item) -> AsyncGenerator[bytes, None]:
    """The file's bytes, chunk by chunk; IntegrityError instead of the last one unless they hash to its digest."""
    e = item.entry
    if e.size == 0:
        chunks: AsyncIterator[bytes] | None = None
    elif item.pack is None:
        chunks = store.stream(blob_key(e.digest))
    else:
        chunks = store.stream(pack_key(item.pack), offset=e.offset, length=e.size)
    digest, size = hashlib.sha256(), 0
    held: bytes | None = None  # the last chunk goes out only once the whole file has hashed right
    if chunks is not None:
        async for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
            if held is not None:
                yield held
            held = chunk
    if size != e.size or digest.hexdigest() != e.digest:
        raise IntegrityError(f"{item.path}: the stored bytes do not hash to its digest {e.digest[:12]}: the stored "
                             "copy is corrupt", path=item.path)
    if held is not None:
        yield held


async def read_part(store: ArtifactStore, item: Item, start: int, length: int) -> AsyncGenerator[bytes, None]:
    """`length` of the file's bytes from `start` (a download resumed with an HTTP Range), chunk by chunk. A part
    cannot be checked against the file's digest without reading the rest: the client that asked for it checks the
    whole file (the response's ETag is the digest)."""
    e = item.entry
    if item.pack is None:
        chunks = store.stream(blob_key(e.digest), offset=start, length=length)
    else:
        chunks = store.stream(pack_key(item.pack), offset=e.offset + start, length=length)
    async for chunk in chunks:
        yield chunk


def _info(item: Item, name: str, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = int(mtime)
    info.mode = item.entry.mode or (0o755 if item.kind == "dir" else 0o644)
    if item.kind == "dir":
        info.type = tarfile.DIRTYPE
    elif item.kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, item.entry.target
    else:
        info.size = item.size
    return info


class Archive:
    """A tar archive (POSIX pax, so any path length and any UTF-8 name) of `chosen`, each under `root`: the
    folder part before it is cut off (a folder `ckpt/best` becomes `best/...` in the archive). Its length is
    known before a byte is written, so the response can say so."""

    def __init__(self, chosen: list[Item], root: str, top: str, mtime: float) -> None:
        cut = len(root) + 1 if root else 0
        self._headers: list[tuple[Item, bytes]] = []
        for item in chosen:
            name = posixpath.join(top, item.path[cut:]) if item.path != root else top
            header = _info(item, name, mtime).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
            self._headers.append((item, header))
        body = sum(len(h) + _padded(i.size if i.kind == "file" else 0) for i, h in self._headers) + 2 * BLOCK
        self.size = _padded(body, RECORD)

    async def chunks(self, store: ArtifactStore) -> AsyncGenerator[bytes, None]:
        written = 0
        for item, header in self._headers:
            yield header
            written += len(header)
            if item.kind != "file":
                continue
            async for chunk in read(store, item):
                yield chunk
            if pad := _padded(item.size) - item.size:
                yield tarfile.NUL * pad
            written += _padded(item.size)
        yield tarfile.NUL * (self.size - written)


def _padded(size: int, unit: int = BLOCK) -> int:
    return -(-size // unit) * unit
