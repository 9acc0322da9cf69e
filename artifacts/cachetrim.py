"""An instance's caches under a size: the least recently used entries go first, never one a job pins.

    <cache>/blobs/<2 hex>/<sha256>, blobs/packs/<2 hex>/<id>   blobs and packs (blobcache.py)
    <cache>/data/views/<id>, data/objects/<2 hex>/<id>          data views and their objects (datacache.py)
    <cache>/.lock                                               flock: fetches share it, a trim holds it alone

An entry's last use is its mtime: a fetch that finds it there touches it. A data view holds its objects by hard
link; evicting it frees the objects no other view links, and an object no view links is an entry of its own.
A job pins what it uses by listing the paths in its attempt folder (`pins`, one a line): the folder exists while
the attempt does, so pins survive an agent restart and go with the attempt, with nothing to release.

Fetches run under the shared lock and write their pins before they look at the cache; a trim takes the lock
alone, reads the pins, and evicts. So a trim never removes what a fetch has found and is about to copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from incl.artifacts.atomic import TEMP_PREFIX

PINS = "pins"


class Entry(NamedTuple):
    path: str
    size: int  # the bytes evicting it frees
    used_at: float


class Trimmed(NamedTuple):
    evicted: int
    freed: int
    total: int  # the caches' bytes afterwards


def plan(entries: Iterable[Entry], pinned: set[str], total: int, max_bytes: int) -> list[Entry]:
    """The entries to evict, least recently used first, until `total` is at most `max_bytes`; pinned ones stay."""
    out = []
    for e in sorted(entries, key=lambda e: (e.used_at, e.path)):
        if total <= max_bytes:
            break
        if e.path not in pinned:
            out.append(e)
            total -= e.size
    return out


def pin(attempt_dir: Path, paths: Iterable[Path | str]) -> None:
    with open(attempt_dir / PINS, "a") as f:
        f.writelines(f"{p}\n" for p in paths)


def pins(jobs_root: Path) -> set[str]:
    """Every path an attempt on this instance pins (<jobs_root>/<job>/attempt-<n>/pins)."""
    out: set[str] = set()
    for path in jobs_root.glob(f"*/attempt-*/{PINS}"):
        with contextlib.suppress(FileNotFoundError):  # the attempt was removed meanwhile
            out.update(path.read_text().split("\n"))
    out.discard("")
    return out


def scan(cache: Path) -> tuple[list[Entry], int]:
    """The caches' entries, and their bytes in all (an object shared by views counts once, in no view's size)."""
    entries = [Entry(str(p), st.st_size, st.st_mtime) for p, st in _files(cache / "blobs")]
    objects = list(_files(cache / "data" / "objects"))
    entries += [Entry(str(p), st.st_size, st.st_mtime) for p, st in objects if st.st_nlink == 1]
    views = cache / "data" / "views"
    for view in sorted(views.iterdir()) if views.is_dir() else []:
        if not view.name.startswith(TEMP_PREFIX):
            own = sum(st.st_size for _, st in _files(view) if st.st_nlink <= 2)  # linked only here and in objects/
            entries.append(Entry(str(view), own, view.stat().st_mtime))
    total = sum(st.st_size for _, st in _files(cache / "blobs")) + sum(st.st_size for _, st in objects)
    return entries, total


def _files(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    for dirpath, _, names in os.walk(root):
        for name in names:
            if not name.startswith(TEMP_PREFIX):
                path = Path(dirpath, name)
                with contextlib.suppress(FileNotFoundError):
                    yield path, path.lstat()


def trim(cache: Path, jobs_root: Path, max_bytes: int) -> Trimmed:
    """Evict until the caches hold at most `max_bytes` or only pinned entries are left (blocking: a thread)."""
    evicted = freed = 0
    with _lock(cache, fcntl.LOCK_EX):
        pinned = pins(jobs_root)
        while True:
            entries, total = scan(cache)
            victims = plan(entries, pinned, total, max_bytes)
            if not victims:
                return Trimmed(evicted, freed, total)
            for e in victims:
                _remove(Path(e.path))
            evicted += len(victims)
            freed += total - scan(cache)[1]  # objects shared with a view still kept are not freed: measured


def _remove(path: Path) -> None:
    if path.is_dir():
        gone = path.parent / f"{TEMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}"
        os.rename(path, gone)  # gone at once for anyone looking; its links then go
        shutil.rmtree(gone)
        objects = path.parent.parent / "objects"
        for obj, st in list(_files(objects)):
            if st.st_nlink == 1:  # no view links it any more
                obj.unlink(missing_ok=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _lock(cache: Path, how: int) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    fd = os.open(cache / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, how)
        yield
    finally:
        os.close(fd)


@contextlib.asynccontextmanager
async def sharing(cache: Path, poll: float = 0.05) -> AsyncIterator[None]:
    """Held while a fetch pins and fills: a trim waits for it (polled, so the event loop never blocks)."""
    os.makedirs(cache, exist_ok=True)
    fd = os.open(cache / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(poll)  # a trim is evicting
        yield
    finally:
        os.close(fd)
