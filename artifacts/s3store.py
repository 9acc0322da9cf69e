"""`s3://bucket/prefix` through aiobotocore: bounded concurrency, retries, sha256 on the way up and down.

Credentials come from the standard AWS chain (env, profile, instance role); the endpoint from
StoreConfig.endpoint_url, else $INCL_S3_ENDPOINT_URL, else $AWS_ENDPOINT_URL_S3, else AWS's own rules.
The client is made on the first request, so a caller that ends up sending none (an unchanged tree whose
upload is already recorded) never pays for importing it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

from botocore.exceptions import ClientError

from incl.artifacts import s3multipart
from incl.artifacts.atomic import atomic_file
from incl.artifacts.config import StoreConfig
from incl.artifacts.errors import FileChanged, IntegrityError, InvalidStoreUrl, NotFound
from incl.artifacts.reading import source
from incl.artifacts.s3multipart import b64
from incl.artifacts.s3retry import error_code, retrying
from incl.artifacts.store import ArtifactStore, ObjectInfo, check_key

T = TypeVar("T")

MISSING = frozenset({"NoSuchKey", "404", "NotFound"})


def endpoint_for(config: StoreConfig) -> str | None:
    return (config.endpoint_url or os.environ.get("INCL_S3_ENDPOINT_URL")
            or os.environ.get("AWS_ENDPOINT_URL_S3") or None)


class S3Store(ArtifactStore):
    def __init__(self, url: str, config: StoreConfig) -> None:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise InvalidStoreUrl(f"{url!r}: an S3 store is s3://bucket or s3://bucket/prefix", path=url)
        self.url = url
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.cfg = config
        self.endpoint = endpoint_for(config)
        self.slots = asyncio.Semaphore(config.max_concurrency)
        self._stack = AsyncExitStack()
        self._client: Any = None
        self._client_lock = asyncio.Lock()

    @property
    def identity(self) -> str:
        endpoint = self.endpoint or os.environ.get("AWS_ENDPOINT_URL") or "aws"
        return f"s3://{self.bucket}/{self.prefix} at {endpoint}"

    async def __aenter__(self) -> S3Store:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def client(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._client_lock:
            if self._client is None:
                from incl.artifacts.s3api import make_client  # noqa: PLC0415 - the expensive import, on first use only

                self._client = await make_client(self._stack, self.endpoint, self.cfg)
        return self._client

    def key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    async def call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        """One request (or a few that belong together), in a concurrency slot, retried as StoreConfig says."""
        async with self.slots:
            return await retrying(f"{what} {self.url}", fn, self.cfg)

    async def put_file(self, key: str, path: Path, *, sha256: str | None = None, fd: int | None = None) -> None:
        size = (os.stat(path) if fd is None else os.fstat(fd)).st_size  # a microsecond: not worth a thread hop
        if size > self.cfg.multipart_threshold:
            await s3multipart.upload(self, self.key(key), path, fd, size, sha256)
            return

        async def put() -> None:
            if size <= self.cfg.inline_read_max:  # microseconds from the page cache: less than a thread hop
                data = _read_checked(path, fd, sha256)
            else:
                data = await asyncio.to_thread(_read_checked, path, fd, sha256)
            await self._put(self.key(key), data, sha256 or hashlib.sha256(data).hexdigest())

        await self.call(f"PUT {key} to", put)

    async def put_bytes(self, key: str, data: bytes) -> None:
        sha256 = hashlib.sha256(data).hexdigest()
        await self.call(f"PUT {key} to", lambda: self._put(self.key(key), data, sha256))

    async def _put(self, key: str, data: bytes, sha256: str) -> None:
        client = await self.client()
        await client.put_object(Bucket=self.bucket, Key=key, Body=data, ChecksumSHA256=b64(sha256))

    async def get_file(self, key: str, dest: Path, *, sha256: str | None = None) -> int:
        return await self.call(f"GET {key} from", lambda: self._download(key, dest, sha256))

    async def _download(self, key: str, dest: Path, sha256: str | None) -> int:
        resp = await self._get(key)
        digest, size = hashlib.sha256(), 0
        with atomic_file(dest) as out:  # chunk-sized writes to the page cache: short enough for the loop
            async with resp["Body"] as body:
                while chunk := await body.read(self.cfg.chunk_size):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            if sha256 is not None and digest.hexdigest() != sha256:
                raise IntegrityError(f"{self.url}: {key} has sha256 {digest.hexdigest()}, not {sha256}: "
                                     "the stored object is corrupt", path=key)
        return size

    async def get_bytes(self, key: str) -> bytes:
        async def get() -> bytes:
            resp = await self._get(key)
            async with resp["Body"] as body:
                return bytes(await body.read())

        return await self.call(f"GET {key} from", get)

    async def stream(self, key: str, *, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """One GET (retried until it answers; a failure mid-body ends the stream with its error: the bytes sent
        so far cannot be taken back)."""
        if length == 0:
            return
        span = f"bytes={offset}-" + (str(offset + length - 1) if length is not None else "")
        resp = await self.call(f"GET {key} from", lambda: self._get(key, None if span == "bytes=0-" else span))
        async with resp["Body"] as body:
            while chunk := await body.read(self.cfg.chunk_size):
                yield chunk

    async def _get(self, key: str, span: str | None = None) -> Any:
        client = await self.client()
        try:
            if span is not None:
                return await client.get_object(Bucket=self.bucket, Key=self.key(key), Range=span)
            return await client.get_object(Bucket=self.bucket, Key=self.key(key))
        except ClientError as exc:
            if error_code(exc)[0] in MISSING:
                raise NotFound(f"{self.url}: no object {key}", path=key) from None
            raise

    async def exists(self, key: str) -> bool:
        async def head() -> bool:
            client = await self.client()
            try:
                await client.head_object(Bucket=self.bucket, Key=self.key(key))
            except ClientError as exc:
                if error_code(exc)[0] in MISSING:
                    return False
                raise
            return True

        return await self.call(f"HEAD {key} in", head)

    async def list(self, prefix: str, *, limit: int | None = None) -> list[ObjectInfo]:
        found: list[ObjectInfo] = []
        token: str | None = None
        root = f"{self.prefix}/" if self.prefix else ""
        while limit is None or len(found) < limit:
            page = await self.call(f"LIST {prefix}* in",
                                   functools.partial(self._list_page, root + prefix, token, limit))
            found += [ObjectInfo(o["Key"][len(root):], o["Size"], o["ETag"].strip('"'), o["LastModified"].timestamp())
                      for o in page.get("Contents", [])]
            token = page.get("NextContinuationToken")
            if not token:
                break
        return found if limit is None else found[:limit]

    async def _list_page(self, prefix: str, token: str | None, limit: int | None) -> Any:
        client = await self.client()
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": min(limit or 1000, 1000)}
        if token:
            args["ContinuationToken"] = token
        return await client.list_objects_v2(**args)

    async def delete(self, key: str) -> None:
        async def delete() -> None:
            client = await self.client()
            await client.delete_object(Bucket=self.bucket, Key=self.key(key))

        await self.call(f"DELETE {key} in", delete)

    async def delete_unchanged(self, info: ObjectInfo) -> bool:
        """A HEAD, then the DELETE if the object's date is the listing's (S3 dates to the second; an ETag is the
        content's, the same for a blob uploaded again). S3 has no conditional DELETE: a PUT landing between the two
        requests is lost, which a push's check after its manifest write (push.py) repairs."""
        async def head() -> float | None:
            client = await self.client()
            try:
                got = await client.head_object(Bucket=self.bucket, Key=self.key(info.key))
            except ClientError as exc:
                if error_code(exc)[0] in MISSING:
                    return None
                raise
            return float(got["LastModified"].timestamp())

        mtime = await self.call(f"HEAD {info.key} in", head)
        if mtime is None or int(mtime) != int(info.mtime):
            return False
        await self.delete(info.key)
        return True


def _read_checked(path: Path, fd: int | None, sha256: str | None) -> bytes:
    """The file's bytes, which must hash to `sha256`: what goes up is exactly what was hashed."""
    with source(path, fd) as f:
        data = f.read()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise FileChanged.while_uploading(path)
    return data
