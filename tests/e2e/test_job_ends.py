"""A job is over when its command exits, on the real stack: what it left behind is killed and named in its log."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import Cluster, pid_alive, wait_for

from incl.proto.messages import JobState, Stream


def daemon(pids: Path) -> str:
    """Shell that starts `sleep 1000` in a session of its own, waits until it has left the job's group, then
    writes its pid (written sooner, a test could stop the job while the daemon was still in its group, and it
    would die with it: no leftover to report, seen in CI)."""
    return ("setsid sleep 1000 & daemon=$!; "
            'until [ "$(cat /proc/$daemon/comm 2>/dev/null)" = sleep ]; do sleep 0.01; done; '
            f"echo $daemon > {pids}; ")


async def system_lines(cluster: Cluster, job_id: str) -> list[str]:
    return [line.data.decode() for b in await cluster.logs(job_id) for line in b.lines if line.stream == Stream.SYSTEM]


async def test_a_job_that_leaves_a_daemon_succeeds_and_the_daemon_is_killed(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_controller()
    cluster.start_agent("a1")
    pids = tmp_path / "pids"
    job = await cluster.submit(daemon(pids) + "echo started")
    done = await cluster.wait_done(job.id)
    sleeper = int(pids.read_text())
    assert done.state is JobState.SUCCEEDED, done
    assert not pid_alive(sleeper)
    assert f"incl: killed 1 leftover process: sleep (pid {sleeper})" in await system_lines(cluster, job.id)


async def test_cancel_ends_a_job_whose_daemon_left_its_group(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_controller()
    cluster.start_agent("a1")
    pids = tmp_path / "pids"
    job = await cluster.submit(daemon(pids) + "echo started; sleep 1000")
    await cluster.wait_state(job.id, {JobState.RUNNING})
    await wait_for(lambda: pids.exists() and pids.read_text().strip(), what="the daemon's pid")
    sleeper = int(pids.read_text())
    async with cluster.client() as c:
        await c.cancel(job.id)
    done = await cluster.wait_done(job.id)
    assert done.state is JobState.CANCELLED
    assert not pid_alive(sleeper)
    assert f"incl: killed 1 leftover process: sleep (pid {sleeper})" in await system_lines(cluster, job.id)


@pytest.mark.slow
@pytest.mark.docker
async def test_a_container_job_that_leaves_a_daemon_ends_with_its_command(
        cluster: Cluster, docker_engine: Any, busybox_image: str) -> None:
    """In a container the job ends when the container's init does, and every process in it goes with it."""
    cluster.start_controller()
    cluster.start_agent("a1", docker={"url": docker_engine.url, "poll_interval": 0.05})
    job = await cluster.submit("setsid sleep 1000 & (setsid sleep 1000 &); echo started", image=busybox_image)
    done = await cluster.wait_done(job.id)
    assert done.state is JobState.SUCCEEDED, done
    assert await cluster.log_lines(job.id) == [b"started"]
