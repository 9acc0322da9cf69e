"""The artifact store: a flat key → bytes space, `file://DIR` or `s3://bucket/prefix`.

    async with open_store("s3://team-bucket/incl", config=StoreConfig()) as store:
        await store.put_file("blobs/ab/ab12...", path, sha256="ab12...")

Keys are relative POSIX paths without `..`. Trees, refs and blobs are laid out on top of this by
`incl.artifacts.refs`; nothing here knows about them.
"""

from __future__ import annotations

import abc
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import NamedTuple

from incl.artifacts.config import StoreConfig
from incl.artifacts.errors import InvalidStoreUrl, StoreError

_KEY_PART = re.compile(r"[^/\x00]+")


class ObjectInfo(NamedTuple):
    key: str  # relative to the store's root
    size: int
    etag: str  # changes whenever the object's content does (S3's ETag; size and mtime for file://)
    mtime: float = 0.0  # when it was last written, seconds since the epoch (S3's LastModified; the file's mtime)


class ArtifactStore(abc.ABC):
    """What tree sync needs from a backend. Every method retries transient failures itself."""

    url: str

    @property
    @abc.abstractmethod
    def identity(self) -> str:
        """A name for this exact store (URL and endpoint), under which a client remembers what it holds."""

    @abc.abstractmethod
    async def put_file(self, key: str, path: Path, *, sha256: str | None = None, fd: int | None = None) -> None:
        """Store a file's bytes: read from the open file `fd` (from its start; it stays open) when given, else
        from `path`. With `sha256`, raise FileChanged unless what was read hashes to it."""

    @abc.abstractmethod
    async def put_bytes(self, key: str, data: bytes) -> None: ...

    @abc.abstractmethod
    async def get_file(self, key: str, dest: Path, *, sha256: str | None = None) -> int:
        """Write the object to `dest` atomically (temp file and rename); return its size.
        With `sha256`, raise IntegrityError (and leave `dest` untouched) unless the bytes hash to it."""

    @abc.abstractmethod
    async def get_bytes(self, key: str) -> bytes:
        """The object's bytes; NotFound when there is none."""

    @abc.abstractmethod
    def stream(self, key: str, *, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The object's bytes from `offset` (`length` of them, or to the end), chunk by chunk (StoreConfig.
        chunk_size): never whole in memory. NotFound, before the first chunk, when there is no such object."""

    @abc.abstractmethod
    async def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    async def list(self, prefix: str, *, limit: int | None = None) -> list[ObjectInfo]:
        """Objects whose key starts with `prefix`, in key order; at most `limit` of them."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the object; no error when there is none."""

    @abc.abstractmethod
    async def delete_unchanged(self, info: ObjectInfo) -> bool:
        """Remove the object `info` (from a listing) describes only if it was not written since: True when it went,
        False when it was written again meanwhile (kept) or is gone already. The collector's delete."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") or not _KEY_PART.fullmatch(p) for p in parts):
        raise StoreError(f"invalid store key {key!r}: keys are relative paths without '.', '..' or '//'",
                         path=key)
    return key


@asynccontextmanager
async def open_store(url: str, *, config: StoreConfig | None = None) -> AsyncIterator[ArtifactStore]:
    """The store at `url`, open for the `async with` block; its connections close at the end."""
    config = config or StoreConfig()
    if url.startswith("file://"):
        from incl.artifacts.filestore import FileStore  # noqa: PLC0415 - each backend loads only when used

        yield FileStore(url, config)
    elif url.startswith("s3://"):
        from incl.artifacts.s3store import S3Store  # noqa: PLC0415 - its client is imported on its first request (s3store.py)

        async with S3Store(url, config) as store:
            yield store
    else:
        raise InvalidStoreUrl(f"{url!r} is not an artifact store: use file:///path or s3://bucket/prefix",
                              path=url)
