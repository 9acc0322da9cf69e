"""How a prepared attempt runs: as processes (`process` runtime) or in a container (`docker` runtime).

Both give the Runner the same shape: `run(on_running)` returns the `Outcome` once the job's output has been
delivered, and `stop(grace)` asks it to end (SIGTERM to every process of the job, SIGKILL after `grace`).
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

import msgspec
import structlog

from incl.agent import runtime
from incl.agent.docker import ContainerFailure, ContainerHandle, ContainerSpec, DockerRuntime

log = structlog.get_logger()

OnRunning = Callable[[int | None], Awaitable[None]]


class Outcome(msgspec.Struct, frozen=True):
    exit_code: int | None  # negative: killed by that signal; None: nothing ran
    reason: str | None = None
    notes: tuple[str, ...] = ()  # lines for the job's log about how it ended (leftover processes killed, ...)


class Execution(Protocol):
    async def run(self, on_running: OnRunning) -> Outcome: ...

    def stop(self, grace: float) -> None: ...


class _Stoppable:
    """Stop bookkeeping shared by both runtimes: a stop asked before the handle exists applies once it does."""

    _handle: runtime.ProcessHandle | ContainerHandle | None = None
    _grace: float | None = None  # set once stop() was asked
    _stopping: asyncio.Task[None] | None = None  # held so the stop task is not garbage-collected mid-way

    def stop(self, grace: float) -> None:
        if self._grace is None:
            self._grace = grace
            self._apply_stop()

    def _apply_stop(self) -> None:
        if self._grace is not None and self._handle is not None and self._stopping is None:
            self._stopping = asyncio.create_task(self._handle.stop(self._grace))


class ProcessExecution(_Stoppable):
    """`setup`, then `run`, each in its own process group, started by the agent's fork server. Each is over
    when its command exits; its output is read for at most `drain_timeout` more."""

    def __init__(self, launcher: runtime.Launcher, shell: str, setup: str | None, run: str, cwd: Path,
                 env: dict[str, str], sink: runtime.OutputSink, on_pid: Callable[[int], None], *,
                 drain_timeout: float, uid: int | None = None) -> None:
        self._uid = uid  # run as this user (and its own group), None: the agent's
        self._launcher, self._shell = launcher, shell
        self._setup, self._run = setup, run
        self._cwd, self._env, self._sink, self._on_pid = cwd, env, sink, on_pid
        self._drain = drain_timeout
        self._notes: list[str] = []

    @property
    def pid(self) -> int | None:
        """The current process's guard (it leads the job's process group)."""
        return self._handle.pid if isinstance(self._handle, runtime.ProcessHandle) else None

    async def _start(self, script: str) -> runtime.ProcessHandle:
        self._handle = await self._launcher.start([self._shell, "-c", script], str(self._cwd), self._env, self._sink,
                                                  uid=self._uid)
        self._on_pid(self._handle.pid)
        self._stopping = None  # setup's process is done: a stop now is for this one
        self._apply_stop()  # stopped while it was starting
        return self._handle

    async def _wait(self, handle: runtime.ProcessHandle) -> int:
        status = await handle.wait(self._drain)
        self._notes.extend(handle.notes)
        return status

    async def run(self, on_running: OnRunning) -> Outcome:
        if self._setup and self._grace is None:
            status = await self._wait(await self._start(self._setup))
            if status != 0 and self._grace is None:
                return Outcome(status, f"setup failed with exit code {status}", tuple(self._notes))
        if self._grace is not None:
            return Outcome(None, notes=tuple(self._notes))
        handle = await self._start(self._run)
        await on_running(handle.pid)
        status = await self._wait(handle)
        return Outcome(status, notes=tuple(self._notes))


# In the container: setup, then the command; marker files in the run dir tell the agent which stage it is in.
ENTRYPOINT = """\
#!/bin/sh
# Written by the INCL agent: setup, then the job's command.
if [ -s {run}/setup.sh ]; then
  /bin/sh {run}/setup.sh || {{ status=$?; echo "$status" > {run}/setup-failed; exit "$status"; }}
fi
: > {run}/running
exec /bin/sh {run}/run.sh
"""


class ContainerExecution(_Stoppable):
    """The attempt as one container: pull the image if needed, start it, follow its output, report its exit.

    A container outlives its agent; a restarted agent re-adopts it with `adopt` (its output is replayed from the
    start, and the Runner skips what was shipped already)."""

    def __init__(self, docker: DockerRuntime, spec: ContainerSpec, run_dir: Path, sink: runtime.OutputSink, *,
                 auth: dict[str, str] | None, progress: Callable[[str], Awaitable[None]],
                 poll_interval: float) -> None:
        self._docker, self._spec, self._run_dir, self._sink = docker, spec, run_dir, sink
        self._auth, self._progress, self._poll = auth, progress, poll_interval

    @property
    def container_id(self) -> str | None:
        """The container, once created (the fork server stops it if the agent's lease runs out)."""
        return self._handle.id if isinstance(self._handle, ContainerHandle) else None

    @staticmethod
    def write_scripts(run_dir: Path, container_run_dir: str, setup: str | None, run: str) -> list[str]:
        """The entrypoint and the user's scripts, in the run dir; returns the container's argv."""
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "entry.sh").write_text(ENTRYPOINT.format(run=shlex.quote(container_run_dir)))
        (run_dir / "setup.sh").write_text(setup or "")
        (run_dir / "run.sh").write_text(run)
        for marker in ("running", "setup-failed"):
            (run_dir / marker).unlink(missing_ok=True)
        return ["/bin/sh", f"{container_run_dir}/entry.sh"]

    async def run(self, on_running: OnRunning, adopt: ContainerHandle | None = None) -> Outcome:
        try:
            if adopt is None:
                if self._grace is not None:
                    return Outcome(None)
                await self._docker.ensure_image(self._spec.image, self._auth, self._progress)
                self._handle = await self._docker.start(self._spec, self._sink)
            else:
                self._handle = adopt
                adopt.follow(self._sink)  # its output from the start; the Runner skips what was shipped
            self._apply_stop()  # stopped while it was starting
            waiter = asyncio.create_task(self._handle.wait())
            try:
                await self._until_running(waiter)
                await on_running(None)
                end = await waiter
            except asyncio.CancelledError:  # the agent shuts down: stop watching; the container runs on
                waiter.cancel()
                await self._handle.close()
                raise
        except ContainerFailure as exc:
            await self._remove()
            return Outcome(None, str(exc))
        # Removed only once it has ended: a container whose agent shuts down (cancellation) keeps running.
        await self._remove()
        reason = end.reason
        failed_setup = self._run_dir / "setup-failed"
        if reason is None and failed_setup.exists():
            reason = f"setup failed with exit code {end.exit_code}"
        return Outcome(end.exit_code, reason)

    async def _remove(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(Exception):
                await self._handle.remove()  # type: ignore[union-attr]  # only a container has remove(); a process's AttributeError is suppressed as before

    async def _until_running(self, waiter: asyncio.Task[object]) -> None:
        """Until setup is done (the entrypoint's marker) or the container has ended."""
        marker = self._run_dir / "running"
        while not marker.exists() and not waiter.done():
            await asyncio.wait([waiter], timeout=self._poll)
