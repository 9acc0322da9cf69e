"""The fork server: jobs start in their own group, report their status, and never outlive the launcher."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from incl.agent.runtime import Launcher
from incl.proto.messages import Stream


async def test_exit_status_output_and_signals(tmp_path: Path) -> None:
    out: list[tuple[Stream, bytes]] = []

    async def sink(stream: Stream, chunk: bytes) -> None:
        out.append((stream, chunk))

    async with Launcher() as launcher:
        h = await launcher.start(["/bin/sh", "-c", "echo hi; echo oops >&2; exit 3"], str(tmp_path),
                                 {"PATH": os.environ["PATH"]}, sink)
        assert await h.wait() == 3
        assert (Stream.STDOUT, b"hi\n") in out and (Stream.STDERR, b"oops\n") in out
        h = await launcher.start(["/bin/sh", "-c", "kill -9 $$"], str(tmp_path), {}, sink)
        assert await h.wait() == -signal.SIGKILL
        h = await launcher.start(["/no/such/program"], str(tmp_path), {}, sink)
        assert await h.wait() == 127
        # Many at once: every exit reaches its own handle, even when it arrives before start() returns.
        handles = await asyncio.gather(*[launcher.start(["/bin/sh", "-c", f"exit {i}"], str(tmp_path), {}, sink)
                                         for i in range(40)])
        assert await asyncio.gather(*[h.wait() for h in handles]) == list(range(40))


async def test_jobs_die_with_the_launcher(tmp_path: Path) -> None:
    pids = tmp_path / "pids"

    async def sink(stream: Stream, chunk: bytes) -> None:
        pass

    async with Launcher() as launcher:
        h = await launcher.start(["/bin/sh", "-c", f"sleep 300 & echo $! > {pids}; wait"], str(tmp_path), {}, sink)
        while not pids.exists() or not pids.read_text().strip():
            await asyncio.sleep(0.01)
        child = int(pids.read_text())
        launcher._proc.kill()  # as if the agent (and with it the launcher) were killed -9
        assert await asyncio.wait_for(h.wait(), 5) == -signal.SIGKILL
    for _ in range(100):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the job's child outlived the launcher")
