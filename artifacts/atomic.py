"""All-or-nothing local writes: a temp file beside the target, renamed into place only when complete."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TEMP_PREFIX = ".tmp-"  # in-progress files start with this; listings skip them


@contextmanager
def atomic_file(target: Path, *, fsync: bool = False, mode: int = 0o644) -> Iterator[BinaryIO]:
    """`with atomic_file(path) as out: out.write(...)`: readers see the old file or the whole new one,
    never a part; on an exception the temp file is removed and `target` is untouched."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=TEMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            if fsync:
                out.flush()
                os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
