"""A tree's manifest: every entry's path, kind, mode, size and content digest, encoded deterministically.

The SHA-256 of the encoded manifest is the tree's id: the same tree always gives the same id, whichever
machine snapshots it. Entries are sorted by path; paths are relative POSIX paths.

Version 2 adds packs (see packs.py): a tree with thousands of small files stores them in a few pack objects,
and each such file's entry names its pack (an index into `packs`) and its offset there. A tree without packs
is still written as version 1, byte for byte as before (its id does not change); both versions are read.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterable
from typing import Literal

import msgspec

from incl.artifacts.errors import InvalidManifest

VERSION = 2  # the newest this INCL reads and writes; trees without packs are written as version 1
READS = (1, 2)
Kind = Literal["file", "dir", "symlink"]


class Entry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    path: str
    kind: Kind
    mode: int = 0  # permission bits (0o7777) of files and folders
    size: int = 0
    digest: str = ""  # SHA-256 of a file's content
    target: str = ""  # where a symlink points, relative to its folder
    pack: int = -1  # version 2: a file stored in a pack: its index in Manifest.packs; -1: a blob of its own
    offset: int = 0  # ...and where its bytes start in that pack


class Manifest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    version: int = 1
    entries: list[Entry] = []
    packs: list[str] | msgspec.UnsetType = msgspec.UNSET  # version 2: pack ids; never encoded when unset

    @property
    def pack_ids(self) -> list[str]:
        return self.packs if isinstance(self.packs, list) else []

    @property
    def files(self) -> list[Entry]:
        return [e for e in self.entries if e.kind == "file"]

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries if e.kind == "file")


class Ref(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A named pointer to a tree (refs/jobs/<job>/checkpoints...), moved by writing it again."""

    digest: str


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Manifest)


def build(entries: Iterable[Entry], packs: list[str] | None = None) -> Manifest:
    ordered = sorted(entries, key=lambda e: e.path)
    if packs:
        return Manifest(version=2, entries=ordered, packs=packs)
    return Manifest(entries=ordered)


def encode(manifest: Manifest) -> tuple[bytes, str]:
    """The manifest's bytes and their SHA-256, the tree's id."""
    data = _encoder.encode(manifest)
    return data, hashlib.sha256(data).hexdigest()


def decode(data: bytes, digest: str) -> Manifest:
    """Bytes read from the store, checked against their id and for paths that would escape the folder."""
    if hashlib.sha256(data).hexdigest() != digest:
        raise InvalidManifest(f"manifest {digest} does not hash to its name: the stored copy is corrupt",
                              path=digest)
    try:
        manifest = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise InvalidManifest(f"manifest {digest} is malformed: {exc}", path=digest) from None
    if manifest.version not in READS:
        raise InvalidManifest(f"manifest {digest} has version {manifest.version}; this INCL reads versions up to "
                              f"{VERSION}", path=digest)
    check(manifest)
    return manifest


def check(manifest: Manifest) -> None:
    """Refuse what pull_tree must never write: absolute or `..` paths, duplicates, entries under a symlink."""
    links = {e.path for e in manifest.entries if e.kind == "symlink"}
    packs = len(manifest.pack_ids) if manifest.version >= 2 else 0
    seen: set[str] = set()
    for e in manifest.entries:
        if not e.path or e.path.startswith("/") or posixpath.normpath(e.path) != e.path or e.path == ".":
            raise InvalidManifest(f"{e.path!r}: not a plain relative path", path=e.path)
        if e.path.split("/")[0] == ".." or e.path in seen:
            raise InvalidManifest(f"{e.path!r}: outside the tree or listed twice", path=e.path)
        parent = posixpath.dirname(e.path) if links else ""
        while parent:
            if parent in links:
                raise InvalidManifest(f"{e.path!r}: under the symlink {parent!r}", path=e.path)
            parent = posixpath.dirname(parent)
        if e.kind == "file" and len(e.digest) != 64:
            raise InvalidManifest(f"{e.path!r}: a file without a SHA-256", path=e.path)
        if e.pack != -1 and not (e.kind == "file" and 0 <= e.pack < packs and e.offset >= 0):
            raise InvalidManifest(f"{e.path!r}: names a pack the manifest does not list", path=e.path)
        seen.add(e.path)
