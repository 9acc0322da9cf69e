"""GPU telemetry from NVML: sampled about once a second off the event loop, aggregated into each heartbeat.

    NvmlSource (protocol)  the few NVML calls the sampler needs
    ├── PynvmlSource       the real one (`nvidia-ml-py`, imported lazily as `pynvml`)
    └── RecordedSource     recorded readings, for tests and machines without a GPU
    GpuSampler             samples a source in a worker thread; `snapshot()` aggregates and resets
    ProcessTreeJobs        pid -> job id, by walking /proc up to a job's root process

No library, no driver or no GPU gives zero GPUs; a reading NVML refuses (NOT_SUPPORTED or any other
NVMLError) is absent. A critical XID or a double-bit ECC error marks the GPU unhealthy for good: the
scheduler places no new work on it.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec
import structlog

from incl.proto.telemetry import GpuInfo, GpuStats, GpuTelemetry

log = structlog.get_logger()

# XIDs an application causes (illegal address, page fault, stopped channel...): reported, but the GPU stays
# schedulable. The same list NVIDIA's Kubernetes device plugin skips.
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})


class GpuReading(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One GPU at one instant; None where NVML cannot say."""

    util_gpu: float | None = None
    util_mem: float | None = None
    memory_used: int | None = None
    power_w: float | None = None
    temperature_c: float | None = None
    pids: list[int] | None = None
    lost: bool = False  # NVML answered GPU_IS_LOST: the GPU has fallen off the bus


class GpuEvent(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    index: int
    kind: Literal["xid", "ecc"]  # ecc: a double-bit (uncorrectable) ECC error
    xid: int | None = None


def unhealthy_reason(event: GpuEvent) -> str | None:
    """Why this event takes the GPU out of scheduling, or None when it does not."""
    if event.kind == "ecc":
        return "double-bit ECC error"
    if event.xid is not None and event.xid not in APPLICATION_XIDS:
        return f"xid {event.xid}"
    return None


class NvmlSource(Protocol):
    def open(self) -> list[GpuInfo]:
        """The GPUs present; [] when there is no library, no driver or no GPU."""

    def read(self) -> dict[int, GpuReading]:
        """One reading of every GPU, by index."""

    def events(self, timeout: float) -> list[GpuEvent]:
        """XID and ECC events since the last call, waiting at most `timeout` seconds for the first."""

    def close(self) -> None: ...


class RecordedSource:
    """Plays back recorded readings: each `read()` returns the next tick, then {} once they run out."""

    def __init__(
        self,
        gpus: list[GpuInfo],
        readings: Iterable[Mapping[int, GpuReading]] = (),
        events: Mapping[int, list[GpuEvent]] | None = None,  # tick number -> events seen with that tick
    ) -> None:
        self._gpus = gpus
        self._ticks = list(readings)
        self._events = dict(events or {})
        self._tick = -1
        self.closed = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecordedSource:
        """From `{"gpus": [...], "readings": [{"0": {...}}, ...], "events": {"3": [...]}}` (JSON shaped)."""
        return cls(
            msgspec.convert(data.get("gpus", []), list[GpuInfo]),
            msgspec.convert(data.get("readings", []), list[dict[int, GpuReading]], strict=False),
            msgspec.convert(data.get("events", {}), dict[int, list[GpuEvent]], strict=False),
        )

    def open(self) -> list[GpuInfo]:
        return list(self._gpus)

    def read(self) -> dict[int, GpuReading]:
        self._tick += 1
        return dict(self._ticks[self._tick]) if self._tick < len(self._ticks) else {}

    def events(self, timeout: float) -> list[GpuEvent]:
        return self._events.pop(self._tick, [])

    def close(self) -> None:
        self.closed = True


class PynvmlSource:
    """NVML through `nvidia-ml-py`. `lib` stands in for the `pynvml` module (imported on `open()`)."""

    def __init__(self, lib: Any = None) -> None:
        self._lib = lib
        self._handles: dict[int, Any] = {}
        self._event_set: Any = None
        self._up = False

    def open(self) -> list[GpuInfo]:
        lib = self._lib
        if lib is None:
            try:
                lib = self._lib = importlib.import_module("pynvml")
            except ImportError:
                log.info("nvml_unavailable", reason="nvidia-ml-py is not installed")
                return []
        try:
            lib.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - NVMLError (no library, no driver, no permission) or a loader OSError
            log.info("nvml_unavailable", reason=str(exc) or type(exc).__name__)
            return []
        self._up = True
        infos = []
        for index in range(self._get(lib.nvmlDeviceGetCount) or 0):
            handle = self._get(lib.nvmlDeviceGetHandleByIndex, index)
            if handle is None:
                log.warning("gpu_unreadable", gpu=index)
                continue
            self._handles[index] = handle
            memory = self._get(lib.nvmlDeviceGetMemoryInfo, handle)
            infos.append(
                GpuInfo(
                    index=index,
                    uuid=_text(self._get(lib.nvmlDeviceGetUUID, handle)),
                    model=_text(self._get(lib.nvmlDeviceGetName, handle)),
                    memory_total=None if memory is None else int(memory.total),
                )
            )
        self._open_events()
        return infos

    def read(self) -> dict[int, GpuReading]:
        return {index: self._read_one(handle) for index, handle in self._handles.items()}

    def events(self, timeout: float) -> list[GpuEvent]:
        lib, out = self._lib, list[GpuEvent]()
        if self._event_set is None:
            return out
        for _ in range(64):  # drain what is pending; only the first wait may block
            try:
                data = lib.nvmlEventSetWait(self._event_set, int(timeout * 1000) if not out else 0)
            except lib.NVMLError:  # TIMEOUT: nothing (more) pending
                break
            index = self._get(lib.nvmlDeviceGetIndex, data.device)
            if index is None:
                continue
            if data.eventType & lib.nvmlEventTypeXidCriticalError:
                out.append(GpuEvent(index=index, kind="xid", xid=int(data.eventData)))
            elif data.eventType & lib.nvmlEventTypeDoubleBitEccError:
                out.append(GpuEvent(index=index, kind="ecc"))
        return out

    def close(self) -> None:
        if not self._up:
            return
        if self._event_set is not None:
            self._get(self._lib.nvmlEventSetFree, self._event_set)
            self._event_set = None
        self._get(self._lib.nvmlShutdown)
        self._handles.clear()
        self._up = False

    def _get(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except self._lib.NVMLError:
            return None

    def _ok(self, fn: Callable[..., Any], *args: Any) -> bool:
        try:
            fn(*args)
        except self._lib.NVMLError:
            return False
        return True

    def _read_one(self, handle: Any) -> GpuReading:
        lib, lost = self._lib, False

        def get(fn: Callable[..., Any], *args: Any) -> Any:
            nonlocal lost
            try:
                return fn(*args)
            except lib.NVMLError as exc:
                lost = lost or getattr(exc, "value", None) == getattr(lib, "NVML_ERROR_GPU_IS_LOST", 15)
                return None

        util = get(lib.nvmlDeviceGetUtilizationRates, handle)
        memory = get(lib.nvmlDeviceGetMemoryInfo, handle)
        power_mw = get(lib.nvmlDeviceGetPowerUsage, handle)
        temperature = get(lib.nvmlDeviceGetTemperature, handle, lib.NVML_TEMPERATURE_GPU)
        procs = get(lib.nvmlDeviceGetComputeRunningProcesses, handle)
        return GpuReading(
            util_gpu=None if util is None else float(util.gpu),
            util_mem=None if util is None else float(util.memory),
            memory_used=None if memory is None else int(memory.used),
            power_w=None if power_mw is None else power_mw / 1000.0,
            temperature_c=None if temperature is None else float(temperature),
            pids=None if procs is None else sorted({int(p.pid) for p in procs}),
            lost=lost,
        )

    def _open_events(self) -> None:
        lib = self._lib
        wanted = lib.nvmlEventTypeXidCriticalError | lib.nvmlEventTypeDoubleBitEccError
        event_set = self._get(lib.nvmlEventSetCreate)
        if event_set is None:
            return
        registered = False
        for handle in self._handles.values():
            mask = wanted & (self._get(lib.nvmlDeviceGetSupportedEventTypes, handle) or 0)
            if mask and self._ok(lib.nvmlDeviceRegisterEvents, handle, mask, event_set):
                registered = True
        if registered:
            self._event_set = event_set
        else:
            self._get(lib.nvmlEventSetFree, event_set)


def _text(value: Any) -> str | None:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class _Series:
    __slots__ = ("count", "max", "total")

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0
        self.max: float | None = None

    def add(self, value: float | None) -> None:
        if value is not None:
            self.total, self.count = self.total + value, self.count + 1
            self.max = value if self.max is None else max(self.max, value)

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None


class _Window:
    """One GPU's readings since the last snapshot."""

    def __init__(self) -> None:
        self.samples = 0
        self.util_gpu, self.util_mem, self.memory, self.power, self.temp = (_Series() for _ in range(5))
        self.pids: set[int] = set()
        self.jobs: set[str] = set()
        self.xids: list[int] = []

    def add(self, reading: GpuReading, jobs: Iterable[str]) -> None:
        self.samples += 1
        self.util_gpu.add(reading.util_gpu)
        self.util_mem.add(reading.util_mem)
        self.memory.add(reading.memory_used)
        self.power.add(reading.power_w)
        self.temp.add(reading.temperature_c)
        self.pids.update(reading.pids or ())
        self.jobs.update(jobs)

    def stats(self, info: GpuInfo, unhealthy: str | None, assigned: str | None) -> GpuStats:
        jobs = self.jobs | ({assigned} if assigned else set())
        return GpuStats(
            index=info.index,
            samples=self.samples,
            util_gpu_mean=_round(self.util_gpu.mean),
            util_gpu_max=self.util_gpu.max,
            util_mem_mean=_round(self.util_mem.mean),
            util_mem_max=self.util_mem.max,
            memory_used=None if self.memory.max is None else int(self.memory.max),
            memory_total=info.memory_total,
            power_w=_round(self.power.mean),
            temperature_c=self.temp.max,
            healthy=unhealthy is None,
            unhealthy_reason=unhealthy,
            xid_events=list(self.xids),
            pids=sorted(self.pids),
            job_ids=sorted(jobs),
        )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


class GpuSampler:
    """Samples `source` every `interval` seconds in a worker thread; the heartbeat calls `snapshot()`.

    `job_of_pid` maps a GPU process to the job it belongs to (see `ProcessTreeJobs`); it is called from
    the worker thread.
    """

    def __init__(
        self,
        source: NvmlSource | None = None,
        *,
        interval: float = 1.0,
        event_wait: float = 0.05,
        job_of_pid: Callable[[int], str | None] = lambda pid: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._source = source if source is not None else PynvmlSource()
        self._interval, self._event_wait = interval, event_wait
        self._job_of_pid, self._clock = job_of_pid, clock
        self._lock = threading.Lock()
        self._latest: dict[int, GpuReading] = {}  # index -> its newest reading (`latest`)
        self._gpus: list[GpuInfo] | None = None
        self._windows: dict[int, _Window] = {}
        self._unhealthy: dict[int, str] = {}
        self._since = clock()

    @property
    def gpus(self) -> list[GpuInfo]:
        """What registration reports; [] before `open()` and on a machine without GPUs."""
        return list(self._gpus or [])

    def unhealthy(self) -> list[int]:
        """GPUs that had a critical XID or ECC event: no new work goes to them."""
        with self._lock:
            return sorted(self._unhealthy)

    async def open(self) -> list[GpuInfo]:
        """Find the GPUs (in a thread: nvmlInit can take a while). Idempotent."""
        if self._gpus is None:
            gpus = await asyncio.to_thread(self._source.open)
            with self._lock:
                self._gpus = gpus
                self._windows = {g.index: _Window() for g in gpus}
                self._since = self._clock()
            log.info("gpus_found", count=len(gpus), model=gpus[0].model if gpus else None)
        return self.gpus

    def sample(self) -> None:
        """Take one reading of every GPU and drain pending XID/ECC events. Blocks: run it off the loop."""
        readings = self._source.read()
        events = self._source.events(self._event_wait)
        jobs = {index: self._jobs(r.pids or ()) for index, r in readings.items()}
        with self._lock:
            self._latest.update(readings)
            for index, reading in readings.items():
                if index in self._windows:
                    self._windows[index].add(reading, jobs[index])
                    if reading.lost:
                        self._mark(index, "gpu lost")
            for event in events:
                if event.index in self._windows:
                    if event.xid is not None:
                        self._windows[event.index].xids.append(event.xid)
                    reason = unhealthy_reason(event)
                    if reason:
                        self._mark(event.index, reason)

    async def run(self) -> None:
        """Sample until cancelled (the agent's TaskGroup owns this task). Returns at once without GPUs."""
        if not await self.open():
            return
        try:
            while True:
                started = time.monotonic()
                try:
                    await asyncio.to_thread(self.sample)
                except Exception as exc:  # noqa: BLE001 - a driver hiccup must not take the agent down
                    log.warning("gpu_sample_failed", error=type(exc).__name__)
                await asyncio.sleep(max(0.0, self._interval - (time.monotonic() - started)))
        finally:
            self._source.close()

    def latest(self, indices: Iterable[int]) -> list[GpuReading]:
        """The newest reading of each of these GPUs (those read at least once), without ending a window."""
        with self._lock:
            return [self._latest[i] for i in indices if i in self._latest]

    def snapshot(self, assigned: Mapping[int, str] | None = None) -> GpuTelemetry:
        """Stats per GPU since the last snapshot, then start a new window.

        `assigned` is the agent's allocation (GPU index -> job id): a GPU counts for its job even when no
        process of the job is on it yet, which is exactly the idle case.
        """
        assigned = assigned or {}
        now = self._clock()
        with self._lock:
            gpus = [
                self._windows[g.index].stats(g, self._unhealthy.get(g.index), assigned.get(g.index))
                for g in self._gpus or []
            ]
            self._windows = {g.index: _Window() for g in self._gpus or []}
            start, self._since = self._since, now
        return GpuTelemetry(start=start, end=now, gpus=gpus)

    def _jobs(self, pids: Iterable[int]) -> set[str]:
        return {job for job in map(self._job_of_pid, pids) if job}

    def _mark(self, index: int, reason: str) -> None:
        if index not in self._unhealthy:
            self._unhealthy[index] = reason
            log.error("gpu_unhealthy", gpu=index, reason=reason)


class ProcessTreeJobs:
    """pid -> job id: a process belongs to the job whose root process it descends from (Linux /proc).

    The runner `add`s each job's root pid when it starts and `remove`s it when it exits. Thread-safe for
    one writer (the event loop) and one reader (the sampler thread).
    """

    def __init__(self, proc: Path = Path("/proc"), max_depth: int = 64) -> None:
        self._roots: dict[int, str] = {}
        self._proc, self._max_depth = proc, max_depth

    def add(self, job_id: str, pid: int) -> None:
        self._roots = {**self._roots, pid: job_id}

    def remove(self, job_id: str) -> None:
        self._roots = {p: j for p, j in self._roots.items() if j != job_id}

    def __call__(self, pid: int) -> str | None:
        roots = self._roots
        for _ in range(self._max_depth):
            if pid in roots:
                return roots[pid]
            parent = self._parent(pid)
            if parent is None or parent <= 1:
                return None
            pid = parent
        return None

    def _parent(self, pid: int) -> int | None:
        try:
            stat = (self._proc / str(pid) / "stat").read_text()
        except OSError:
            return None
        fields = stat[stat.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
        return int(fields[1]) if len(fields) > 1 else None
