"""What the Docker runtime is told and what it answers: its settings, a container's spec, its exit, its failure.

`create_body` turns a `ContainerSpec` into the Engine API's create request; it does no I/O. `engine_call`
bounds one Engine API call by the settings' timeout and turns an unreachable engine into a `ContainerFailure`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any, Literal

import aiodocker
import aiohttp
import msgspec
from rich.filesize import pick_unit_and_suffix

DEFAULT_ENGINE = "unix:///var/run/docker.sock"
LOG_DRIVER = "local"  # keeps output as exact bytes: json-file turns invalid UTF-8 into U+FFFD


class DockerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    url: str | None = None  # None: $DOCKER_HOST, else unix:///var/run/docker.sock
    pull_policy: Literal["missing", "always"] = "missing"
    request_timeout: float = 30.0  # one Engine API call: ping, inspect, create, start, kill, remove
    pull_timeout: float = 3600.0  # one whole image pull
    pull_stall_timeout: float = 300.0  # a pull that reports nothing for this long has failed
    progress_interval: float = 5.0  # at most one "pulling IMAGE: 45% of 1.2 GB" line per this long
    shm_size: int = 2**30  # /dev/shm of a container whose spec names none (Docker's own 64 MiB starves loaders)
    stop_slack: float = 10.0  # after SIGKILL, how long the engine may take to report the container ended
    log_drain_timeout: float = 10.0  # after the exit, how long the log stream may take to end on its own
    log_retry_interval: float = 0.5  # before following a broken log stream again
    log_catchup_window: int = 10_000  # after the exit, the log's last messages searched for what a follow missed
    log_max_bytes: int = 2**40  # the container's log file; rotation would lose the start a re-adoption replays
    poll_interval: float = 0.2  # the Runner's look at the entrypoint's marker files

    def engine_url(self) -> str:
        return self.url or os.environ.get("DOCKER_HOST") or DEFAULT_ENGINE


class Mount(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    source: str  # a host path
    target: str  # where the container sees it
    read_only: bool = False


class ContainerSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    image: str
    argv: list[str]  # replaces the image's entrypoint and command
    env: dict[str, str] = {}
    working_dir: str | None = None
    mounts: list[Mount] = []
    gpus: list[int] | Literal["all"] | None = None  # host GPU indices
    shm_size: int | None = None  # bytes; None: DockerSettings.shm_size
    memory: int | None = None  # bytes, with no swap on top
    cpus: float | None = None
    labels: dict[str, str] = {}

    def __repr__(self) -> str:  # env holds the job's secrets: names only
        return f"ContainerSpec(name={self.name!r}, image={self.image!r}, env={sorted(self.env)!r})"


class ContainerExit(msgspec.Struct, frozen=True, kw_only=True):
    exit_code: int  # as Docker reports it: a job killed by signal N ends with 128 + N
    oom_killed: bool = False
    reason: str | None = None  # what went wrong, in words a user understands; None: the exit code says it


class ContainerFailure(Exception):
    """The container could not be run (pull, create, start, or the engine itself); `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def binary_size(n: int) -> str:
    """`64 MiB`, `1.5 GiB`: how a memory limit is shown."""
    unit, suffix = pick_unit_and_suffix(n, ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"], 1024)
    return f"{n / unit:.4g} {suffix}"


def _device_requests(gpus: list[int] | Literal["all"] | None) -> list[dict[str, Any]]:
    if gpus is None or gpus == []:
        return []
    request: dict[str, Any] = {"Driver": "nvidia", "Capabilities": [["gpu"]]}
    if gpus == "all":
        request["Count"] = -1
    else:
        request["DeviceIDs"] = [str(i) for i in gpus]
    return [request]


def create_body(spec: ContainerSpec, settings: DockerSettings) -> dict[str, Any]:
    """The `POST /containers/create` body for `spec`."""
    host: dict[str, Any] = {
        "NetworkMode": "host",
        # tini as PID 1, told to signal the job's whole process group: SIGTERM reaches the shell's children.
        "Init": True,
        "ShmSize": spec.shm_size if spec.shm_size is not None else settings.shm_size,
        "Binds": [f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}" for m in spec.mounts],
        "LogConfig": {"Type": LOG_DRIVER, "Config": {
            "max-size": str(settings.log_max_bytes), "max-file": "1", "compress": "false"}},
    }
    if spec.memory is not None:
        host["Memory"] = host["MemorySwap"] = spec.memory  # no swap: running out of memory is an OOM kill
    if spec.cpus is not None:
        host["NanoCpus"] = int(spec.cpus * 1e9)
    if requests := _device_requests(spec.gpus):
        host["DeviceRequests"] = requests
    body: dict[str, Any] = {
        "Image": spec.image,
        "Entrypoint": spec.argv[:1],
        "Cmd": spec.argv[1:],
        "Env": [f"{k}={v}" for k, v in {**spec.env, "TINI_KILL_PROCESS_GROUP": "1"}.items()],
        "Labels": spec.labels,
        "AttachStdin": False, "AttachStdout": False, "AttachStderr": False, "Tty": False, "OpenStdin": False,
        "HostConfig": host,
    }
    if spec.working_dir:
        body["WorkingDir"] = spec.working_dir
    return body


@contextlib.asynccontextmanager
async def engine_call(settings: DockerSettings, what: str, *, bounded: bool = True) -> AsyncIterator[None]:
    """`async with engine_call(settings, "creating the container"): await ...`; Docker's own refusals
    (`aiodocker.DockerError` with an HTTP status) pass through for the caller to word. `bounded=False` is for
    the calls that last as long as the job (waiting for its exit)."""
    limit = settings.request_timeout
    url = settings.engine_url()
    try:
        async with asyncio.timeout(limit if bounded else None):
            yield
    except TimeoutError:
        raise ContainerFailure(f"the Docker engine at {url} did not answer within {limit:g} s "
                               f"({what})") from None
    except aiodocker.DockerError as exc:
        if exc.status == 900:  # aiodocker's "cannot connect", raised while handling aiohttp's error
            cause = getattr(exc.__context__, "os_error", None)
            detail = cause.strerror if isinstance(cause, OSError) and cause.strerror else exc.message
            raise ContainerFailure(f"the Docker engine at {url} is not reachable ({what}): {detail}") from None
        raise
    except aiohttp.ClientError as exc:
        raise ContainerFailure(f"lost the Docker engine at {url} ({what}): {exc}") from None
