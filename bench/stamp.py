"""The dispatch benchmark's entrypoint, shared by both sides so they run it byte for byte (stdlib only: the
Ray side imports it from its own venv). The job writes the time it started to a file; latency is that time
minus the time just before the submit call."""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

from stats import summary

STAMP_CODE = 'import time,sys;open(sys.argv[1],"w").write(repr(time.time()))'


def stamp_entrypoint(py: str, path: str) -> str:
    return f"{shlex.quote(py)} -c {shlex.quote(STAMP_CODE)} {shlex.quote(path)}"


def read_stamp(path: Path, timeout: float = 5.0) -> float | None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            txt = path.read_text()
            if txt:
                return float(txt)
        except (FileNotFoundError, ValueError):
            pass
        time.sleep(0.005)
    return None


def direct_entrypoint_baseline(py: str, work: Path, reps: int = 10) -> dict:
    """The same stamp command spawned directly through a shell: how much of either side's dispatch latency
    is just the interpreter's own start-up."""
    vals = []
    for i in range(reps):
        f = work / f"direct{i}"
        t0 = time.time()
        subprocess.run(stamp_entrypoint(py, str(f)), shell=True, check=True)
        ts = read_stamp(f)
        if ts is not None:
            vals.append((ts - t0) * 1000)
    return summary(vals)
