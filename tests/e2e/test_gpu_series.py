"""A running job's GPUs become metric points of its own, so its charts show utilization and memory over time
(issue 14's Job page: "the job's GPU utilization and memory over time")."""

from __future__ import annotations

from pathlib import Path

from conftest import Cluster, NatsServer
from webpages import idle_gpus

from incl.agent.runner import gpu_values
from incl.agent.telemetry import GpuReading
from incl.proto.messages import JobState


def test_a_jobs_gpus_are_one_point_mean_utilization_and_memory_in_all() -> None:
    readings = [GpuReading(util_gpu=90.0, memory_used=2**30), GpuReading(util_gpu=50.0, memory_used=3 * 2**30),
                GpuReading()]  # a GPU NVML could not read counts for nothing
    assert gpu_values(readings) == {"sys/gpu_util": 70.0, "sys/gpu_mem_gib": 4.0}
    assert gpu_values([GpuReading()]) == {}


async def test_a_gpu_jobs_utilization_and_memory_are_in_its_metrics_over_time(nats_server: NatsServer,
                                                                              tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, nats_server)
    try:
        cluster.start_controller()
        cluster.start_agent("gpu1", cpus=4, gpu_sample_interval=0.05, gpu_recording=str(idle_gpus(tmp_path)),
                            gpu_metrics_interval=0.2)
        await cluster.wait_agents(1)
        job = await cluster.submit("sleep 2", resources={"gpus": 1})
        assert (await cluster.wait_done(job.id)).state is JobState.SUCCEEDED
        points = [p for p in await cluster.metric_points(job.id) if "sys/gpu_util" in p.values]
        assert len(points) >= 4, points  # every 0.2 s for 2 s
        assert all(p.step is None and p.values["sys/gpu_mem_gib"] == 1.0 for p in points)
        assert {p.values["sys/gpu_util"] for p in points} <= {95.0, 0.0}
        assert [p.ts for p in points] == sorted(p.ts for p in points)
    finally:
        cluster.close()
