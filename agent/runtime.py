"""The `process` runtime: a job's command in its own process group, guarded by the shim.

Output arrives as raw chunks through `on_output(stream, chunk)`; splitting into lines is the log shipper's
business. Stopping sends SIGTERM to the whole group, waits the grace period, then sends SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from incl.proto.messages import Stream

SHIM = str(Path(__file__).with_name("shim.py"))
READ_CHUNK = 256 * 1024

OutputSink = Callable[[Stream, bytes], Awaitable[None]]


class ProcessHandle:
    def __init__(self, proc: asyncio.subprocess.Process, readers: list[asyncio.Task[None]]) -> None:
        self._proc = proc
        self._readers = readers
        self.pid = proc.pid

    async def wait(self) -> int:
        """The command's exit status (negative: killed by that signal), once its output has been read."""
        code = await self._proc.wait()
        self._kill_group(signal.SIGKILL)  # stragglers the job left behind hold our pipes open
        await asyncio.gather(*self._readers)
        return code

    async def stop(self, grace: float) -> None:
        self._kill_group(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self._proc.wait()), timeout=grace)
        except asyncio.TimeoutError:
            self._kill_group(signal.SIGKILL)

    def _kill_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)


async def _pump(reader: asyncio.StreamReader, stream: Stream, sink: OutputSink) -> None:
    while chunk := await reader.read(READ_CHUNK):
        await sink(stream, chunk)


async def start(argv: list[str], cwd: str, env: dict[str, str], sink: OutputSink) -> ProcessHandle:
    """Start `argv` in a new process group under the shim; its output goes to `sink`."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-I", "-S", SHIM, "--", *argv,
        cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        start_new_session=True, limit=READ_CHUNK,
    )
    assert proc.stdout is not None and proc.stderr is not None
    readers = [
        asyncio.create_task(_pump(proc.stdout, Stream.STDOUT, sink)),
        asyncio.create_task(_pump(proc.stderr, Stream.STDERR, sink)),
    ]
    return ProcessHandle(proc, readers)
