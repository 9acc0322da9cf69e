"""A job that prints a secret's value: the value appears nowhere a user can read the job's output."""

from __future__ import annotations

import hashlib
import stat

from conftest import Cluster

from incl.bus.connection import Bus
from incl.proto import subjects
from incl.proto.messages import JobState

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
