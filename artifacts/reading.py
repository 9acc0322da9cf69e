"""Reading a file for a snapshot from one open file, so that what is hashed is what goes up.

A file is opened once. Its digest comes from that descriptor, and so do the bytes uploaded: kept in memory when
the file is small, read again from the same descriptor (from offset 0) when it is big. A file replaced by
rename meanwhile (how checkpoints are usually saved) is simply its old version, read to the end: the descriptor
still holds it.

A file rewritten in place while it is read is caught by its fstat (size and mtime) taken before and after the
read, and read again, up to TreeLimits.read_attempts times. A write sets the mtime when it starts, before its
bytes have all landed, so in a tree a running job writes, a file modified less than TreeLimits.settle_time
before a read would start is read once that much time has passed since. A file that does not settle within
those attempts raises FileChanged; push_tree either refuses the snapshot with it or, asked to, keeps the
previous snapshot's version of that file for this round (push.py) and takes it at a later one. What no reader
can tell apart from a finished file is a writer stalled half-way through one write for longer than that: those
bytes are the file's content as far as the file system knows.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, NamedTuple

from incl.artifacts.config import TreeLimits
from incl.artifacts.errors import FileChanged, UnreadableFile
from incl.artifacts.snapshot import StatKey

_CHUNK = 1 << 20


class Settled(NamedTuple):
    stat: StatKey  # the open file's, the same before and after the read that gave `digest`
    digest: str
    data: bytes | None  # the bytes, when the file was small enough to keep
    fd: int  # the open file: the caller closes it, or passes it to the upload (ArtifactStore.put_file)


def read_settled(path: str, *, keep_max: int, settle: bool, limits: TreeLimits) -> Settled | None:
    """The file's digest from one settled read (see the module docstring), with its bytes when its size is at
    most `keep_max`; None when it no longer exists. With `settle`, a recently modified file is first left to
    settle (TreeLimits.settle_time). Blocking: run it in a thread."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:  # deleted since the walk: not part of this snapshot
        return None
    except OSError as exc:
        raise UnreadableFile(f"{path}: cannot read it ({exc.strerror})", path=path) from None
    try:
        return _settle(fd, path, keep_max, int(limits.settle_time * 1e9) if settle else 0, limits.read_attempts)
    except BaseException:
        os.close(fd)
        raise


def _settle(fd: int, path: str, keep_max: int, settle: int, attempts: int) -> Settled:
    for _ in range(attempts):
        before = StatKey.of(os.fstat(fd))
        if (quiet_in := before.mtime_ns + settle - time.time_ns()) > 0:
            time.sleep(quiet_in / 1e9)
            before = StatKey.of(os.fstat(fd))
            if before.mtime_ns + settle > time.time_ns():  # written again meanwhile
                continue
        digest, data = _read(fd, before.size <= keep_max)
        after = StatKey.of(os.fstat(fd))
        # Size and mtime, not ctime: unlinking a file replaced by rename changes its ctime, not its bytes.
        if before[:2] == after[:2]:
            return Settled(after, digest, data, fd)
    raise FileChanged(f"{path} kept changing while it was read ({attempts} reads); snapshot again once nothing "
                      "writes to it", path=path)


def _read(fd: int, keep: bool) -> tuple[str, bytes | None]:
    digest = hashlib.sha256()
    chunks: list[bytes] = []
    offset = 0
    while chunk := os.pread(fd, _CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
        if keep:
            chunks.append(chunk)
    return digest.hexdigest(), b"".join(chunks) if keep else None


@contextmanager
def source(path: Path, fd: int | None) -> Iterator[BinaryIO]:
    """What an upload reads: the open file `fd` from its start (the very file that was hashed, whatever `path`
    names by now), or `path` opened afresh. The caller's `fd` stays open."""
    f = os.fdopen(os.dup(fd), "rb") if fd is not None else open(path, "rb")  # noqa: SIM115 - closed below
    with f:
        f.seek(0)
        yield f
