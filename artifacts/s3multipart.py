"""A big file goes up to S3 in parts, a few at a time, each with its SHA-256; the whole file is hashed on the
way so that a file that changed since it was hashed is caught before the upload completes."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import structlog

from incl.artifacts.batches import run_all
from incl.artifacts.errors import FileChanged
from incl.artifacts.reading import source

if TYPE_CHECKING:
    from incl.artifacts.s3store import S3Store

log = structlog.get_logger()

MAX_PARTS = 10_000  # S3's limit


def b64(hex_digest: str) -> str:
    """A SHA-256 as S3's checksum headers carry it."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


class _Parts:
    """Reads parts in order (so that one running hash sees the whole file) for workers that upload them."""

    def __init__(self, f: IO[bytes], size: int, part_size: int) -> None:
        self.f, self.part_size = f, part_size
        self.count = max(1, -(-size // part_size))
        self.next = 1
        self.whole = hashlib.sha256()
        self.lock = asyncio.Lock()
        self.done: dict[int, dict[str, Any]] = {}

    def _read(self) -> tuple[bytes, str]:
        data = self.f.read(self.part_size)
        self.whole.update(data)
        return data, hashlib.sha256(data).hexdigest()

    async def take(self) -> tuple[int, bytes, str] | None:
        async with self.lock:
            if self.next > self.count:
                return None
            n, self.next = self.next, self.next + 1
            data, sha = await asyncio.to_thread(self._read)
            if n == self.count:  # bytes past the size seen at the start are a change, caught by the hash
                await asyncio.to_thread(self._hash_rest)
            return n, data, sha

    def _hash_rest(self) -> None:
        while chunk := self.f.read(self.part_size):
            self.whole.update(chunk)


async def upload(store: S3Store, key: str, path: Path, fd: int | None, size: int, sha256: str | None) -> None:
    part_size = max(store.cfg.part_size, -(-size // MAX_PARTS))
    client = await store.client()
    created = await store.call(f"start upload of {key} to", lambda: client.create_multipart_upload(
        Bucket=store.bucket, Key=key, ChecksumAlgorithm="SHA256"))
    upload_id = created["UploadId"]
    try:
        with source(path, fd) as f:  # opening is instant; the parts are read in a thread
            parts = _Parts(f, size, part_size)
            await run_all(_send(store, key, upload_id, parts)
                          for _ in range(min(store.cfg.part_concurrency, parts.count)))
        if sha256 is not None and parts.whole.hexdigest() != sha256:
            raise FileChanged.while_uploading(path)
        listing = [parts.done[n] for n in sorted(parts.done)]
        await store.call(f"complete upload of {key} to", lambda: client.complete_multipart_upload(
            Bucket=store.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": listing}))
    except BaseException:
        await _abort(store, key, upload_id)
        raise


async def _send(store: S3Store, key: str, upload_id: str, parts: _Parts) -> None:
    client = await store.client()
    while (part := await parts.take()) is not None:
        n, data, sha = part
        resp = await store.call(f"PUT part {n} of {key} to", functools.partial(
            client.upload_part, Bucket=store.bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=data,
            ChecksumSHA256=b64(sha)))
        parts.done[n] = {"PartNumber": n, "ETag": resp["ETag"], "ChecksumSHA256": b64(sha)}


async def _abort(store: S3Store, key: str, upload_id: str) -> None:
    """Best effort: S3 keeps an unfinished upload's parts (and bills them) until it is aborted."""
    client = await store.client()
    try:
        await store.call(f"abort upload of {key} to", lambda: client.abort_multipart_upload(
            Bucket=store.bucket, Key=key, UploadId=upload_id))
    except Exception as exc:  # noqa: BLE001 - best-effort cleanup; the upload's own error is the one raised
        log.warning("multipart_abort_failed", key=key, error=repr(exc))
