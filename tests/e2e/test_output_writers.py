"""Who may write a job's output, against a real nats-server configured as INCL renders it (issue 15): an agent's
credentials write only under its own id, which the server enforces; and readers keep only the batches of the agents
the controller assigned the attempt, so a batch an agent writes under its own id on a job not its own is never read.
No daemons: the records are made here, as a reader receives them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import structlog.testing
from authstack import AuthNats, make_identities

from incl.bus.client import Client
from incl.bus.connection import Bus, connect
from incl.bus.streams import StreamLimits, ensure_streams
from incl.proto import subjects
from incl.proto.codec import encode
from incl.proto.errors import NotAllowed
from incl.proto.messages import (
    Attempt,
    Job,
    JobState,
    LogBatch,
    LogLine,
    MetricBatch,
    MetricPoint,
    MetricSummary,
    Node,
)
from incl.proto.spec import load_spec

LOGS, METRICS = subjects.LOGS_STREAM, subjects.METRICS_STREAM


@pytest.fixture
def auth_nats(tmp_path: Path) -> Iterator[AuthNats]:
    home = tmp_path / "home"
    make_identities(home)  # users alice (admin) and bob (team nlp), agents a1 and a2
    server = AuthNats(home, tmp_path).start()
    yield server
    server.kill()


async def dial(server: AuthNats, kind: str, name: str) -> Bus:
    return await connect(server.url, "test", connect_timeout=2, reconnect_wait=0.1, request_timeout=5,
                         max_reconnect_attempts=0, quiet=True, creds=server.creds(kind, name))


@pytest.fixture
async def controller_bus(auth_nats: AuthNats) -> AsyncIterator[Bus]:
    async with await dial(auth_nats, "controller", "controller") as bus:
        await ensure_streams(bus, StreamLimits())
        yield bus


def job(job_id: str, *agents: str, new: bool = True) -> Job:
    """Bob's finished job of team nlp, its one attempt on `agents` (several: a gang, rank k on agents[k]);
    `new`: an attempt whose agents write subjects with their id (False: one from before)."""
    nodes = [Node(rank=k, agent_id=a, state=JobState.SUCCEEDED) for k, a in enumerate(agents)] if len(agents) > 1 \
        else []
    attempt = Attempt(number=1, agent_id=agents[0], state=JobState.SUCCEEDED, assigned_at=1.0, output_key="k" * 24,
                      nodes=nodes, agent_subjects=new)
    return Job(id=job_id, spec=load_spec({"run": "true", "team": "nlp"}), user="bob", state=JobState.SUCCEEDED,
               submitted_at=1.0, updated_at=1.0, attempts=[attempt])


def log_batch(j: Job, text: str, seq: int = 0, rank: int = 0) -> bytes:
    return encode(LogBatch(job_id=j.id, attempt=1, seq=seq, lines=[LogLine(stream=1, data=text.encode(), ts=1.0)],
                           rank=rank))


def metric_batch(j: Job, loss: float, seq: int = 0) -> bytes:
    return encode(MetricBatch(job_id=j.id, attempt=1, seq=seq,
                              points=[MetricPoint(ts=1.0, values={"loss": loss}, step=seq)]))


def out(stream: str, j: Job, agent: str) -> str:
    return subjects.output(stream, j, j.attempts[0].output_key, agent)


async def lines(client: Client, j: Job) -> list[bytes]:
    return [line.data async for b in client.log_batches(j, follow=False) for line in b.lines]


async def losses(client: Client, j: Job) -> list[float]:
    return [p.values["loss"] async for b in client.metric_batches(j) for p in b.points]


async def test_an_agents_credentials_cannot_write_a_batch_under_another_agents_name(auth_nats: AuthNats,
                                                                                    controller_bus: Bus) -> None:
    """a2 knows everything about a1's job (owner, team, id, key) and writes under a1's id: the server refuses it, as
    a permissions violation, for logs and metrics alike; nor may a2 read the last batch of a1's subjects, or write
    the subjects without an agent token that agents wrote before."""
    j = job("j-1", "a1")
    async with await dial(auth_nats, "agent", "a1") as a1:
        await a1.publish_durable(out(LOGS, j, "a1"), log_batch(j, "real"))
        await a1.publish_durable(out(METRICS, j, "a1"), metric_batch(j, 1.0))
        assert await a1.last(LOGS, out(LOGS, j, "a1")) is not None  # its own last batch: where it resumes
    async with await dial(auth_nats, "agent", "a2") as a2:
        for stream, data in ((LOGS, log_batch(j, "forged", seq=1)), (METRICS, metric_batch(j, -100.0, seq=1))):
            for subject in (out(stream, j, "a1"), subjects.legacy_output(stream, j, j.attempts[0].output_key)):
                with pytest.raises(NotAllowed, match="refused"):
                    await a2.refusable(subject, a2.publish_durable(subject, data, timeout=2))
                assert f'permissions violation for publish to "{subject}"' in a2.refused
            with pytest.raises(NotAllowed, match="refused"):
                await a2.last(stream, out(stream, j, "a1"))
    async with Client(auth_nats.url, creds=auth_nats.creds("user", "bob")) as bob:
        assert await lines(bob, j) == [b"real"]
        assert await losses(bob, j) == [1.0]


async def test_a_batch_an_agent_writes_under_its_own_id_on_a_job_not_its_own_is_never_read(
        auth_nats: AuthNats, controller_bus: Bus) -> None:
    """The server accepts a2's batch on a1's job under a2's own id (it may write its own subjects), but no reader
    keeps it: the logs, the metrics, a metric summary, and a read from a stream sequence on (the web's charts)."""
    j = job("j-2", "a1")
    async with await dial(auth_nats, "agent", "a1") as a1:
        await a1.publish_durable(out(LOGS, j, "a1"), log_batch(j, "real"))
        await a1.publish_durable(out(METRICS, j, "a1"), metric_batch(j, 1.0))
        await a1.publish_durable(out(METRICS, j, "a1"), encode(MetricSummary(job_id=j.id, attempt=1, batches=1,
                                                                             series=[])))
    async with await dial(auth_nats, "agent", "a2") as a2:
        await a2.publish_durable(out(LOGS, j, "a2"), log_batch(j, "forged", seq=1))  # accepted: its own subject
        await a2.publish_durable(out(LOGS, j, "a2"), log_batch(j, "forged again", seq=2))
        await a2.publish_durable(out(METRICS, j, "a2"), metric_batch(j, -100.0, seq=1))
        await a2.publish_durable(out(METRICS, j, "a2"), encode(MetricSummary(job_id=j.id, attempt=1, batches=7,
                                                                             series=[])))
    for reader in ("bob", "alice"):  # the owner, and a cluster admin (who may read every subject)
        async with Client(auth_nats.url, creds=auth_nats.creds("user", reader)) as client:
            with structlog.testing.capture_logs() as logged:
                assert await lines(client, j) == [b"real"]
            assert [(e["event"], e["writer"]) for e in logged if e["event"] == "output_batch_dropped"] \
                == [("output_batch_dropped", "a2")]  # two dropped, logged once
            assert await losses(client, j) == [1.0]
            assert [(n, b.points[0].values["loss"]) async for n, _, b in client.metric_batches_after(j)] == [(0, 1.0)]
            summary = await client.metric_summary(j, 0)
            assert summary is not None and summary.batches == 1


async def test_every_rank_of_a_gang_is_read_and_nothing_else(auth_nats: AuthNats, controller_bus: Bus) -> None:
    """A two-node attempt on a1 and a2: each rank's agent writes under its own id, and the reader shows every line
    of both, in the order they were stored, and the metrics of the rank that logged some (rank 1 here)."""
    j = job("j-3", "a1", "a2")
    async with await dial(auth_nats, "agent", "a1") as a1, await dial(auth_nats, "agent", "a2") as a2:
        for seq in range(3):
            await a1.publish_durable(out(LOGS, j, "a1"), log_batch(j, f"rank0-{seq}", seq=seq))
            await a2.publish_durable(out(LOGS, j, "a2"), log_batch(j, f"rank1-{seq}", seq=seq, rank=1))
            await a2.publish_durable(out(METRICS, j, "a2"), metric_batch(j, 3.0, seq=seq))  # rank 1's only
    async with Client(auth_nats.url, creds=auth_nats.creds("user", "bob")) as bob:
        assert await lines(bob, j) == [f"rank{r}-{s}".encode() for s in range(3) for r in range(2)]
        assert await losses(bob, j) == [3.0] * 3
        assert await bob.metric_summary(j, 0) is None  # a gang has no summary: a chart reads the points
    alone = job("j-3", "a1")  # the same subjects read as an attempt on a1 only: a2's lines are not its
    async with Client(auth_nats.url, creds=auth_nats.creds("user", "bob")) as bob:
        assert await lines(bob, alone) == [f"rank0-{s}".encode() for s in range(3)]


async def test_an_attempt_from_before_the_agent_token_is_read_from_its_old_subject_and_a_new_one_is_not(
        auth_nats: AuthNats, controller_bus: Bus) -> None:
    """Batches an older agent wrote on `<...>.<key>` (no agent token: stored before the upgrade; the controller
    stands in for that agent here, since no agent may write there any more) are read for an attempt from before,
    then those on `<key>.<agent>`; for a new attempt, only the latter."""
    old, new = job("j-4", "a1", new=False), job("j-5", "a1")
    for j in (old, new):
        await controller_bus.publish_durable(subjects.legacy_output(LOGS, j, "k" * 24), log_batch(j, "before"))
        await controller_bus.publish_durable(subjects.legacy_output(METRICS, j, "k" * 24), metric_batch(j, 2.0))
    async with await dial(auth_nats, "agent", "a1") as a1:
        for j in (old, new):
            await a1.publish_durable(out(LOGS, j, "a1"), log_batch(j, "after", seq=1))
            await a1.publish_durable(out(METRICS, j, "a1"), metric_batch(j, 1.0, seq=1))
    async with Client(auth_nats.url, creds=auth_nats.creds("user", "bob")) as bob:
        assert await lines(bob, old) == [b"before", b"after"]
        assert await losses(bob, old) == [2.0, 1.0]
        assert await lines(bob, new) == [b"after"]
        assert await losses(bob, new) == [1.0]
