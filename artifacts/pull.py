"""pull_tree: rebuild a tree from the store into a local folder, through the instance's blob cache.

Blobs the cache lacks are fetched (and checked against their SHA-256); then every entry is written into
`dest`: folders, then files copied out of the cache with their modes, then symlinks, then folder modes.
Whatever is already at an entry's path is replaced; other files in `dest` are left alone. Nothing is ever
written through a symlink: a path's parents are made real folders first, and links are made last.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

import msgspec
import structlog

from incl.artifacts import manifest as mf
from incl.artifacts.batches import in_threads
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
    downloaded_blobs: int  # fetched from the store; the rest came from the blob cache
    downloaded_bytes: int


async def pull_tree(store: ArtifactStore, tree: str, dest: Path, *, blob_cache: BlobCache,
                    progress: Callable[[int, int], None] | None = None,
                    limits: TreeLimits = TreeLimits()) -> PullResult:
    """Build `dest` from the tree named by `tree`: a manifest digest or a ref name. `progress` is called with
    (bytes downloaded so far, bytes to download)."""
    digest, manifest = await read_manifest(store, tree)
    files = manifest.files
    fetched = await blob_cache.fill(store, {e.digest: e.size for e in files}, progress)
    dest = Path(dest)
    await asyncio.to_thread(_make_folders, dest, manifest)
    await in_threads(files, lambda e: e.size, lambda batch: [_copy_out(blob_cache, dest, e) for e in batch], limits)
    await asyncio.to_thread(_finish, dest, manifest)
    result = PullResult(digest=digest, files=len(files), bytes=manifest.total_bytes,
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


def _copy_out(cache: BlobCache, dest: Path, e: mf.Entry) -> int:
    target = dest / e.path
    _clear(target)
    shutil.copyfile(cache.path(e.digest), target)
    os.chmod(target, e.mode)
    return e.size


def _finish(dest: Path, manifest: mf.Manifest) -> None:
    for e in manifest.entries:
        if e.kind == "symlink":
            target = dest / e.path
            _clear(target)
            os.symlink(e.target, target)
    for e in sorted((e for e in manifest.entries if e.kind == "dir"), key=lambda e: e.path, reverse=True):
        os.chmod(dest / e.path, e.mode)
