"""A job that prints a secret's value: the value appears nowhere a user can read the job's output."""

from __future__ import annotations

import hashlib
import stat
import sys

from conftest import Cluster, wait_for

from incl.bus.connection import Bus
from incl.proto import subjects
from incl.proto.messages import TERMINAL, Job, JobState
from incl.proto.spec import load_spec

SECRET = "tok-5f3a9c1e"


async def test_a_printed_secret_is_redacted_in_logs_tail_and_cli(cluster: Cluster) -> None:
    cluster.start_controller()
    cluster.start_agent("a1")
    job = await cluster.submit('echo "key is $API_KEY"; echo "$API_KEY" >&2; exit 3', secrets={"API_KEY": SECRET})
    done = await cluster.wait_done(job.id)
    assert done.state is JobState.FAILED
    assert await cluster.log_lines(job.id) == [b"key is <secret:API_KEY>", b"<secret:API_KEY>"] or \
        sorted(await cluster.log_lines(job.id)) == [b"<secret:API_KEY>", b"key is <secret:API_KEY>"]
    assert "key is <secret:API_KEY>" in done.current.tail
    for args in (["logs", job.id], ["show", job.id], ["show", job.id, "--json"]):
        out = cluster.cli(*args)
        assert out.returncode == 0, out.stderr
        assert SECRET not in out.stdout + out.stderr and "<secret:API_KEY>" in out.stdout, (args, out.stdout)


async def test_a_secret_reaches_the_job_and_nowhere_else_in_clear(cluster: Cluster, bus: Bus) -> None:
    """The job sees its value in its env; the jobs bucket, the assignment as it crossed the bus and assign.msgpack
    on the agent's disk hold no clear value, and the line printing it is redacted."""
    cluster.start_controller()
    cluster.start_agent("a1")
    crossed: list[bytes] = []

    async def overhear(subject: str, data: bytes) -> None:  # the assignment as published, before the stream
        crossed.append(data)

    stop = await bus.serve(subjects.assign("a1"), "overhear", overhear)
    try:
        digest = hashlib.sha256(SECRET.encode()).hexdigest()  # the command itself must not hold the value
        job = await cluster.submit(f'[ "$(printf %s "$API_KEY" | sha256sum | cut -c1-64)" = {digest} ] || exit 3; '
                                   'echo "got $API_KEY"; while [ ! -e go ]; do sleep 0.05; done',
                                   secrets={"API_KEY": SECRET})
        await cluster.wait_state(job.id, {JobState.RUNNING})
        attempt = cluster.tmp / "agents" / "a1" / "jobs" / job.id / "attempt-1"
        stored = (attempt / "assign.msgpack").read_bytes()
        assert stat.S_IMODE((attempt / "assign.msgpack").stat().st_mode) == 0o600
        assert SECRET.encode() not in stored and b"API_KEY" in stored
        (attempt / "code" / "go").touch()
        done = await cluster.wait_done(job.id)
        assert done.state is JobState.SUCCEEDED, done.reason  # exit 3 had the env not held the value
        assert await cluster.log_lines(job.id) == [b"got <secret:API_KEY>"]
        assert len(crossed) == 1 and SECRET.encode() not in crossed[0] and b"API_KEY" in crossed[0]
        entry = await (await bus.bucket(subjects.JOBS_BUCKET)).get(job.id)
        assert entry is not None and SECRET.encode() not in entry[0] and b"API_KEY" in entry[0]
    finally:
        await stop()


async def test_a_studys_secret_is_locked_in_its_record_and_reaches_each_trial(cluster: Cluster, bus: Bus) -> None:
    """A study keeps its spec's secret values encrypted in the studies bucket, as a job does; each trial's job is
    given them (and locks them in its own record)."""
    cluster.start_controller()
    cluster.start_agent("a1")
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    trial = (f'[ "$(printf %s "$API_KEY" | sha256sum | cut -c1-64)" = {digest} ] || exit 3; '
             f'{sys.executable} -c "import incl; incl.log({{\'loss\': float($X)}})"')
    await cluster.wait_controller()
    async with cluster.client() as c:
        study = await c.submit_study(load_spec({
            "run": trial, "secrets": {"API_KEY": SECRET},
            "hpo": {"metric": "loss", "trials": 2, "parallel": 2, "sampler": "random", "seed": 1,
                    "params": {"X": {"type": "float", "low": 0.0, "high": 1.0}}}}), user="tester")
    entry = await (await bus.bucket(subjects.STUDIES_BUCKET)).get(study.id)
    assert entry is not None and SECRET.encode() not in entry[0] and b"API_KEY" in entry[0]

    async def trials_done() -> list[Job] | None:
        async with cluster.client() as c:
            jobs = await c.jobs(study=study.id)
        return jobs if len(jobs) == 2 and all(j.state in TERMINAL for j in jobs) else None

    jobs = await wait_for(trials_done, 60, "both trials to end")
    assert {j.state for j in jobs} == {JobState.SUCCEEDED}, [j.reason for j in jobs]  # exit 3 without the value
