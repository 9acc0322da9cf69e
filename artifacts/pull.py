"""pull_tree: rebuild a tree from the store into a local folder, through the instance's blob cache.

Blobs and packs the cache lacks are fetched (and checked against their SHA-256s); then every entry is written
into `dest`: folders, then files (copied out of the cache, or written from a pack read once per batch) with
their modes, then symlinks, then folder modes. All of that file work runs in worker threads, in batches, so
the event loop stays free for heartbeats however big the tree (tests/unit/test_bigtree.py).
Whatever is already at an entry's path is replaced; other files in `dest` are left alone. Nothing is ever
written through a symlink: a path's parents are made real folders first, and links are made last.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import os
import posixpath
import shutil
import stat
from collections.abc import Callable
from itertools import groupby
from pathlib import Path
from typing import NamedTuple

import msgspec
import structlog

from incl.artifacts import manifest as mf
from incl.artifacts.batches import group, run_all
from incl.artifacts.blobcache import BlobCache
from incl.artifacts.config import TreeLimits
from incl.artifacts.refs import read_manifest
from incl.artifacts.store import ArtifactStore

log = structlog.get_logger()

_BUILD_MODE = 0o700  # folders while they are filled; their own modes are set at the end


class PullResult(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    digest: str
    files: int
    bytes: int
    downloaded_blobs: int  # objects (blobs and packs) fetched from the store; the rest came from the blob cache
    downloaded_bytes: int


async def pull_tree(store: ArtifactStore, tree: str, dest: Path, *, blob_cache: BlobCache,
                    progress: Callable[[int, int], None] | None = None,
                    limits: TreeLimits = TreeLimits()) -> PullResult:
    """Build `dest` from the tree named by `tree`: a manifest digest or a ref name. `progress` is called with
    (bytes downloaded so far, bytes to download)."""
    digest, manifest = await read_manifest(store, tree)
    plan = await asyncio.to_thread(_plan, manifest, limits)  # 100,000 entries: a walk over them is not for the loop
    fetched = await blob_cache.fill(store, plan.loose, progress, packs=plan.members, workers=limits.transfers)
    dest = Path(dest)
    await asyncio.to_thread(_make_folders, dest, manifest)
    slots = asyncio.Semaphore(limits.io_workers)

    async def write(fn: Callable[[], object]) -> None:
        async with slots:
            await asyncio.to_thread(fn)

    ids = manifest.pack_ids
    await run_all([*(write(functools.partial(_write_packed, blob_cache, dest, ids, b)) for b in plan.packed),
                   *(write(functools.partial(_copy_all, blob_cache, dest, b)) for b in plan.copied)])
    await asyncio.to_thread(_finish, dest, manifest)
    result = PullResult(digest=digest, files=plan.files, bytes=plan.bytes,
                        downloaded_blobs=len(fetched), downloaded_bytes=sum(fetched.values()))
    log.info("tree_pulled", tree=tree, dest=str(dest), **msgspec.structs.asdict(result))
    return result


def _clear(path: Path) -> None:
    """Remove whatever is at `path`, without following a symlink (one syscall when there is nothing)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        shutil.rmtree(path)


def _make_folders(dest: Path, manifest: mf.Manifest) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    folders = {e.path for e in manifest.entries if e.kind == "dir"}
    for e in manifest.entries:  # parents a manifest does not list still have to be real folders
        parent = posixpath.dirname(e.path)
        while parent and parent not in folders:
            folders.add(parent)
            parent = posixpath.dirname(parent)
    for rel in sorted(folders):
        path = dest / rel
        try:
            is_dir = stat.S_ISDIR(os.lstat(path).st_mode)
        except FileNotFoundError:
            is_dir = None
        if is_dir:
            os.chmod(path, _BUILD_MODE)
            continue
        if is_dir is False:  # a file or a symlink where the folder goes
            os.unlink(path)
        os.mkdir(path, _BUILD_MODE)


class _Plan(NamedTuple):
    loose: dict[str, int]  # blobs the tree needs: digest → size
    members: dict[str, list[tuple[int, int, str]]]  # packs it needs: id → (offset, size, digest) it uses
    packed: list[list[mf.Entry]]  # files from packs, in batches, in pack order
    copied: list[list[mf.Entry]]  # files copied from blobs, in batches
    files: int
    bytes: int


def _plan(manifest: mf.Manifest, limits: TreeLimits) -> _Plan:
    loose: dict[str, int] = {}
    packed: list[mf.Entry] = []
    copied: list[mf.Entry] = []
    members: dict[str, set[tuple[int, int, str]]] = {}
    ids = manifest.pack_ids
    for e in manifest.entries:
        if e.kind != "file":
            continue
        if e.pack < 0:
            loose[e.digest] = e.size
            copied.append(e)
        else:
            packed.append(e)
            members.setdefault(ids[e.pack], set()).add((e.offset, e.size, e.digest))
    packed.sort(key=lambda e: (e.pack, e.offset))
    return _Plan(loose, {p: sorted(m) for p, m in members.items()}, group(packed, _size, limits),
                 group(copied, _size, limits), len(packed) + len(copied), sum(e.size for e in packed + copied))


def _size(e: mf.Entry) -> int:
    return e.size


def _copy_all(cache: BlobCache, dest: Path, batch: list[mf.Entry]) -> None:
    for e in batch:
        _copy_out(cache, dest, e)


def _create(target: Path) -> int:
    """A new file at `target`, opened for writing; whatever was there is removed, never written through."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(target, flags, 0o600)
    except FileExistsError:
        _clear(target)
        return os.open(target, flags, 0o600)


def _write_packed(cache: BlobCache, dest: Path, ids: list[str], batch: list[mf.Entry]) -> None:
    """Files from packs: each pack's span for the batch read once, each file written with one write."""
    for pack, entries in groupby(batch, key=lambda e: e.pack):
        run = list(entries)
        start = run[0].offset
        with open(cache.pack_path(ids[pack]), "rb") as f:
            f.seek(start)
            span = memoryview(f.read(max(e.offset + e.size for e in run) - start))
        for e in run:
            fd = _create(dest / e.path)
            try:
                data = span[e.offset - start:e.offset - start + e.size]
                while data:
                    data = data[os.write(fd, data):]
                os.fchmod(fd, e.mode)
            finally:
                os.close(fd)


_FICLONE = 0x40049409  # linux/fs.h: share the source's blocks, copy-on-write (btrfs, XFS, bcachefs...)


def _copy_out(cache: BlobCache, dest: Path, e: mf.Entry) -> int:
    """A copy of the blob: a reflink where the filesystem has them (instant, no space until the job writes),
    else an in-kernel copy. Never a hard link (see blobcache.py)."""
    with open(cache.path(e.digest), "rb") as src:
        fd = _create(dest / e.path)
        try:
            try:
                fcntl.ioctl(fd, _FICLONE, src.fileno())
            except OSError as exc:
                if exc.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.EBADF):
                    raise
                while os.sendfile(fd, src.fileno(), None, 1 << 30):  # in the kernel: no bytes through Python
                    pass
            os.fchmod(fd, e.mode)
        finally:
            os.close(fd)
    return e.size



def _finish(dest: Path, manifest: mf.Manifest) -> None:
    for e in manifest.entries:
        if e.kind == "symlink":
            target = dest / e.path
            _clear(target)
            os.symlink(e.target, target)
    for e in sorted((e for e in manifest.entries if e.kind == "dir"), key=lambda e: e.path, reverse=True):
        os.chmod(dest / e.path, e.mode)
