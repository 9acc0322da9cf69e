"""Each process job as a user of its own: never root, and unable to read another job's files or environment.

An agent that runs as root (the GPU image's agent does) starts each process job under a fresh numeric uid and gid
of its own (`job_uid_base` up, round robin over `job_uid_range`: no passwd entry is needed, and a uid comes back
only after that many jobs). The attempt's folder is the job's, mode 0700, so no other job's user may enter it;
`/proc/<pid>/environ` of a process is readable by its own user (and root) only, so no job reads another's secrets.
The folders the job writes (its code folder, which is its working directory, outputs, checkpoints, a home and a
tmp of its own) are made its; files the agent put there stay root's and read-only to it, since some are hard links
into the agent's cache (changing their owner would hand the cache to the job).

It needs the attempt folders to be reachable by other users: every folder above `work_dir` must let others pass
(x). Where it cannot be done (the agent is not root, `job_user: agent`, or `work_dir` lies in a private folder such
as root's home) jobs run as the agent's user, and the agent says why once, at start (`job_users_off`). Containers
are isolated by their own namespaces and are not affected.
"""

from __future__ import annotations

import itertools
import os
import secrets
from pathlib import Path

import structlog

log = structlog.get_logger()


def reachable(path: Path) -> str | None:
    """None if others may pass through every folder from / down to `path`; else the first that stops them."""
    path = path.resolve()
    for folder in [*reversed(path.parents), path]:
        if folder.exists() and not os.stat(folder).st_mode & 0o001:
            return str(folder)
    return None


class JobUsers:
    """Which uid the next process job runs as (None: the agent's own)."""

    def __init__(self, mode: str, work_dir: Path, base: int, size: int) -> None:
        self.why_off: str | None = None
        if mode != "auto":
            self.why_off = "job_user: agent in the agent's config"
        elif os.geteuid() != 0:
            self.why_off = "the agent does not run as root (it cannot start processes as other users)"
        else:
            work_dir.mkdir(parents=True, exist_ok=True)
            blocked = reachable(work_dir)
            if blocked is not None:
                self.why_off = (f"{blocked} does not let other users pass (mode o-x): choose a work_dir they can "
                                "reach, e.g. /var/lib/incl")
        self._base, self._size = base, size
        self._next = itertools.count(secrets.randbelow(size))

    @property
    def enabled(self) -> bool:
        return self.why_off is None

    def announce(self) -> None:
        if self.why_off is not None:
            log.warning("job_users_off", reason=self.why_off, running_as_uid=os.geteuid())

    def allocate(self) -> int | None:
        if self.why_off is not None:
            return None
        return self._base + next(self._next) % self._size


def hand_over(uid: int, attempt_dir: Path, writable: list[Path]) -> None:
    """The attempt's folder to `uid`, 0700, and every folder in `writable` (recursively: folders only) its own."""
    for top in writable:
        top.mkdir(parents=True, exist_ok=True)
        for folder, dirs, _files in os.walk(top):
            os.chown(folder, uid, uid)
            for name in dirs:
                os.chown(os.path.join(folder, name), uid, uid)
    os.chown(attempt_dir, uid, uid)
    os.chmod(attempt_dir, 0o700)
