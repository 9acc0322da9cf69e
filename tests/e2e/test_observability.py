"""Seeing inside a real stack: the controller's and an agent's /metrics scraped over HTTP while a job runs, and
`incl status` (text and --json) against real processes, before and after a dead letter and a dead controller."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import yaml
from conftest import Cluster, free_port, wait_for
from prometheus_client.parser import text_string_to_metric_families

from incl.proto import subjects


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def one_busy_gpu(tmp: Path) -> Path:
    """Recorded NVML readings (no GPU here): one GPU at 95 % for as long as the test runs."""
    path = tmp / "nvml.yaml"
    path.write_text(yaml.safe_dump({"gpus": [{"index": 0, "uuid": "GPU-0", "model": "Fake A100"}],
                                    "readings": [{"0": {"util_gpu": 95, "util_mem": 40}}] * 4000}))
    return path


async def test_controller_and_agent_metrics_move_with_a_job(cluster: Cluster, tmp_path: Path) -> None:
    controller_port, agent_port = free_port(), free_port()
    cluster.start_controller(metrics_port=controller_port)
    cluster.start_agent("a1", metrics_port=agent_port, gpu_sample_interval=0.05,
                        gpu_recording=str(one_busy_gpu(tmp_path)))
    await cluster.wait_agents(1)
    job = await cluster.submit("echo measured")
    assert (await cluster.wait_done(job.id)).state == "SUCCEEDED"

    def controller_moved() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        m = scrape(controller_port)
        return m if value(m, "incl_gpu_utilization_percent", agent="a1", gpu="0") else None

    m = await wait_for(controller_moved, timeout=10, what="the controller's GPU gauge")
    assert value(m, "incl_jobs", state="SUCCEEDED") == 1 and value(m, "incl_jobs", state="QUEUED") == 0
    assert value(m, "incl_agents", state="alive") == 1
    assert value(m, "incl_queue_wait_seconds_count") == 1
    assert value(m, "incl_dispatch_latency_seconds_count") >= 1
    assert value(m, "incl_heartbeat_lag_seconds_count") >= 1
    assert value(m, "incl_messages_applied_total", source="controller-events") >= 2  # running, exited
    assert value(m, "incl_messages_parked_total", source="controller-events") == 0
    assert value(m, "incl_store_bytes", stream=subjects.LOGS_STREAM) > 0  # the job's line is stored
    assert value(m, "incl_gpu_utilization_percent", agent="a1", gpu="0") == 95

    a = scrape(agent_port)
    assert value(a, "incl_messages_applied_total", source="agent-a1") >= 1  # the assignment
    assert value(a, "incl_gpu_utilization_percent", agent="a1", gpu="0") == 95


async def test_status_shows_the_system_then_its_errors_then_a_missing_controller(cluster: Cluster) -> None:
    controller = cluster.start_controller(metrics_port=None)
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    job = await cluster.submit("echo fine")
    await cluster.wait_done(job.id)

    out = cluster.cli("status")
    assert out.returncode == 0, out.stderr
    assert "(leader, up" in out.stdout and "1 alive" in out.stdout and "1 SUCCEEDED" in out.stdout
    assert subjects.EVENTS_STREAM in out.stdout and "0 dead-lettered messages" in out.stdout

    async with cluster.client() as c:  # something no agent would send: parked by the controller
        await c.bus.publish_durable(subjects.events("a1"), b"\x00not a message")

    def parked() -> dict[str, object] | None:
        report = json.loads(cluster.cli("status", "--json").stdout)
        return report if report["dead_letters"] == 1 else None

    report = await wait_for(parked, timeout=10, what="the garbage event dead-lettered")
    assert [n["connected"] for n in report["nats"]] == [True] and report["nats"][0]["version"]
    assert len(report["controllers"]) == 1 and report["controllers"][0]["started_at"] > 0
    assert report["agents"] == {"alive": 1} and report["jobs"] == {"SUCCEEDED": 1} and report["queued"] == 0
    streams = {s["name"]: s for s in report["streams"]}
    assert streams[subjects.LOGS_STREAM]["replicas"] == 1 and streams[subjects.LOGS_STREAM]["bytes"] > 0
    assert f"KV_{subjects.JOBS_BUCKET}" in streams
    assert report["errors"][0]["letter"]["source"] == "controller-events" and report["problems"] == []
    assert report["parts"] is None  # not a stack `incl up` started

    controller.kill()
    down = cluster.cli("status")
    assert down.returncode == 1 and "none answering" in down.stdout and "no controller is answering" in down.stderr
