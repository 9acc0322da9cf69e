"""One container on the engine, as the Runner sees it: its output, its exit, stopping and removing it.

It feels like the `process` runtime's `ProcessHandle`: `wait()` returns once the container has exited and all
its output has reached the sink; `stop(grace)` sends SIGTERM (tini, PID 1, passes it to the job's whole process
group) and SIGKILL after `grace`. A handle outlives nothing: the container outlives the agent, and a restarted
agent gets a new handle for it from `DockerRuntime.find`, whose output replays from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import Any

import aiodocker
import aiohttp
import structlog

from incl.agent.docker_logs import LogCursor
from incl.agent.docker_spec import ContainerExit, ContainerFailure, DockerSettings, binary_size, engine_call
from incl.agent.runtime import OutputSink

log = structlog.get_logger()

# What tini writes when it cannot exec the command (then it exits 127, or 126 for "permission denied").
EXEC_FAILED = re.compile(rb"\[FATAL tini \(\d+\)\] (exec .*? failed: [^\n]*)")


def describe_exit(info: dict[str, Any], image: str, stderr_head: bytes) -> ContainerExit:
    """The exit of an inspected container, with a reason when the exit code alone would mislead."""
    state, code = info["State"], int(info["State"]["ExitCode"])
    if state.get("OOMKilled"):
        memory = (info.get("HostConfig") or {}).get("Memory") or 0
        limit = f"its memory limit of {binary_size(memory)}" if memory else "the host's memory"
        return ContainerExit(exit_code=code, oom_killed=True,
                             reason=f"out of memory: the container exceeded {limit} (exit {code})")
    if code in (126, 127) and (failed := EXEC_FAILED.search(stderr_head)):
        what = "command not found" if code == 127 else "command cannot run"
        detail = failed.group(1).decode(errors="replace")
        return ContainerExit(exit_code=code, reason=f"{what} in image {image}: {detail}")
    if state.get("Error"):
        return ContainerExit(exit_code=code, reason=f"the container failed: {state['Error']}")
    return ContainerExit(exit_code=code)


class ContainerHandle:
    def __init__(self, docker: aiodocker.Docker, settings: DockerSettings, container_id: str, *, image: str,
                 labels: dict[str, str], running: bool, repair_split_lines: bool = False) -> None:
        self.id, self.image, self.labels, self.running = container_id, image, labels, running
        self._docker, self._settings = docker, settings
        self._repair = repair_split_lines  # see docker_logs: older engines drop the newline of long lines
        self._container = docker.containers.container(container_id)
        self._cursor: LogCursor | None = None
        self._pump: asyncio.Task[None] | None = None
        self._exit: asyncio.Task[dict[str, Any]] | None = None

    def __repr__(self) -> str:
        return f"ContainerHandle({self.id[:12]}, image={self.image!r}, running={self.running})"

    def follow(self, sink: OutputSink) -> None:
        """Deliver the container's output to `sink`, from its very start, until it ends. Once per handle."""
        if self._cursor is not None:
            raise RuntimeError(f"container {self.id[:12]} is already followed")
        self._cursor = LogCursor(sink, repair_split_lines=self._repair)
        self._pump = asyncio.create_task(self._follow(), name=f"logs-{self.id[:12]}")

    async def wait(self) -> ContainerExit:
        """The exit, once the container has ended and its output has reached the sink."""
        info = await asyncio.shield(self._exited())
        if info["State"].get("Status") == "created":
            raise ContainerFailure(f"container {self.id[:12]} was created but never started")
        await self._drain()
        return describe_exit(info, self.image, self._cursor.stderr_head if self._cursor else b"")

    async def stop(self, grace: float) -> None:
        """SIGTERM to the job's processes, SIGKILL after `grace` seconds. Never raises: `wait()` reports."""
        exited = self._exited()
        try:
            await self._kill("SIGTERM")
            if not (await asyncio.wait([exited], timeout=grace))[0]:
                await self._kill("SIGKILL")
                if not (await asyncio.wait([exited], timeout=self._settings.stop_slack))[0]:
                    log.warning("container_stop_slow", container=self.id[:12], waited=self._settings.stop_slack)
        except ContainerFailure as exc:
            log.warning("container_stop_failed", container=self.id[:12], error=exc.reason)

    async def remove(self) -> None:
        """Remove the container (killing it if it still runs) and stop following it."""
        await self.close()
        try:
            async with engine_call(self._settings, "removing the container"):
                await self._container.delete(force=True, v=True)
        except aiodocker.DockerError as exc:
            if exc.status not in (404, 409):  # gone already, or its removal is under way
                raise ContainerFailure(f"container {self.id[:12]} could not be removed: {exc.message}") from None

    async def close(self) -> None:
        """Stop watching (the container itself carries on)."""
        tasks = [t for t in (self._pump, self._exit) if t is not None and not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- the exit -------------------------------------------------------------------------------------------

    def _exited(self) -> asyncio.Task[dict[str, Any]]:
        if self._exit is None:
            self._exit = asyncio.create_task(self._wait_exit(), name=f"wait-{self.id[:12]}")
        return self._exit

    async def _wait_exit(self) -> dict[str, Any]:
        """The container's inspection once it is not running; the wait itself is as long as the job."""
        forever = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=self._settings.request_timeout)
        try:
            async with engine_call(self._settings, "waiting for the container", bounded=False):
                await self._container.wait(timeout=forever, condition="not-running")
            async with engine_call(self._settings, "inspecting the container"):
                info = await self._container.show()
        except aiodocker.DockerError as exc:
            raise ContainerFailure(f"container {self.id[:12]} could not be watched: {exc.message}") from None
        self.running = False
        return info

    async def _kill(self, signal: str) -> None:
        try:
            async with engine_call(self._settings, f"sending {signal}"):
                await self._container.kill(signal=signal)
        except aiodocker.DockerError as exc:
            if exc.status not in (404, 409):  # 409: not running
                raise ContainerFailure(f"container {self.id[:12]} could not be sent {signal}: {exc.message}") from None

    # --- the output -----------------------------------------------------------------------------------------

    async def _follow(self) -> None:
        """Follow the log stream until the container has ended; a stream that breaks earlier is followed again."""
        assert self._cursor is not None
        while True:
            try:
                await self._cursor.follow(self._docker, self.id, connect_timeout=self._settings.request_timeout)
            except aiodocker.DockerError as exc:
                if exc.status == 404:
                    return  # removed: there is nothing more to read
                log.warning("container_logs_broke", container=self.id[:12], error=exc.message)
            except aiohttp.ClientError as exc:
                log.warning("container_logs_broke", container=self.id[:12], error=repr(exc))
            if await self._ended():
                return
            await asyncio.sleep(self._settings.log_retry_interval)

    async def _ended(self) -> bool:
        """Whether the container has stopped, which is what normally ends a followed log stream."""
        exited = self._exited()
        if (await asyncio.wait([exited], timeout=self._settings.log_retry_interval))[0]:
            return True
        try:
            async with engine_call(self._settings, "inspecting the container"):
                info = await self._container.show()
        except (aiodocker.DockerError, ContainerFailure):
            return False
        return not info["State"].get("Running")

    async def _drain(self) -> None:
        """Until the container's output is all delivered: the follow has ended (or is given up on after the
        drain timeout), then one last look at the log's end for what the follow missed."""
        if self._pump is None or self._cursor is None:
            return
        if (await asyncio.wait([self._pump], timeout=self._settings.log_drain_timeout))[0]:
            await self._pump  # the sink's own failure, if it had one
        else:
            log.warning("container_logs_slow_to_end", container=self.id[:12],
                        waited=self._settings.log_drain_timeout)
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        try:
            async with engine_call(self._settings, "reading the end of the container's output", bounded=False):
                await self._cursor.catch_up(self._docker, self.id, window=self._settings.log_catchup_window,
                                            connect_timeout=self._settings.request_timeout)
        except aiodocker.DockerError as exc:
            raise ContainerFailure(f"the output of container {self.id[:12]} could not be read: "
                                   f"{exc.message}") from None
