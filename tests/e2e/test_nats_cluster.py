"""Issue 16's NATS cluster: a controller (replicas: 3) and three agents on a real 3-node cluster, a burst of 300
jobs of 50 numbered lines and 20 metric points each, and kill -9 of the node the controller is connected to in the
middle of it, restarted later. Every job ends exactly once with every line and point, and the daemons reconnect by
themselves. Prints the figures in docs/reliability.md (reconnect time, jobs/s around the kill). Marked slow."""

from __future__ import annotations

import itertools
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import Cluster, wait_for
from natscluster import NatsCluster, Node

from incl.bus.client import Client
from incl.proto.messages import TERMINAL, Job, JobState
from incl.proto.spec import load_spec

JOBS, LINES, POINTS = 300, 50, 20
AGENTS = ("a1", "a2", "a3")
DAEMONS = ("incl-controller-", *(f"incl-agent-{a}" for a in AGENTS))
WINDOW = 5.0  # seconds of job ends counted before and after the kill
# A message the dying node was delivering is lost in flight and redelivered after its consumer's ack wait (by
# default 60 s for assignments, 30 s for events; docs/reliability.md): shrunk here, as every test shrinks timeouts.
ACK_WAIT = 5.0


def job_script() -> str:
    script = (
        "import incl\n"
        f"for i in range({LINES}):\n"
        "    print('line', i, flush=True)\n"
        f"    if i < {POINTS}:\n"
        "        incl.log({'i': i}, step=i)\n"
    )
    return f"{sys.executable} -c \"{script}\""


@pytest.fixture
async def on_three_nodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    monkeypatch.setenv("INCL_HOME", str(tmp_path / "home"))
    with NatsCluster(tmp_path) as nodes:
        await nodes.wait_ready()
        cluster = Cluster(tmp_path, nodes)  # type: ignore[arg-type]  # the nodes stand in for one server
        yield cluster
        cluster.close()
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            print(cluster.dump())


def reconnected(nodes: NatsCluster) -> bool:
    """Every daemon is connected to a running node."""
    names = [n for node in nodes.nodes if node.running for n in node.connection_names()]
    return all(any(n.startswith(daemon) for n in names) for daemon in DAEMONS)


async def ended(client: Client, job_ids: set[str]) -> dict[str, Job]:
    return {j.id: j for j in await client.jobs() if j.id in job_ids and j.state in TERMINAL}


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_300_jobs_through_the_kill_of_a_nats_node_end_once_with_every_line(on_three_nodes: Cluster) -> None:
    cluster = on_three_nodes
    nodes: NatsCluster = cluster.nats  # type: ignore[assignment]
    # the list form; the agents get a comma-separated string
    cluster.start_controller(nats_url=nodes.urls, replicas=3, events_ack_wait=ACK_WAIT)
    for agent in AGENTS:
        cluster.start_agent(agent, assign_ack_wait=ACK_WAIT)
    await cluster.wait_agents(len(AGENTS))
    spec = load_spec({"run": job_script(), "resources": {"cpus": 1}, "retry": {"max_attempts": 10}})
    started = time.time()
    async with cluster.client() as client:
        job_ids = {(await client.submit(spec, user="tester")).id for _ in range(JOBS)}

    async def some_ended(count: int) -> bool:
        async with cluster.client() as client:
            return len(await ended(client, job_ids)) >= count

    await wait_for(lambda: some_ended(JOBS // 4), 120, f"{JOBS // 4} jobs to end", interval=0.2)
    victim: Node = await wait_for(lambda: nodes.holding("incl-controller-"), 10, "the controller's node")
    killed_at = time.time()
    victim.kill()
    await wait_for(lambda: reconnected(nodes), 30, "every daemon to reconnect to another node", interval=0.05)
    reconnect_s = time.time() - killed_at
    await wait_for(lambda: some_ended(JOBS // 2), 120, f"{JOBS // 2} jobs to end", interval=0.2)
    victim.start()
    restarted_at = time.time()
    await wait_for(lambda: some_ended(JOBS), 180, "every job to end", interval=0.5)
    await nodes.wait_ready()

    async with cluster.client() as client:
        jobs = await ended(client, job_ids)
        for job_id in job_ids:
            job = jobs[job_id]
            assert job.state is JobState.SUCCEEDED, (job_id, job.state, job.reason)
            assert [a.state for a in job.attempts].count(JobState.SUCCEEDED) == 1, (job_id, job.attempts)
            final = job.attempts[-1].number
            batches = [b async for b in client.log_batches(job_id, follow=False) if b.attempt == final]
            lines = [line.data for b in batches for line in b.lines if line.stream != 3]
            assert lines == [f"line {i}".encode() for i in range(LINES)], (job_id, final, lines)
            steps = [p.step for b in [b async for b in client.metric_batches(job_id)] if b.attempt == final
                     for p in b.points]
            assert steps == list(range(POINTS)), (job_id, final, steps)
    for daemon in [cluster.controller, *cluster.agents.values()]:
        assert daemon is not None and daemon.running, f"{daemon.name if daemon else '?'} exited"
    assert reconnected(nodes)

    ends = sorted(a.ended_at or 0.0 for j in jobs.values() for a in j.attempts if a.state is JobState.SUCCEEDED)
    before = sum(killed_at - WINDOW <= t < killed_at for t in ends) / WINDOW
    after = sum(killed_at <= t < killed_at + WINDOW for t in ends) / WINDOW
    gaps = [b - a for a, b in itertools.pairwise(ends) if a >= killed_at - WINDOW]
    attempts = sum(len(j.attempts) for j in jobs.values())
    print(f"\nnats cluster: {JOBS} jobs, {attempts} attempts; the controller's node {victim.name} killed "
          f"{killed_at - started:.1f}s after the first submit, restarted {restarted_at - killed_at:.1f}s later; "
          f"daemons reconnected in {reconnect_s:.2f}s; jobs/s {before:.1f} in the {WINDOW:g}s before the kill, "
          f"{after:.1f} in the {WINDOW:g}s after; longest gap between job ends around it "
          f"{max(gaps, default=0.0):.2f}s (median {statistics.median(gaps) if gaps else 0.0:.3f}s); "
          f"all ended {ends[-1] - started:.1f}s after the first submit ({JOBS / (ends[-1] - started):.1f} jobs/s)")
