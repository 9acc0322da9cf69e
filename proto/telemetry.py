"""GPU telemetry on the wire: what an agent reports about its GPUs.

`GpuInfo` is static and travels once, in registration. `GpuTelemetry` travels in every heartbeat: one
`GpuStats` per GPU, aggregated (mean and max) over the samples taken since the previous heartbeat.

NVML does not support every reading on every GPU (power on some boards, utilization under MIG, processes
inside some containers); a reading it cannot give is absent (`None`), never a guess.
"""

from __future__ import annotations

import msgspec


class _Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    pass


class GpuInfo(_Struct, frozen=True):
    index: int
    uuid: str | None = None
    model: str | None = None  # "NVIDIA H100 80GB HBM3"
    memory_total: int | None = None  # bytes


class GpuStats(_Struct, frozen=True):
    """One GPU over one heartbeat window. Percentages are 0-100; `samples` is 0 when none were taken."""

    index: int
    samples: int = 0
    util_gpu_mean: float | None = None
    util_gpu_max: float | None = None
    util_mem_mean: float | None = None
    util_mem_max: float | None = None
    memory_used: int | None = None  # bytes, the most seen in the window
    memory_total: int | None = None
    power_w: float | None = None  # mean
    temperature_c: float | None = None  # the hottest seen in the window
    healthy: bool = True  # False stays False: a GPU that had a critical XID takes no new work
    unhealthy_reason: str | None = None  # "xid 79", "double-bit ECC error", "gpu lost"
    xid_events: list[int] = []  # every XID seen in the window, critical or not
    pids: list[int] = []  # compute processes seen in the window
    job_ids: list[str] = []  # the jobs holding this GPU (by allocation or by process)


class GpuTelemetry(_Struct, frozen=True):
    start: float  # the window the stats cover, unix seconds
    end: float
    gpus: list[GpuStats] = []

    def unhealthy(self) -> list[int]:
        """Indexes of the GPUs the scheduler must not place work on."""
        return [g.index for g in self.gpus if not g.healthy]

    def job_utilization(self) -> dict[str, float]:
        """Each job's GPU utilization in the window: the mean over its GPUs of their mean utilization.

        GPUs without a utilization reading are left out; a job none of whose GPUs has one is absent.
        """
        per_job: dict[str, list[float]] = {}
        for gpu in self.gpus:
            if gpu.util_gpu_mean is None:
                continue
            for job_id in gpu.job_ids:
                per_job.setdefault(job_id, []).append(gpu.util_gpu_mean)
        return {job_id: sum(values) / len(values) for job_id, values in per_job.items()}
