"""`file://DIR`: objects are files under DIR. Every write goes to a temp file beside its target and is renamed
into place, so readers and concurrent writers never see a partial object."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

from incl.artifacts.atomic import TEMP_PREFIX, atomic_file
from incl.artifacts.config import StoreConfig
from incl.artifacts.errors import FileChanged, IntegrityError, InvalidStoreUrl, NotFound
from incl.artifacts.reading import source
from incl.artifacts.store import ArtifactStore, ObjectInfo, check_key

T = TypeVar("T")


class FileStore(ArtifactStore):
    def __init__(self, url: str, config: StoreConfig) -> None:
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise InvalidStoreUrl(f"{url!r}: a file store is file:///absolute/path", path=url)
        self.url = url
        self.root = Path(unquote(parsed.path))
        self._cfg = config
        self._slots = asyncio.Semaphore(config.max_concurrency)

    @property
    def identity(self) -> str:
        return "file://" + os.path.realpath(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        async with self._slots:
            return await asyncio.to_thread(fn, *args)

    async def put_file(self, key: str, path: Path, *, sha256: str | None = None, fd: int | None = None) -> None:
        await self._run(self._copy_in, path, fd, self._path(key), sha256)

    async def put_bytes(self, key: str, data: bytes) -> None:
        await self._run(_write, self._path(key), [data], self._cfg.fsync)

    async def get_file(self, key: str, dest: Path, *, sha256: str | None = None) -> int:
        return await self._run(self._copy_out, self._path(key), dest, sha256)

    async def get_bytes(self, key: str) -> bytes:
        try:
            return await self._run(self._path(key).read_bytes)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{self.url}: no object {key}", path=key) from None

    async def stream(self, key: str, *, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        path = self._path(key)
        try:
            f = await self._run(open, path, "rb")
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"{self.url}: no object {key}", path=key) from None
        try:
            left = length
            while left is None or left > 0:
                size = self._cfg.chunk_size if left is None else min(left, self._cfg.chunk_size)
                chunk = await self._run(os.pread, f.fileno(), size, offset)
                if not chunk:
                    break
                offset += len(chunk)
                left = None if left is None else left - len(chunk)
                yield chunk
        finally:
            f.close()

    async def exists(self, key: str) -> bool:
        return await self._run(self._path(key).is_file)

    async def list(self, prefix: str, *, limit: int | None = None) -> list[ObjectInfo]:
        folder = prefix.rsplit("/", 1)[0] if "/" in prefix else ""  # the walk starts where the prefix's keys are
        found = await self._run(_list, self.root, self._path(folder) if folder else self.root, prefix)
        return found if limit is None else found[:limit]

    async def delete(self, key: str) -> None:
        await self._run(self._path(key).unlink, True)

    async def delete_unchanged(self, info: ObjectInfo) -> bool:
        return await self._run(_delete_unchanged, self._path(info.key), info.etag)

    def _copy_in(self, src: Path, fd: int | None, target: Path, sha256: str | None) -> None:
        digest = hashlib.sha256()

        def chunks() -> Iterator[bytes]:
            with source(src, fd) as f:
                while chunk := f.read(self._cfg.chunk_size):
                    digest.update(chunk)
                    yield chunk
            if sha256 is not None and digest.hexdigest() != sha256:
                raise FileChanged.while_uploading(src)

        _write(target, chunks(), self._cfg.fsync)

    def _copy_out(self, src: Path, dest: Path, sha256: str | None) -> int:
        digest, size = hashlib.sha256(), 0

        def chunks() -> Iterator[bytes]:
            nonlocal size
            try:
                f = open(src, "rb")  # noqa: SIM115 - closed by the `with f` below, once open succeeded
            except (FileNotFoundError, NotADirectoryError):
                raise NotFound(f"{self.url}: no object {src.relative_to(self.root)}", path=str(src)) from None
            with f:
                while chunk := f.read(self._cfg.chunk_size):
                    digest.update(chunk)
                    size += len(chunk)
                    yield chunk
            if sha256 is not None and digest.hexdigest() != sha256:
                raise IntegrityError(f"{self.url}: {src.relative_to(self.root)} has sha256 {digest.hexdigest()}, "
                                     f"not {sha256}: the stored object is corrupt", path=str(src))

        _write(dest, chunks(), fsync=False)  # the reader's copy: a cache, checked by size when reused
        return size


def _write(target: Path, chunks: Iterable[bytes], fsync: bool) -> None:
    with atomic_file(target, fsync=fsync) as out:
        for chunk in chunks:
            out.write(chunk)


def _delete_unchanged(path: Path, etag: str) -> bool:
    """Move the object aside (a rename: atomic, and a name listings skip), then look at what was moved: written
    again since the listing, it goes back unless a newer one took its place meanwhile. A writer that renames its
    copy into place either does so before (and is moved aside, then back) or after (and stays): no window."""
    aside = path.with_name(f"{TEMP_PREFIX}gc-{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except (FileNotFoundError, NotADirectoryError):
        return False
    st = os.stat(aside)
    if _etag(st) != etag:
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        os.unlink(aside)
        return False
    os.unlink(aside)
    return True


def _etag(st: os.stat_result) -> str:
    return f"{st.st_size:x}-{st.st_mtime_ns:x}"


def _list(root: Path, base: Path, prefix: str) -> list[ObjectInfo]:
    """Objects under `root` whose key starts with `prefix`, walking only the folder `base`."""
    found = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in filenames:
            if name.startswith(TEMP_PREFIX):
                continue
            path = os.path.join(dirpath, name)
            key = os.path.relpath(path, root).replace(os.sep, "/")
            if key.startswith(prefix):
                try:
                    st = os.stat(path)
                except FileNotFoundError:  # deleted meanwhile
                    continue
                found.append(ObjectInfo(key, st.st_size, _etag(st), st.st_mtime))
    found.sort()
    return found
