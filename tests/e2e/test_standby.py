"""Two controllers: one leads, one stands by. The leader killed (-9) mid-burst is replaced within 5 s and no job
is lost or run twice; a leader paused past its lease (SIGSTOP) finds on waking that it lost it, and writes
nothing; only the leader takes writes (a standby answers reads: test_standby_reads.py)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CONTROLLER_CFG, Cluster, Daemon, wait_for

from incl.bus.connection import Bus
from incl.bus.kv import Bucket
from incl.bus.streams import ensure_buckets
from incl.controller import leader
from incl.proto import subjects
from incl.proto.codec import encode
from incl.proto.messages import Attempt, Job, JobState
from incl.proto.spec import load_spec

PY = sys.executable
LINES = 10


class Controllers:
    """Controllers with ids of their own around the cluster's NATS (the Cluster fixture runs one)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.running: dict[str, Daemon] = {}

    def start(self, controller_id: str, **overrides: Any) -> Daemon:
        cluster = self.cluster
        cfg = cluster._config(f"controller-{controller_id}", {
            **CONTROLLER_CFG, "nats_url": cluster.nats.url, "store_url": f"file://{cluster.tmp / 'store'}",
            "controller_id": controller_id, "metrics_port": None, **overrides})
        daemon = Daemon(controller_id, [PY, "-m", "incl.controller", "--config", str(cfg)],
                        cluster.tmp / f"controller-{controller_id}.log", cluster.env).start()
        self.running[controller_id] = daemon
        return daemon

    async def pair(self, bus: Bus, **overrides: Any) -> tuple[str, str]:
        """c1 and c2 running: (the one that leads, the one standing by)."""
        for cid in ("c1", "c2"):
            self.start(cid, **overrides)
        first = await wait_for(lambda: lease_holder(bus), what="a leader")
        return first, "c2" if first == "c1" else "c1"


@pytest.fixture
def controllers(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Controllers]:
    started = Controllers(cluster)
    yield started
    for daemon in started.running.values():
        if daemon.proc is not None and daemon.running:
            os.kill(daemon.proc.pid, signal.SIGCONT)  # a test that failed mid-pause
        daemon.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        for daemon in started.running.values():
            print(f"===== {daemon.name}\n{daemon.output()[-6000:]}")


async def lease_holder(bus: Bus) -> str | None:
    try:
        holder = await leader.holder(Bucket(await bus.jetstream.key_value(subjects.LEADER_BUCKET)))
    except Exception:  # noqa: BLE001 - not created yet
        return None
    return holder.controller_id if holder is not None else None


def job_script(ticks: Path) -> str:
    script = (
        "import os, time\n"
        f"f = open('{ticks}/' + os.environ['INCL_JOB_ID'], 'a', buffering=1)\n"
        "a = os.environ['INCL_ATTEMPT'] + ' ' + str(os.getpid())\n"
        f"for i in range({LINES}):\n"
        "    f.write(a + ' ' + repr(time.time()) + '\\n')\n"
        "    print('line', i, flush=True)\n"
        "    time.sleep(0.05)\n"
    )
    return f"{PY} -c \"{script}\""


async def check_ran_once(cluster: Cluster, job_ids: list[str], ticks: Path) -> None:
    async with cluster.client() as c:
        jobs = {j.id: j for j in await c.jobs()}
    for job_id in job_ids:
        job = jobs[job_id]
        assert job.state is JobState.SUCCEEDED, (job.id, job.state, job.reason)
        assert [a.state for a in job.attempts].count(JobState.SUCCEEDED) == 1
        final = job.attempts[-1].number
        assert await cluster.log_lines(job_id, attempt=final) == [f"line {i}".encode() for i in range(LINES)]
        spans: dict[str, list[float]] = {}
        for row in (ticks / job_id).read_text().splitlines():
            attempt, pid, ts = row.split()
            spans.setdefault(f"{attempt} {pid}", []).append(float(ts))
        assert len({k.split()[0] for k in spans}) == len(spans), f"{job_id}: an attempt ran twice: {list(spans)}"
        ordered = sorted((min(t), max(t), k) for k, t in spans.items())
        for (_, end, a), (start, _, b) in itertools.pairwise(ordered):
            assert end < start, f"{job_id}: {a} and {b} ran at the same time"


@pytest.mark.timeout(180)
async def test_the_standby_takes_over_within_5s_of_the_leader_killed_mid_burst(
        cluster: Cluster, controllers: Controllers, bus: Bus, tmp_path: Path) -> None:
    ticks = tmp_path / "ticks"
    ticks.mkdir()
    first, other = await controllers.pair(bus)
    for agent in ("a1", "a2"):
        cluster.start_agent(agent, cpus=4)
    await cluster.wait_agents(2)
    job_ids = [(await cluster.submit(job_script(ticks), name=f"burst{n}", resources={"cpus": 1},
                                     retry={"max_attempts": 10})).id for n in range(40)]

    async def some_running() -> bool:
        return sum(1 for _ in ticks.iterdir()) >= 8

    await wait_for(some_running, what="the burst to be under way")
    controllers.running[first].kill()
    killed = time.monotonic()

    async def taken_over() -> bool:
        if await lease_holder(bus) != other:
            return False
        async with cluster.client() as c:  # and it answers
            await c.jobs()
        return True

    await wait_for(taken_over, timeout=10, interval=0.02, what="the standby to lead")
    takeover = time.monotonic() - killed
    assert takeover <= 5.0, f"took over {takeover:.2f} s after the leader was killed"
    print(f"\ntakeover {takeover:.2f} s after kill -9 of the leader")

    for job_id in job_ids:
        await cluster.wait_done(job_id, timeout=60)
    await check_ran_once(cluster, job_ids, ticks)
    controllers.start(first)  # the old leader comes back as the standby
    members = await wait_for(lambda: _members(bus, 2), what="both controllers listed")
    assert [m.controller_id for m in members] == ["c1", "c2"]
    assert await lease_holder(bus) == other
    report = json.loads(cluster.cli("status", "--json").stdout)
    assert sorted((c["controller_id"], c["role"]) for c in report["controllers"]) == sorted(
        [(other, "leader"), (first, "standby")])


async def _members(bus: Bus, n: int) -> list[leader.Member] | None:
    found = await leader.members(Bucket(await bus.jetstream.key_value(subjects.LEADER_BUCKET)))
    return found if len(found) == n else None


@pytest.mark.timeout(120)
async def test_a_leader_paused_past_its_lease_writes_nothing_after_the_takeover(
        cluster: Cluster, controllers: Controllers, bus: Bus, tmp_path: Path) -> None:
    ticks = tmp_path / "ticks"
    ticks.mkdir()
    # While the leader is paused, agents' heartbeats go unanswered (not refused: its subscription lives on), so
    # their lease must outlast the takeover, as it does with the defaults (20 s; the tests' 4 s is too short).
    first, other = await controllers.pair(bus, agent_lost_after=10.0)
    cluster.start_agent("a1", cpus=4)
    await cluster.wait_agents(1)
    before = [(await cluster.submit(job_script(ticks), name=f"before{n}")).id for n in range(3)]
    for job_id in before:  # nothing in flight when it is paused: whatever it logs on waking, it did after
        await cluster.wait_done(job_id, timeout=60)
    paused = controllers.running[first]
    assert paused.proc is not None
    os.kill(paused.proc.pid, signal.SIGSTOP)
    try:
        await wait_for(lambda: _holds(bus, other), timeout=10, what="the standby to take the lease")
        during = [(await cluster.submit(job_script(ticks), name=f"during{n}")).id for n in range(3)]
        for job_id in during:
            await cluster.wait_done(job_id, timeout=60)
        lines_before_wake = len(paused.output().splitlines())
    finally:
        os.kill(paused.proc.pid, signal.SIGCONT)

    await wait_for(lambda: "leadership_lost" in paused.output(), timeout=10, what="the paused leader to step down")
    after = [(await cluster.submit(job_script(ticks), name=f"after{n}")).id for n in range(3)]
    for job_id in after:
        await cluster.wait_done(job_id, timeout=60)
    await check_ran_once(cluster, before + during + after, ticks)
    woke = paused.output().splitlines()[lines_before_wake:]
    acted = [line for line in woke if any(f'"event": "{e}"' in line for e in (
        "job_assigned", "job_state", "agent_registered", "agent_lost", "job_submitted", "assignment_resent"))]
    assert not acted, f"the deposed leader acted after waking: {acted[:3]}"
    assert await lease_holder(bus) == other
    members = await wait_for(lambda: _members(bus, 2), what="the old leader listed as a standby")
    assert {m.controller_id for m in members} == {"c1", "c2"}


async def _holds(bus: Bus, controller_id: str) -> bool:
    return await lease_holder(bus) == controller_id


@pytest.mark.timeout(90)
async def test_a_lone_leader_paused_past_its_lease_leads_again_on_waking(cluster: Cluster, controllers: Controllers,
                                                                         bus: Bus) -> None:
    """No standby: on waking it finds its lease run out, stands down, takes its own lease back and leads a new
    term, with the records read afresh (a second term in one process, as the chaos test's freezes cause)."""
    only = controllers.start("c1", agent_lost_after=10.0)
    assert await wait_for(lambda: lease_holder(bus), what="a leader") == "c1"
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    assert only.proc is not None
    os.kill(only.proc.pid, signal.SIGSTOP)
    await asyncio.sleep(3.0)  # the pause itself: past leader_ttl - leader_margin (2 s)
    os.kill(only.proc.pid, signal.SIGCONT)
    await wait_for(lambda: only.output().count('"leader_elected"') >= 2, timeout=15, what="a second term")
    assert "leadership_lost" in only.output()
    job = await cluster.submit("echo again")
    assert (await cluster.wait_done(job.id, timeout=30)).state is JobState.SUCCEEDED
    assert only.running


@pytest.mark.timeout(90)
async def test_a_leader_loading_a_store_longer_than_its_lease_keeps_it(cluster: Cluster, controllers: Controllers,
                                                                       bus: Bus) -> None:
    """The lease is renewed from the start of a term: reading thousands of records must not cost the lease (it
    would stand down after every load, for ever)."""
    kv = (await ensure_buckets(bus))[subjects.JOBS_BUCKET]
    spec, now = load_spec({"run": "true"}), time.time()
    old = Attempt(number=1, agent_id="gone", state=JobState.SUCCEEDED, assigned_at=now - 3, started_at=now - 2,
                  ended_at=now - 1, exit_code=0)
    await asyncio.gather(*(kv.put(f"j-old{k:05d}", encode(Job(
        id=f"j-old{k:05d}", spec=spec, user="t", state=JobState.SUCCEEDED, submitted_at=now - 4, updated_at=now - 1,
        attempts=[old], exit_code=0))) for k in range(1500)))
    times = {"leader_ttl": 0.5, "leader_renew": 0.1, "leader_poll": 0.05, "leader_margin": 0.1}
    only = controllers.start("c1", **times)
    started = time.monotonic()
    await cluster.wait_controller(timeout=60)
    loading = time.monotonic() - started
    assert loading > times["leader_ttl"], f"loaded in {loading:.2f} s: the store is too small to test this"
    cluster.start_agent("a1")
    job = await cluster.submit("echo still")
    assert (await cluster.wait_done(job.id, timeout=30)).state is JobState.SUCCEEDED
    assert "leadership_lost" not in only.output()
