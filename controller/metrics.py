"""The controller's Prometheus metrics: what it observes as jobs change and agents beat, and what a scrape reads.

Observed as it happens (cheap: one histogram observation, no label lookup):
    queue wait        QUEUED -> ASSIGNED, each attempt      `job_changed`, a listener of every job change
    dispatch latency  ASSIGNED -> RUNNING, each attempt     `job_changed`
    heartbeat lag     how much later than it was asked for an agent's heartbeat arrived   `beat`
Read at scrape time (nothing to keep up to date, no series left behind by a forgotten agent):
    jobs and agents by state, GPU utilization per agent and GPU, and the store's bytes per stream (`refresh`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from incl.bus import health
from incl.bus.connection import Bus
from incl.bus.metrics import DaemonMetrics, GpuUtilization
from incl.proto.messages import AgentState, Job, JobState
from incl.proto.telemetry import GpuTelemetry

QUEUE_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600)
DISPATCH_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
FORGET_AFTER = 3600.0  # an agent not heard from for this long past its due time: its next report is not a lag
PRUNE_MIN = 1024


class ByState:
    """A gauge per state, counted at scrape time from `states` (every state shown, 0 included)."""

    def __init__(self, name: str, doc: str, all_states: Iterable[str], states: Callable[[], Iterable[str]]) -> None:
        self._name, self._doc, self._all, self._states = name, doc, list(all_states), states

    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(self._name, self._doc, labels=["state"])

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self._name, self._doc, labels=["state"])
        counts = Counter(self._states())
        for state in self._all:
            family.add_metric([state], counts.get(state, 0))
        yield family


class ControllerMetrics(DaemonMetrics):
    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self._queue_wait = Histogram("incl_queue_wait_seconds", "From queued (submitted, or requeued) to assigned to "
                                     "an agent, per attempt", buckets=QUEUE_WAIT_BUCKETS, registry=r)
        self._dispatch = Histogram("incl_dispatch_latency_seconds", "From assigned to running (the agent's report "
                                   "applied), per attempt", buckets=DISPATCH_BUCKETS, registry=r)
        self._lag = Histogram("incl_heartbeat_lag_seconds", "How much later than its interval an agent's heartbeat "
                              "arrived (0 when on time or early)", buckets=LAG_BUCKETS, registry=r)
        self._store = Gauge("incl_store_bytes", "Bytes JetStream holds in each of INCL's streams and buckets "
                            "(one replica's worth)", ["stream"], registry=r)
        self._due: dict[str, float] = {}  # agent id -> when its next heartbeat is due
        self._prune_at = PRUNE_MIN
        self._watched: list[Collector] = []  # this term's scrape-time readers

    def watch(self, job_states: Callable[[], Iterable[str]], agent_states: Callable[[], Iterable[str]],
              gpu_readings: Callable[[], Iterable[tuple[str, GpuTelemetry | None]]]) -> None:
        """Read these at scrape time: the state of every job and agent, and the live agents' GPU readings. Each
        term as the leader reads its own records: a new term's readers replace the last one's."""
        for old in self._watched:
            self.registry.unregister(old)
        self._watched = [ByState("incl_jobs", "Jobs by state", [s.value for s in JobState], job_states),
                         ByState("incl_agents", "Agents by state", [s.value for s in AgentState], agent_states),
                         GpuUtilization(gpu_readings)]
        for collector in self._watched:
            self.registry.register(collector)

    def job_changed(self, before: Job | None, after: Job) -> None:
        """A listener of every job change (`incl.controller.jobs.JobChanges`)."""
        cur = after.current
        if before is None or cur is None or after.state is before.state:
            return
        if after.state is JobState.ASSIGNED and before.state is JobState.QUEUED:
            self._queue_wait.observe(max(0.0, cur.assigned_at - before.updated_at))
        elif after.state is JobState.RUNNING:
            self._dispatch.observe(max(0.0, after.updated_at - cur.assigned_at))

    def beat(self, agent_id: str, now: float, interval: float) -> None:
        """An agent reported (registered or heartbeat) at `now` and was told to report again in `interval`."""
        due = self._due.get(agent_id)
        if due is not None:
            self._lag.observe(max(0.0, now - due))
        self._due[agent_id] = now + interval
        if len(self._due) > self._prune_at:  # agents come and go for months: forget the long silent
            self._due = {a: d for a, d in self._due.items() if d > now - FORGET_AFTER}
            self._prune_at = max(PRUNE_MIN, 2 * len(self._due))

    async def refresh(self, bus: Bus) -> None:
        """Before a scrape: the streams' bytes, from JetStream."""
        for stream in await health.streams(bus):
            self._store.labels(stream.name).set(stream.bytes)
