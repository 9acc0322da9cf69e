"""The `docker` runtime: a job's command in a container, through the Docker Engine API (aiodocker).

`async with DockerRuntime(settings) as docker:` owns one engine client. `ensure_image` pulls per the pull
policy; `start(spec, sink)` creates and starts a container and follows its output into `sink`; `find(labels)`
returns the containers a previous agent process left (running or exited), which a restarted agent re-adopts by
calling `handle.follow(sink)` and `handle.wait()`: their output replays from the start, byte for byte.

How a container is made (see `docker_spec.create_body`): host networking; GPUs as an `nvidia` device request
only when asked for; memory with no swap on top, so running out is an OOM kill that the exit reason names;
tini as PID 1 with `TINI_KILL_PROCESS_GROUP=1`, so SIGTERM reaches the job's processes, not just its shell;
Docker's `local` log driver, never rotated, which keeps output as exact bytes (`json-file` turns invalid UTF-8
into U+FFFD); no auto-removal, so a container that exits while the agent is down keeps its exit code and output.
"""

from __future__ import annotations

import contextlib
import json
import weakref
from collections.abc import Awaitable, Callable

import aiodocker
import aiohttp
import structlog

from incl.agent.docker_handle import ContainerHandle
from incl.agent.docker_pull import pull
from incl.agent.docker_spec import (
    ContainerExit,
    ContainerFailure,
    ContainerSpec,
    DockerSettings,
    Mount,
    create_body,
    engine_call,
)
from incl.agent.runtime import OutputSink

__all__ = ["ContainerExit", "ContainerFailure", "ContainerHandle", "ContainerSpec", "DockerRuntime",
           "DockerSettings", "Mount"]

log = structlog.get_logger()

# Words in the engine's refusal to start a container that mean its command is not there or cannot run. (With
# tini as PID 1 the engine starts tini, and a missing command shows as tini's exit 127 instead: see docker_handle.)
NO_COMMAND = ("executable file not found", "exec format error")


class DockerRuntime:
    def __init__(self, settings: DockerSettings | None = None) -> None:
        self.settings = settings or DockerSettings()
        self.url = self.settings.engine_url()
        self._client: aiodocker.Docker | None = None
        self._handles: weakref.WeakSet[ContainerHandle] = weakref.WeakSet()
        self._repair_split_lines: bool | None = None  # known once the engine has said its API version

    async def __aenter__(self) -> DockerRuntime:
        self._client = aiodocker.Docker(url=self.url,
                                        timeout=aiohttp.ClientTimeout(total=self.settings.request_timeout))
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop watching containers (they carry on without the agent) and close the client."""
        for handle in list(self._handles):
            await handle.close()
        if self._client is not None:
            await self._client.close()
            self._client = None

    @property
    def _docker(self) -> aiodocker.Docker:
        if self._client is None:
            raise RuntimeError("DockerRuntime is used outside `async with`")
        return self._client

    async def available(self) -> bool:
        """Whether the engine answers; never raises."""
        try:
            async with engine_call(self.settings, "ping"):
                await self._docker.version()
        except (ContainerFailure, aiodocker.DockerError) as exc:
            log.info("docker_not_answering", url=self.url, error=str(exc))
            return False
        return True

    async def ensure_image(self, image: str, auth: dict[str, str] | None,
                           progress: Callable[[str], Awaitable[None]]) -> None:
        """Pull `image` unless the policy is `missing` and it is here; `auth`: registry username and password."""
        if self.settings.pull_policy == "missing" and await self._has_image(image):
            return
        await pull(self._docker, image, auth, progress, self.settings)
        if not await self._has_image(image):
            raise ContainerFailure(f"image {image} could not be pulled: the pull ended without it")

    async def _has_image(self, image: str) -> bool:
        try:
            async with engine_call(self.settings, "looking for the image"):
                await self._docker.images.inspect(image)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                return False
            raise ContainerFailure(f"image {image} could not be inspected: {exc.message}") from None
        return True

    async def create(self, spec: ContainerSpec) -> str:
        """Create (not start) the container; its id."""
        try:
            async with engine_call(self.settings, "creating the container"):
                container = await self._docker.containers.create(create_body(spec, self.settings), name=spec.name)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise ContainerFailure(f"image {spec.image} is not on this agent: {exc.message}") from None
            if exc.status == 409:
                raise ContainerFailure(f"a container named {spec.name} already exists: {exc.message}") from None
            raise ContainerFailure(f"the container for image {spec.image} could not be created: "
                                   f"{exc.message}") from None
        log.debug("container_created", container=container.id[:12], name=spec.name, image=spec.image)
        return container.id

    async def start(self, spec: ContainerSpec, sink: OutputSink) -> ContainerHandle:
        """Create and start the container; its output goes to `sink` from the first byte."""
        container_id = await self.create(spec)
        handle = await self._handle(container_id, spec.image, spec.labels, running=True)
        try:
            async with engine_call(self.settings, "starting the container"):
                await self._docker.containers.container(container_id).start()
        except (aiodocker.DockerError, ContainerFailure) as exc:
            with contextlib.suppress(ContainerFailure):
                await handle.remove()
            if isinstance(exc, ContainerFailure):
                raise
            if any(words in exc.message.lower() for words in NO_COMMAND):
                raise ContainerFailure(f"command not found in image {spec.image}: {exc.message}") from None
            raise ContainerFailure(f"the container for image {spec.image} could not start: {exc.message}") from None
        handle.follow(sink)
        log.info("container_started", container=container_id[:12], name=spec.name, image=spec.image)
        return handle

    async def find(self, labels: dict[str, str]) -> list[ContainerHandle]:
        """The containers, running or exited, that carry all of `labels`."""
        filters = json.dumps({"label": [f"{k}={v}" for k, v in labels.items()]})
        async with engine_call(self.settings, "listing containers"):
            found = await self._docker.containers.list(all=True, filters=filters)
        return [await self._handle(c["Id"], c["Image"], c["Labels"] or {}, running=c["State"] == "running")
                for c in found]

    async def _handle(self, container_id: str, image: str, labels: dict[str, str], *,
                      running: bool) -> ContainerHandle:
        if self._repair_split_lines is None:
            async with engine_call(self.settings, "asking the engine's version"):
                version = (await self._docker.version())["ApiVersion"]
            # Engines before API 1.42 (Docker 23.0) drop the newline ending a line longer than 16 KiB.
            self._repair_split_lines = tuple(map(int, version.split("."))) < (1, 42)
        handle = ContainerHandle(self._docker, self.settings, container_id, image=image, labels=dict(labels),
                                 running=running, repair_split_lines=self._repair_split_lines)
        self._handles.add(handle)
        return handle
