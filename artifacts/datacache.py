"""Data for jobs: an `s3://` prefix (or any store URL) copied once into an instance-local cache.

    <cache>/objects/<2 hex>/<id>     one file per object version; id = sha256(source, key, ETag, size)
    <cache>/views/<listing id>/...   the prefix as a folder of hard links to objects: what a job mounts read-only
    <cache>/locks/<source id>        flock: one fetch per source at a time; the next one finds the view made

A changed object (other ETag or size) is a new object version and makes a new view; unchanged objects are
reused by every later fetch. A view is built in a temp folder and renamed into place, so it is complete or
absent, and never changes once made (old views stay until an operator removes them).
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import os
import posixpath
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import structlog

from incl.artifacts.atomic import TEMP_PREFIX
from incl.artifacts.batches import run_all
from incl.artifacts.config import StoreConfig, TreeLimits
from incl.artifacts.errors import IntegrityError, InvalidManifest, NotFound
from incl.artifacts.store import ArtifactStore, ObjectInfo, open_store

log = structlog.get_logger()


async def fetch_prefix(source: str | ArtifactStore, cache_root: Path, *, prefix: str = "",
                       config: StoreConfig | None = None, limits: TreeLimits = TreeLimits()) -> Path:
    """The folder holding every object under `source` (a store URL such as s3://bucket/data, or an open
    store plus `prefix`), fetched into `cache_root` unless already there. Mount it read-only."""
    if isinstance(source, str):
        async with open_store(source, config=config) as store:
            return await _fetch(store, prefix, Path(cache_root), limits)
    return await _fetch(source, prefix, Path(cache_root), limits)


def _id(*parts: object) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()


async def _fetch(store: ArtifactStore, prefix: str, cache: Path, limits: TreeLimits) -> Path:
    prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
    source = _id(store.identity, prefix)
    async with _locked(cache / "locks" / source, limits.lock_poll):
        listing = [o for o in await store.list(prefix) if not o.key.endswith("/")]
        if not listing:  # a typo in a data source should not look like an empty data set
            raise NotFound(f"{store.url.rstrip('/')}/{prefix}: no objects there", path=prefix)
        # Named by key, ETag and size (not the time written): the same objects give the same view.
        view = cache / "views" / _id(source, msgspec.json.encode([o[:3] for o in listing]).decode())
        if view.is_dir():
            log.info("data_cached", source=store.url, prefix=prefix, objects=len(listing))
            return view
        objects = {o: cache / "objects" / (i := _id(source, o.key, o.etag, o.size))[:2] / i for o in listing}
        lacking = [o for o, path in objects.items() if not path.exists()]
        await run_all(_download(store, o, objects[o]) for o in lacking)
        await asyncio.to_thread(_make_view, view, prefix, objects)
    log.info("data_fetched", source=store.url, prefix=prefix, objects=len(listing), downloaded=len(lacking),
             downloaded_bytes=sum(o.size for o in lacking), reused=len(listing) - len(lacking))
    return view


async def _download(store: ArtifactStore, o: ObjectInfo, path: Path) -> None:
    size = await store.get_file(o.key, path)
    if size != o.size:
        path.unlink()  # noqa: ASYNC240 - one unlink of a local file, on a failure path
        raise IntegrityError(f"{store.url}: {o.key} is {size} bytes, not the {o.size} it was listed with: it "
                             "changed while it was fetched; try again", path=o.key)
    os.chmod(path, 0o444)


def _make_view(view: Path, prefix: str, objects: dict[ObjectInfo, Path]) -> None:
    tmp = view.parent / f"{TEMP_PREFIX}{view.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for o, path in objects.items():
        rel = o.key[len(prefix):]
        if not rel or posixpath.normpath(rel) != rel or rel.split("/")[0] == "..":
            raise InvalidManifest(f"object key {o.key!r} is not a plain path under {prefix!r}", path=o.key)
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(path, tmp / rel)
    try:
        os.rename(tmp, view)
    except OSError as exc:  # made meanwhile by a fetch that did not take our lock (another cache root alias)
        shutil.rmtree(tmp)
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise


@asynccontextmanager
async def _locked(path: Path, poll: float) -> AsyncIterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(poll)  # another fetch of this source is filling the cache
        yield
    finally:
        os.close(fd)  # releases the lock
