"""Faults injected for real (kill -9 of an agent, the controller, the NATS server): nothing lost, nothing twice."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from conftest import Cluster, pid_alive, wait_for

from incl.proto.messages import JobState

PY = sys.executable


def counting_job(runs: Path, lines: int, every: float) -> str:
    """A job that records each run of itself, prints numbered lines slowly, and logs a metric per line."""
    script = (
        "import incl, os, time, pathlib\n"
        f"p = pathlib.Path('{runs}') / os.environ['INCL_JOB_ID']\n"
        "with open(p, 'a') as f: f.write(os.environ['INCL_ATTEMPT'] + ' ' + str(os.getpid()) + '\\n')\n"
        f"for i in range({lines}):\n"
        "    print('line', i, flush=True)\n"
        "    incl.log({'i': i}, step=i)\n"
        f"    time.sleep({every})\n"
    )
    return f"{PY} -c \"{script}\""


async def assert_complete(cluster: Cluster, job_id: str, lines: int, attempt: int = 1) -> None:
    got = await cluster.log_lines(job_id, attempt=attempt)
    assert got == [f"line {i}".encode() for i in range(lines)], f"{len(got)} lines"
    steps = [p.step for p in await cluster.metric_points(job_id)]
    assert steps[-lines:] == list(range(lines))


async def test_agent_killed_mid_job_is_lost_requeued_and_never_runs_twice(cluster: Cluster, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    cluster.start_controller()
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    job = await cluster.submit(counting_job(runs, 40, 0.05))
    await cluster.wait_state(job.id, {JobState.RUNNING})
    await wait_for((runs / job.id).exists, what="first attempt to start")
    first_pid = int((runs / job.id).read_text().split()[1])
    cluster.agents["a1"].kill()
    # The job must not outlive its agent: otherwise a second copy would run beside it.
    await wait_for(lambda: not pid_alive(first_pid), timeout=5, what="the orphaned job to die")
    cluster.start_agent("a2")
    done = await cluster.wait_done(job.id, timeout=40)
    assert done.state is JobState.SUCCEEDED, done
    assert [(a.number, a.agent_id, a.state) for a in done.attempts] == [
        (1, "a1", JobState.LOST), (2, "a2", JobState.SUCCEEDED)]
    assert [line.split()[0] for line in (runs / job.id).read_text().splitlines()] == ["1", "2"]
    await assert_complete(cluster, job.id, 40, attempt=2)


async def test_controller_killed_while_jobs_run_and_while_assigning(cluster: Cluster, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    cluster.start_controller()
    cluster.start_agent("a1", cpus=64)
    cluster.start_agent("a2", cpus=64)
    await cluster.wait_agents(2)
    running = [await cluster.submit(counting_job(runs, 30, 0.05)) for _ in range(3)]
    for job in running:
        await cluster.wait_state(job.id, {JobState.RUNNING})
    cluster.controller.kill()  # jobs keep running on the agents; their events wait in JetStream
    await asyncio.sleep(0.5)
    cluster.start_controller()
    # A burst of submissions, and a kill while they are being assigned.
    burst = [await cluster.submit(counting_job(runs, 5, 0.01)) for _ in range(12)]
    cluster.controller.kill()
    cluster.start_controller()
    for job in running + burst:
        done = await cluster.wait_done(job.id, timeout=60)
        assert done.state is JobState.SUCCEEDED, done
        assert len(done.attempts) == 1, done.attempts
        assert (runs / job.id).read_text().count("\n") == 1, f"{job.id} ran more than once"
    for job in running:
        await assert_complete(cluster, job.id, 30)
    for job in burst:
        await assert_complete(cluster, job.id, 5)


async def test_nats_killed_and_restarted_on_the_same_store_mid_job(cluster: Cluster, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    cluster.start_controller()
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    job = await cluster.submit(counting_job(runs, 60, 0.05))
    await cluster.wait_state(job.id, {JobState.RUNNING})
    await asyncio.sleep(0.5)
    cluster.nats.kill()
    await asyncio.sleep(1.0)
    cluster.nats.start()
    done = await cluster.wait_done(job.id, timeout=60)
    assert done.state is JobState.SUCCEEDED, done
    assert len(done.attempts) == 1
    assert (runs / job.id).read_text().count("\n") == 1
    await assert_complete(cluster, job.id, 60)
