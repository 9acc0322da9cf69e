"""A job is over when its command has exited: what it left behind is killed, named, and never keeps it running."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from output_sink import Output

from incl.agent.execution import Outcome, ProcessExecution
from incl.agent.runtime import Launcher

DRAIN = 2.0


def daemon(pids: Path) -> str:
    """Shell that starts `sleep 1000` in a session of its own and waits until it has left the job's group."""
    return (f"setsid sleep 1000 & echo $! > {pids}; "
            'until [ "$(cat /proc/$!/comm 2>/dev/null)" = sleep ]; do sleep 0.01; done; ')


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state != b"Z"


@pytest.fixture(params=[True, False], ids=["cgroup", "subreaper"])
async def launcher(request: pytest.FixtureRequest) -> Launcher:
    async with Launcher(cgroups=request.param) as launcher:
        yield launcher


def execution(launcher: Launcher, run: str, tmp_path: Path, out: Output, setup: str | None = None) -> ProcessExecution:
    return ProcessExecution(launcher, "/bin/sh", setup, run, tmp_path, {"PATH": os.environ["PATH"]}, out.sink,
                            lambda pid: None, drain_timeout=DRAIN)


async def noop(pid: int | None) -> None:
    return None


async def test_cancel_ends_a_job_whose_daemon_left_the_group(launcher: Launcher, tmp_path: Path) -> None:
    """Cancel of `setsid sleep 1000 & sleep 1000` ends the job and leaves no process behind."""
    out, pids = Output(), tmp_path / "pids"
    ex = execution(launcher, daemon(pids) + "echo started; sleep 1000", tmp_path, out)
    run = asyncio.create_task(ex.run(noop))
    await out.until(b"started")
    sleeper = int(pids.read_text())
    try:
        ex.stop(grace=0.5)
        outcome = await asyncio.wait_for(run, 10)
        assert outcome.exit_code == -signal.SIGTERM  # sh dies of the SIGTERM; the daemon never saw it
        assert not alive(sleeper)
        assert outcome.notes == (f"killed 1 leftover process: sleep (pid {sleeper})",)
    finally:
        if alive(sleeper):
            os.kill(sleeper, signal.SIGKILL)


async def test_setup_leftovers_are_killed_and_named_too(launcher: Launcher, tmp_path: Path) -> None:
    out, pids = Output(), tmp_path / "pids"
    ex = execution(launcher, "echo ran", tmp_path, out,
                   setup=daemon(pids))
    outcome = await asyncio.wait_for(ex.run(noop), 10)
    sleeper = int(pids.read_text())
    try:
        assert outcome == Outcome(0, None, (f"killed 1 leftover process: sleep (pid {sleeper})",))
        assert b"ran" in out.data and not alive(sleeper)
    finally:
        if alive(sleeper):
            os.kill(sleeper, signal.SIGKILL)
