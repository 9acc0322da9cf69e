"""GPU telemetry: the no-GPU path for real, the rest through recorded NVML readings."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

import msgspec
import pynvml
import pytest
from structlog.testing import capture_logs

from incl.agent.telemetry import (
    GpuReading,
    GpuSampler,
    ProcessTreeJobs,
    PynvmlSource,
    RecordedSource,
)
from incl.proto.codec import encode
from incl.proto.telemetry import GpuInfo, GpuTelemetry

GiB = 1024**3

# Two H100s as NVML reported them over three ticks; GPU 1's board does not report power (NOT_SUPPORTED),
# so the recording has no power for it.
RECORDED = {
    "gpus": [
        {"index": 0, "uuid": "GPU-aaaa", "model": "NVIDIA H100 80GB HBM3", "memory_total": 80 * GiB},
        {"index": 1, "uuid": "GPU-bbbb", "model": "NVIDIA H100 80GB HBM3", "memory_total": 80 * GiB},
    ],
    "readings": [
        {
            "0": {"util_gpu": 90, "util_mem": 40, "memory_used": 30 * GiB, "power_w": 600.0,
                  "temperature_c": 60, "pids": [4242]},
            "1": {"util_gpu": 0, "util_mem": 0, "memory_used": 1 * GiB, "temperature_c": 35, "pids": []},
        },
        {
            "0": {"util_gpu": 100, "util_mem": 50, "memory_used": 32 * GiB, "power_w": 680.0,
                  "temperature_c": 66, "pids": [4242, 4243]},
            "1": {"util_gpu": 2, "util_mem": 1, "memory_used": 1 * GiB, "temperature_c": 36, "pids": []},
        },
        {
            "0": {"util_gpu": 95, "util_mem": 45, "memory_used": 31 * GiB, "power_w": 650.0,
                  "temperature_c": 64, "pids": [4242]},
            "1": {"util_gpu": 1, "util_mem": 0, "memory_used": 1 * GiB, "temperature_c": 36},
        },
    ],
}  # fmt: skip


async def open_and_sample(source: Any, ticks: int, **kwargs: Any) -> GpuSampler:
    sampler = GpuSampler(source, **kwargs)
    await sampler.open()
    for _ in range(ticks):
        sampler.sample()
    return sampler


# --- no GPU, for real ----------------------------------------------------------------------------------------


async def test_no_driver_means_zero_gpus_and_an_empty_heartbeat() -> None:
    """On this machine (nvidia-ml-py installed, no NVIDIA library) the agent reports no GPUs and runs on."""
    sampler = GpuSampler(interval=0.01)  # the real PynvmlSource
    with capture_logs() as logs:
        assert await sampler.open() == []
        await asyncio.wait_for(sampler.run(), 2)  # returns at once: nothing to sample
    assert sampler.gpus == []
    telemetry = sampler.snapshot()
    assert telemetry.gpus == [] and telemetry.unhealthy() == [] and telemetry.job_utilization() == {}
    unavailable = [e for e in logs if e["event"] == "nvml_unavailable"]
    assert unavailable and "Library Not Found" in unavailable[0]["reason"]


def test_without_nvidia_ml_py_installed_there_are_zero_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # `import pynvml` now raises ImportError
    with capture_logs() as logs:
        assert PynvmlSource().open() == []
    assert logs[0]["reason"] == "nvidia-ml-py is not installed"


# --- aggregation -------------------------------------------------------------------------------------------


async def test_heartbeat_carries_mean_and_max_per_gpu_and_absent_fields_stay_absent() -> None:
    jobs = {4242: "job-a", 4243: "job-a"}
    sampler = await open_and_sample(RecordedSource.from_dict(RECORDED), 3, job_of_pid=jobs.get)
    assert [g.model for g in sampler.gpus] == ["NVIDIA H100 80GB HBM3"] * 2
    t = sampler.snapshot()
    g0, g1 = t.gpus
    assert (g0.samples, g0.util_gpu_mean, g0.util_gpu_max) == (3, 95.0, 100.0)
    assert (g0.util_mem_mean, g0.util_mem_max) == (45.0, 50.0)
    assert g0.memory_used == 32 * GiB and g0.memory_total == 80 * GiB
    assert g0.power_w == 643.33 and g0.temperature_c == 66.0
    assert g0.pids == [4242, 4243] and g0.job_ids == ["job-a"]
    assert g1.power_w is None  # NOT_SUPPORTED on this board: absent, not zero
    assert g1.util_gpu_mean == 1.0 and g1.job_ids == [] and g1.healthy
    assert t.job_utilization() == {"job-a": 95.0}
    # On the wire, an absent reading takes no space and decodes back to absent.
    decoded = msgspec.msgpack.decode(encode(t), type=GpuTelemetry)
    assert decoded == t and b"power_w" not in encode(t.gpus[1])


async def test_snapshot_starts_a_new_window() -> None:
    sampler = await open_and_sample(RecordedSource.from_dict(RECORDED), 2)
    first = sampler.snapshot()
    sampler.sample()  # the third tick
    second = sampler.snapshot()
    assert first.gpus[0].util_gpu_max == 100.0
    assert second.gpus[0].samples == 1 and second.gpus[0].util_gpu_mean == 95.0
    assert second.start == first.end
    empty = sampler.snapshot().gpus[0]
    assert empty.samples == 0 and empty.util_gpu_mean is None and empty.memory_total == 80 * GiB


async def test_an_allocated_gpu_without_processes_counts_for_its_job() -> None:
    """A job that holds a GPU but never touches it is the idle case: its 1 % must reach the monitor."""
    sampler = await open_and_sample(RecordedSource.from_dict(RECORDED), 3)
    t = sampler.snapshot(assigned={0: "job-a", 1: "job-b"})
    assert t.job_utilization() == {"job-a": 95.0, "job-b": 1.0}


# --- health ------------------------------------------------------------------------------------------------


async def test_critical_xid_marks_the_gpu_unhealthy_for_good() -> None:
    source = RecordedSource.from_dict({**RECORDED, "events": {"1": [{"index": 1, "kind": "xid", "xid": 79}]}})
    with capture_logs() as logs:
        sampler = await open_and_sample(source, 2)
    t = sampler.snapshot()
    assert t.unhealthy() == [1]
    assert t.gpus[1].unhealthy_reason == "xid 79" and t.gpus[1].xid_events == [79]
    assert {"event": "gpu_unhealthy", "gpu": 1, "reason": "xid 79", "log_level": "error"} in logs
    sampler.sample()
    later = sampler.snapshot()
    assert later.unhealthy() == [1] and later.gpus[1].xid_events == []  # still out of service


async def test_application_xid_is_reported_but_keeps_the_gpu_schedulable() -> None:
    source = RecordedSource.from_dict({**RECORDED, "events": {"0": [{"index": 0, "kind": "xid", "xid": 13}]}})
    sampler = await open_and_sample(source, 1)
    t = sampler.snapshot()
    assert t.gpus[0].xid_events == [13] and t.unhealthy() == []


async def test_double_bit_ecc_error_marks_the_gpu_unhealthy() -> None:
    source = RecordedSource.from_dict({**RECORDED, "events": {"0": [{"index": 0, "kind": "ecc"}]}})
    sampler = await open_and_sample(source, 1)
    assert sampler.snapshot().gpus[0].unhealthy_reason == "double-bit ECC error"


# --- sampling off the loop ---------------------------------------------------------------------------------


class GatedSource(RecordedSource):
    """Each reading blocks its thread until the test lets it go, as NVML may on a busy driver."""

    def __init__(self) -> None:
        super().__init__([GpuInfo(index=0)], [{0: GpuReading(util_gpu=50)}] * 1000)
        self.entered, self.release = threading.Event(), threading.Event()
        self.released_in_time, self.starts, self.threads = False, [], set()

    def read(self) -> dict[int, GpuReading]:
        self.threads.add(threading.get_ident())
        self.starts.append(time.monotonic())
        self.entered.set()
        self.released_in_time = self.release.wait(timeout=5)  # on the loop's thread this would never be set
        return super().read()


async def wait_until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def test_sampling_runs_off_the_event_loop_about_every_interval() -> None:
    source = GatedSource()
    sampler = GpuSampler(source, interval=0.1)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(sampler.run())
        await wait_until(source.entered.is_set)  # a reading is blocked in NVML, and the loop runs on
        source.release.set()
        await wait_until(lambda: len(source.starts) >= 4)
        task.cancel()
    assert source.released_in_time and threading.get_ident() not in source.threads
    assert source.starts[3] - source.starts[0] >= 0.2  # ~3 intervals of 0.1 s: paced, not back to back
    assert sampler.snapshot().gpus[0].samples >= 3
    assert source.closed


class BrokenSource(RecordedSource):
    def read(self) -> dict[int, GpuReading]:
        raise RuntimeError("driver hiccup")


async def test_a_failing_sample_is_logged_and_sampling_goes_on() -> None:
    sampler = GpuSampler(BrokenSource([GpuInfo(index=0)]), interval=0.01)
    with capture_logs() as logs:
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(sampler.run())
            await wait_until(lambda: sum(e["event"] == "gpu_sample_failed" for e in logs) >= 2)
            task.cancel()
    assert task.cancelled()  # still sampling when stopped: the failures did not end the task
    failures = [e for e in logs if e["event"] == "gpu_sample_failed"]
    assert failures[0]["error"] == "RuntimeError"


# --- the real PynvmlSource over recorded NVML answers ------------------------------------------------------


class RecordedNvml:
    """Stands in for the `pynvml` module: answers from a recording, raises pynvml's real NVMLError."""

    NVMLError = pynvml.NVMLError
    NVML_TEMPERATURE_GPU = pynvml.NVML_TEMPERATURE_GPU
    NVML_ERROR_GPU_IS_LOST = pynvml.NVML_ERROR_GPU_IS_LOST
    nvmlEventTypeXidCriticalError = pynvml.nvmlEventTypeXidCriticalError
    nvmlEventTypeDoubleBitEccError = pynvml.nvmlEventTypeDoubleBitEccError

    def __init__(self, answers: dict[str, Any], events: list[tuple[int, int, int]]) -> None:
        self.answers, self.pending, self.calls = answers, list(events), []

    def _answer(self, name: str, *args: Any) -> Any:
        self.calls.append(name)
        value = self.answers.get(name)
        if isinstance(value, dict):
            value = value.get(args[0] if args else None)
        if isinstance(value, int) and value < 0:  # a recorded error code
            raise pynvml.NVMLError(-value)
        return value

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self._answer(name, *args)

    def nvmlEventSetWait(self, event_set: Any, timeout_ms: int) -> Any:
        if not self.pending:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_TIMEOUT)
        handle, kind, data = self.pending.pop(0)
        return SimpleNamespace(device=handle, eventType=kind, eventData=data)


NOT_SUPPORTED, GPU_IS_LOST = -pynvml.NVML_ERROR_NOT_SUPPORTED, -pynvml.NVML_ERROR_GPU_IS_LOST


def recorded_nvml(**overrides: Any) -> RecordedNvml:
    answers = {
        "nvmlDeviceGetCount": 2,
        "nvmlDeviceGetHandleByIndex": {0: "h0", 1: "h1"},
        "nvmlDeviceGetIndex": {"h0": 0, "h1": 1},
        "nvmlDeviceGetName": {"h0": b"NVIDIA A10G", "h1": "NVIDIA A10G"},  # old bindings gave bytes
        "nvmlDeviceGetUUID": {"h0": "GPU-0", "h1": "GPU-1"},
        "nvmlDeviceGetMemoryInfo": {"h0": SimpleNamespace(total=24 * GiB, used=3 * GiB), "h1": NOT_SUPPORTED},
        "nvmlDeviceGetUtilizationRates": {"h0": SimpleNamespace(gpu=87, memory=33), "h1": NOT_SUPPORTED},
        "nvmlDeviceGetPowerUsage": {"h0": 151_250, "h1": NOT_SUPPORTED},
        "nvmlDeviceGetTemperature": {"h0": 58, "h1": GPU_IS_LOST},
        "nvmlDeviceGetComputeRunningProcesses": {"h0": [SimpleNamespace(pid=7, usedGpuMemory=GiB)], "h1": []},
        "nvmlDeviceGetSupportedEventTypes": {"h0": 0xFF, "h1": 0xFF},
        "nvmlEventSetCreate": "set",
    }
    return RecordedNvml({**answers, **overrides}, [("h0", pynvml.nvmlEventTypeXidCriticalError, 48)])


async def test_pynvml_source_maps_nvml_answers_and_errors() -> None:
    lib = recorded_nvml()
    source = PynvmlSource(lib)
    sampler = GpuSampler(source)
    gpus = await sampler.open()
    assert gpus == [
        GpuInfo(index=0, uuid="GPU-0", model="NVIDIA A10G", memory_total=24 * GiB),
        GpuInfo(index=1, uuid="GPU-1", model="NVIDIA A10G"),  # memory NOT_SUPPORTED: absent
    ]
    assert lib.calls.count("nvmlDeviceRegisterEvents") == 2
    sampler.sample()
    g0, g1 = sampler.snapshot().gpus
    assert (g0.util_gpu_mean, g0.util_mem_mean, g0.power_w, g0.temperature_c) == (87.0, 33.0, 151.25, 58.0)
    assert g0.pids == [7] and g0.memory_used == 3 * GiB
    assert (g0.healthy, g0.unhealthy_reason, g0.xid_events) == (False, "xid 48", [48])
    assert (g1.util_gpu_mean, g1.power_w, g1.memory_used, g1.temperature_c) == (None, None, None, None)
    assert (g1.healthy, g1.unhealthy_reason) == (False, "gpu lost")
    source.close()
    assert lib.calls[-2:] == ["nvmlEventSetFree", "nvmlShutdown"]


def test_pynvml_source_without_event_support_still_samples() -> None:
    lib = recorded_nvml(nvmlEventSetCreate=NOT_SUPPORTED)
    source = PynvmlSource(lib)
    assert len(source.open()) == 2
    assert source.events(0.01) == [] and source.read()[0].util_gpu == 87.0


def test_nvml_init_failure_gives_zero_gpus() -> None:
    lib = recorded_nvml(nvmlInit=-pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
    with capture_logs() as logs:
        assert PynvmlSource(lib).open() == []
    assert logs[0]["event"] == "nvml_unavailable" and logs[0]["reason"] == "Driver Not Loaded"


# --- pid -> job ----------------------------------------------------------------------------------------------


def test_process_tree_maps_a_grandchild_to_its_job() -> None:
    """A GPU process started by the job's shell belongs to the job; unrelated processes to none."""
    root = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    grandchild = int(root.stdout.readline())
    try:
        jobs = ProcessTreeJobs()
        jobs.add("job-a", root.pid)
        assert jobs(grandchild) == "job-a"
        assert jobs(os.getpid()) is None
        assert jobs(2**22 + 12345) is None  # no such process
        jobs.remove("job-a")
        assert jobs(grandchild) is None
    finally:
        os.kill(grandchild, signal.SIGKILL)
        root.kill()
        root.wait()
        root.stdout.close()


def test_a_recording_with_an_unknown_event_kind_is_refused() -> None:
    with pytest.raises(msgspec.ValidationError, match="fire"):
        RecordedSource.from_dict({"gpus": [], "events": {"0": [{"index": 0, "kind": "fire"}]}})
