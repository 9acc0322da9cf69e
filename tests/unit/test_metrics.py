"""The daemons' Prometheus metrics: the endpoint's lifespan, what the bus counts per daemon, what the controller
observes on job changes and heartbeats, and a Grafana dashboard that asks only for metrics that exist."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from incl.bus import probe
from incl.bus.metrics import DaemonMetrics, GpuUtilization, serving
from incl.bus.retry import forever
from incl.controller import state
from incl.controller.metrics import ControllerMetrics
from incl.proto.messages import AgentState, Job, JobState
from incl.proto.spec import load_spec
from incl.proto.telemetry import GpuStats, GpuTelemetry

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "incl.json"
SCRAPE_CONFIG = Path(__file__).parents[2] / "deploy" / "prometheus" / "prometheus.yml"


async def get(port: int, path: str = "/metrics") -> tuple[int, str]:
    """One plain HTTP GET, as Prometheus sends it; the status and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/plain\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("port", [None, 0])
async def test_no_metrics_port_serves_nothing(port: int | None) -> None:
    registry = DaemonMetrics().registry
    async with serving(registry, "127.0.0.1", port) as bound:
        assert bound is None


async def test_the_endpoint_lives_with_the_block_and_answers_only_metrics() -> None:
    metrics = DaemonMetrics()
    port = free_port()
    async with serving(metrics.registry, "127.0.0.1", port) as bound:
        assert bound == port and listening(port)
        status, body = await get(port)
        assert status == 200 and "incl_retries_total" not in samples(body)  # no series before a first retry
        assert (await get(port, "/"))[0] == 404
    assert not listening(port)


async def test_a_port_in_use_is_logged_and_the_daemon_goes_on() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        async with serving(DaemonMetrics().registry, "127.0.0.1", taken.getsockname()[1]) as bound:
            assert bound is None


async def test_each_daemon_counts_its_own_retries_and_nothing_outside_one_counts() -> None:
    """Two daemons in one process (each its own task, as its lifespan is) count apart; code outside any counts
    nothing and fails nothing."""
    first, second = DaemonMetrics(), DaemonMetrics()

    async def flaky(fails: int) -> str:
        left = [fails]

        async def call() -> str:
            if left[0]:
                left[0] -= 1
                raise ConnectionError("NATS is restarting")
            return "ok"

        return await forever("publish_event", call, initial=0.001, maximum=0.002)

    async def daemon(metrics: DaemonMetrics, fails: int) -> str:
        probe.install(metrics)
        return await flaky(fails)

    assert await asyncio.gather(asyncio.create_task(daemon(first, 3)), asyncio.create_task(daemon(second, 1)),
                                flaky(2)) == ["ok", "ok", "ok"]
    count = lambda m: m.registry.get_sample_value("incl_retries_total", {"what": "publish_event"})  # noqa: E731
    assert (count(first), count(second)) == (3.0, 1.0)


def job_through(*steps: str) -> list[Job]:
    """A job's records as the controller writes them: queued at t=100, assigned at 102, running at 102.5."""
    job = Job(id="j-1", spec=load_spec({"run": "true"}), user="u", state=JobState.QUEUED, submitted_at=100.0,
              updated_at=100.0)
    out = [job]
    for step in steps:
        match step:
            case "assign":
                job = state.assign(job, "a1", 102.0)
            case "starting":
                job = state.starting(job, 1, 102.2)
            case "running":
                job = state.running(job, 1, 102.5, 102.4)
        out.append(job)
    return out


def test_queue_wait_and_dispatch_latency_come_from_the_transitions() -> None:
    metrics = ControllerMetrics()
    records = job_through("assign", "starting", "running")
    for before, after in itertools.pairwise(records):
        metrics.job_changed(before, after)
    metrics.job_changed(records[-1], records[-1])  # written again unchanged: nothing observed
    value = metrics.registry.get_sample_value
    assert value("incl_queue_wait_seconds_count") == 1 and value("incl_queue_wait_seconds_sum") == pytest.approx(2.0)
    assert value("incl_dispatch_latency_seconds_count") == 1
    assert value("incl_dispatch_latency_seconds_sum") == pytest.approx(0.5)


def test_heartbeat_lag_is_lateness_against_the_interval_given() -> None:
    metrics = ControllerMetrics()
    metrics.beat("a1", 10.0, 5.0)  # registered: told to report in 5 s
    metrics.beat("a1", 15.2, 5.0)  # 0.2 s late
    metrics.beat("a1", 19.0, 5.0)  # early: 0
    value = metrics.registry.get_sample_value
    assert value("incl_heartbeat_lag_seconds_count") == 2
    assert value("incl_heartbeat_lag_seconds_sum") == pytest.approx(0.2)
    assert value("incl_heartbeat_lag_seconds_bucket", {"le": "0.25"}) == 2


def test_agents_long_silent_are_forgotten_so_the_lag_memory_stays_bounded() -> None:
    """Instances come and go for months, each agent with a new id: those silent for an hour are dropped as the
    memory grows, so it holds about the agents alive now, not every one ever seen."""
    metrics = ControllerMetrics()
    for i in range(3000):  # reported once, long ago, and never again
        metrics.beat(f"gone-{i}", 0.0, 5.0)
    for i in range(2000):
        metrics.beat(f"live-{i}", 10_000.0, 5.0)
    metrics.beat("live-0", 10_005.0, 5.0)
    assert metrics.registry.get_sample_value("incl_heartbeat_lag_seconds_count") == 1
    assert sorted(metrics._due) == sorted(f"live-{i}" for i in range(2000))


def test_states_and_gpus_are_read_at_scrape_time() -> None:
    metrics = ControllerMetrics()
    jobs = [JobState.SUCCEEDED, JobState.SUCCEEDED, JobState.QUEUED]
    gpus = GpuTelemetry(start=0, end=1, gpus=[GpuStats(index=0, util_gpu_mean=95.0), GpuStats(index=1)])
    metrics.watch(lambda: jobs, lambda: [AgentState.ALIVE], lambda: [("a1", gpus), ("a2", None)])
    value = metrics.registry.get_sample_value
    assert value("incl_jobs", {"state": "SUCCEEDED"}) == 2 and value("incl_jobs", {"state": "RUNNING"}) == 0
    jobs.append(JobState.RUNNING)
    assert value("incl_jobs", {"state": "RUNNING"}) == 1
    assert value("incl_agents", {"state": "alive"}) == 1
    assert value("incl_gpu_utilization_percent", {"agent": "a1", "gpu": "0"}) == 95.0
    assert value("incl_gpu_utilization_percent", {"agent": "a1", "gpu": "1"}) is None  # no reading: no guess


def test_a_new_term_as_leader_reads_its_own_records_in_place_of_the_last_ones() -> None:
    metrics = ControllerMetrics()  # one per daemon; a controller that stood by and leads again watches anew
    metrics.watch(lambda: [JobState.QUEUED], lambda: [], lambda: [])
    metrics.watch(lambda: [JobState.SUCCEEDED] * 3, lambda: [], lambda: [])
    value = metrics.registry.get_sample_value
    assert value("incl_jobs", {"state": "SUCCEEDED"}) == 3 and value("incl_jobs", {"state": "QUEUED"}) == 0


def exported(registry: CollectorRegistry) -> set[str]:
    """Every series name a scrape of `registry` can hold."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    return {family.name + s for family in registry.collect() for s in suffixes[family.type]}


def test_the_dashboard_asks_only_for_exported_metrics_and_shows_each() -> None:
    controller = ControllerMetrics()
    controller.watch(lambda: [], lambda: [], lambda: [])
    agent = DaemonMetrics()
    agent.registry.register(GpuUtilization(lambda: []))
    names = exported(controller.registry) | exported(agent.registry)
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    used = {m for expr in exprs for m in re.findall(r"\bincl_[a-z_]+", expr)}
    assert used and used <= names, used - names
    families = {n.removesuffix(s) for n in names for s in ("_total", "_bucket") if n.endswith(s)} | {
        n for n in names if not n.endswith(("_total", "_bucket", "_count", "_sum"))}
    shown = {f for f in families if any(u.startswith(f) for u in used)}
    assert shown == families, families - shown
    assert "incl-controller" in SCRAPE_CONFIG.read_text()
