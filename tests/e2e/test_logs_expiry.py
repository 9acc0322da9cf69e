"""`incl logs` of a job whose lines the logs stream no longer holds says they expired (and how long the cluster
keeps logs), never a silent empty output; a job that printed nothing, or never ran, gets no such note."""

from __future__ import annotations

from conftest import Cluster

from incl.bus.connection import Bus
from incl.proto import subjects
from incl.proto.messages import JobState


async def test_logs_past_the_streams_retention_are_said_to_have_expired(cluster: Cluster, bus: Bus) -> None:
    cluster.start_controller()
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    old = await cluster.submit("echo one; echo two")
    assert (await cluster.wait_done(old.id)).state is JobState.SUCCEEDED
    boundary = (await bus.state(subjects.LOGS_STREAM)).last_seq
    new = await cluster.submit("echo three")
    quiet = await cluster.submit("true")
    assert (await cluster.wait_done(new.id)).state is JobState.SUCCEEDED
    assert (await cluster.wait_done(quiet.id)).state is JobState.SUCCEEDED
    # What a stream's age or size limit does: its oldest messages go, front first.
    await bus.jetstream.purge_stream(subjects.LOGS_STREAM, seq=boundary + 1)

    expired = cluster.cli("logs", old.id)
    assert expired.returncode == 0, expired.stderr
    assert expired.stdout == ""
    assert f"the logs of {old.id} expired: the cluster keeps them for 30 days and up to 8 GiB" in expired.stderr

    kept = cluster.cli("logs", new.id)
    assert kept.stdout == "three\n" and "expired" not in kept.stderr
    nothing = cluster.cli("logs", quiet.id, "--stream", "stdout")  # it printed nothing: nothing to explain
    assert nothing.stdout == "" and "expired" not in nothing.stderr
