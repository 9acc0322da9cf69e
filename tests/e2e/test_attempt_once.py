"""An attempt runs at most once, even across agent processes.

An agent acks an assignment once it has started it. If that ack is lost (NATS dies just then) and the agent is
then killed -9 before the controller heard the attempt start, the controller still sees it ASSIGNED, and the
agent's durable queue delivers the same assignment again to the next agent process. That process must not run
it a second time: the command died with the first process, and a second run would reuse the attempt's log and
metric message ids (its output mixed with the first run's, lines lost). It reports the attempt lost instead,
so the job goes on as a new attempt.

The controller here is a fake served from the test (it answers the agent's three requests and always says the
assignment is current), so the redelivery is exact, not left to a race.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from conftest import AGENT_CFG, Cluster, Daemon, wait_for

from incl.bus.connection import Bus
from incl.bus.streams import StreamLimits, ensure_buckets, ensure_streams
from incl.proto import subjects
from incl.proto.codec import Decoder, encode
from incl.proto.messages import (
    AgentEvent,
    Assign,
    AssignmentReply,
    HeartbeatReply,
    JobExited,
    Lease,
    RegisterReply,
)
from incl.proto.spec import load_spec


async def fake_controller(bus: Bus, store: Path) -> None:
    lease = Lease(duration=30.0, grace=1.0)
    replies = {
        subjects.REGISTER: encode(RegisterReply(heartbeat_interval=0.2, store_url=f"file://{store}", lease=lease)),
        subjects.HEARTBEAT: encode(HeartbeatReply(heartbeat_interval=0.2, lease=lease)),
        subjects.ASSIGNMENT: encode(AssignmentReply(current=True)),
    }
    for subject, reply in replies.items():
        async def answer(_subject: str, _data: bytes, reply: bytes = reply) -> bytes:
            return reply
        await bus.serve(f"{subjects.API_PREFIX}.{subjects.AGENT}.*.{subject}", "fake-controller", answer)


async def stale_pull_gone(restarted: Daemon) -> None:
    """Until the next agent process is up and the killed one's last pull request has expired: a copy published
    sooner may be handed to that dead request, and it waits out the ack wait (60 s) before anyone else gets it
    (seen in CI). The request lives `assign_fetch_timeout` at most."""
    await wait_for(lambda: "agent_registered" in restarted.output(), what="the next agent process")
    await asyncio.sleep(AGENT_CFG["assign_fetch_timeout"] + 0.5)


async def events(bus: Bus, agent_id: str) -> list[AgentEvent]:
    """The agent's events so far (the events stream is a work queue: read as the controller would)."""
    decoder: Decoder[AgentEvent] = Decoder(AgentEvent)  # type: ignore[arg-type]
    sub = await bus.pull(subjects.EVENTS_STREAM, subjects.events(agent_id), subjects.EVENTS_CONSUMER, ack_wait=60)
    return [decoder.decode(m.data) for m in await sub.fetch(100, timeout=0.5)]


async def test_a_redelivered_assignment_of_an_attempt_a_killed_process_started_is_not_run_again(
        cluster: Cluster, bus: Bus, tmp_path: Path) -> None:
    await ensure_streams(bus, StreamLimits())
    await ensure_buckets(bus)
    await fake_controller(bus, tmp_path / "store")
    runs = tmp_path / "runs"
    script = f"import os, time; open('{runs}', 'a').write(str(os.getpid()) + '\\n'); time.sleep(60)"
    assign = Assign(job_id="j-once0001", attempt=1, spec=load_spec({"run": f'{sys.executable} -c "{script}"'}))
    agent = cluster.start_agent("a1")
    await bus.publish_durable(subjects.assign("a1"), encode(assign))
    await wait_for(lambda: runs.exists() and runs.read_text(), what="the attempt to start")

    agent.kill()  # its job dies with it; the assignment was acked, so the copy below stands for a lost ack
    restarted = cluster.start_agent("a1")
    await stale_pull_gone(restarted)
    await bus.publish_durable(subjects.assign("a1"), encode(assign))

    seen: list[AgentEvent] = []

    async def reported_lost() -> JobExited | None:
        seen.extend(await events(bus, "a1"))
        return next((e for e in seen if isinstance(e, JobExited)), None)

    exited = await wait_for(reported_lost, timeout=30, what="the attempt to be reported lost")
    assert exited.fenced, exited
    assert (exited.job_id, exited.attempt) == ("j-once0001", 1)
    assert "never runs twice" in (exited.reason or "")
    assert len(runs.read_text().split()) == 1, "the attempt ran a second time"
    assert "attempt_not_rerun" in cluster.agents["a1"].output()


async def test_a_copy_of_an_assignment_that_ended_and_was_cleaned_up_is_not_run_by_the_next_process(
        cluster: Cluster, bus: Bus, tmp_path: Path) -> None:
    """The attempt ran to its end here and its folder (with assign.msgpack) is gone; the agent is then killed
    and a copy of the assignment reaches the next process (the controller had not yet heard the attempt end, so
    it still says current): the "started here" mark that outlives the folder keeps it from running again (seen
    in the chaos test: one attempt, two processes)."""
    await ensure_streams(bus, StreamLimits())
    await ensure_buckets(bus)
    await fake_controller(bus, tmp_path / "store")
    runs = tmp_path / "runs"
    script = f"import os; open('{runs}', 'a').write(str(os.getpid()) + '\\n')"
    assign = Assign(job_id="j-once0002", attempt=1, spec=load_spec({"run": f'{sys.executable} -c "{script}"'}))
    agent = cluster.start_agent("a1")
    await bus.publish_durable(subjects.assign("a1"), encode(assign))
    seen: list[AgentEvent] = []

    async def exits() -> list[JobExited] | None:
        seen.extend(await events(bus, "a1"))
        ended = [e for e in seen if isinstance(e, JobExited)]
        return ended or None

    first = await wait_for(exits, timeout=30, what="the attempt to end")
    assert not first[0].fenced and first[0].exit_code == 0, first
    work = cluster.tmp / "agents" / "a1"
    await wait_for(lambda: not (work / "jobs" / "j-once0002").exists(), what="the attempt's folder to go")

    agent.kill()
    restarted = cluster.start_agent("a1")
    await stale_pull_gone(restarted)
    await bus.publish_durable(subjects.assign("a1"), encode(assign))

    # Its report of the copy carries the attempt's exit message id: the events stream keeps the real exit only.
    await wait_for(lambda: "attempt_not_rerun" in cluster.agents["a1"].output(), timeout=90,
                   what="the copy to be refused")
    assert len(runs.read_text().split()) == 1, "the attempt ran a second time"


async def test_an_assignment_whose_delivery_was_lost_is_sent_again_long_before_the_ack_wait(
        cluster: Cluster, bus: Bus, tmp_path: Path) -> None:
    """A NATS node that dies with a delivery in flight: the queue holds the assignment as delivered and hands it
    out again only after the agent's ack wait (60 s). The controller's re-send is a copy with a message id of its
    own, so the stream stores it and the agent gets it at once (and would drop it, had the first come through)."""
    cluster.start_controller()
    agent = cluster.start_agent("a1")
    await cluster.wait_agents(1)
    agent.kill()
    job = await cluster.submit("echo ran")
    sub = await bus.pull(subjects.ASSIGN_STREAM, subjects.assign("a1"), subjects.assign_consumer("a1"), ack_wait=60)

    async def taken() -> bool:  # delivered, never acked: what a delivery lost on its way looks like
        return bool(await sub.fetch(1, timeout=0.5))

    await wait_for(taken, timeout=20, what="the assignment to be delivered")
    cluster.start_agent("a1")
    done = await cluster.wait_done(job.id, timeout=30)
    assert done.state.value == "SUCCEEDED", done
    assert done.current is not None and done.current.number == 1  # the same attempt, not one handed on
    assert await cluster.log_lines(job.id) == [b"ran"]
