"""One agent process per work dir: a lock held for the process's life, and the instance id it leaves behind.

The controller accepts a new agent process for an id at once when it names the instance it replaces: only a
process that holds the work dir's lock, so the previous one is dead, knows it. Any other second process with
that id waits until the live one's deadline has passed.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK = "agent.lock"
INSTANCE = "instance"


class WorkDirInUse(Exception):
    """Another live agent process holds this work dir."""


class WorkDirClaim:
    def __init__(self, work_dir: str | Path, instance: str) -> None:
        self.dir = Path(work_dir)
        self.instance = instance
        self.previous = ""  # the instance of the process that held the dir before ("" if none did)
        self._fd: int | None = None

    @property
    def lock_path(self) -> Path:
        return self.dir / LOCK

    def __enter__(self) -> WorkDirClaim:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WorkDirInUse(f"another agent process is using {self.dir}; give this one its own "
                               "--work-dir (and id)") from None
        self._fd = fd
        path = self.dir / INSTANCE
        self.previous = path.read_text().strip() if path.exists() else ""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.instance)
        tmp.replace(path)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None
