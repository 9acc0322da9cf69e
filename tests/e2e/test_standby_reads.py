"""A standby controller answers reads (`incl.controller.standby`): through a kill -9 of the leader, before the
takeover; while the leader is paused; it never takes a write (a submit meanwhile creates one job, by the leader);
and it refuses what the leader refuses, in the same words."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_standby
from authstack import AuthNats, people_nats
from conftest import Cluster, wait_for
from test_standby import Controllers, lease_holder

from incl.bus.client import Client
from incl.bus.connection import Bus
from incl.proto.errors import NotAllowed, Unavailable
from incl.proto.messages import Job, JobState
from incl.proto.spec import load_spec

controllers = test_standby.controllers  # the fixture: c1 and c2 with ids of their own, stopped after the test

# A lease nobody takes over within a test: a paused leader keeps it, and the other controller stays a standby.
LONG_LEASE = {"leader_ttl": 60.0, "leader_renew": 1.0, "leader_margin": 0.5, "agent_lost_after": 60.0}


async def submit(cluster: Cluster, name: str) -> Job:
    """A submit whose client waits out a takeover (10 s), as `incl submit`'s does."""
    async with Client(cluster.nats.url, timeout=10.0) as c:
        return await c.submit(load_spec({"run": "echo during", "name": name}), user="tester")


async def _holds(bus: Bus, controller_id: str) -> bool:
    return await lease_holder(bus) == controller_id


@pytest.mark.timeout(120)
async def test_reads_answer_from_the_standby_between_a_kill_of_the_leader_and_the_takeover(
        cluster: Cluster, controllers: Controllers, bus: Bus) -> None:
    """`incl ls`, jobs.get and jobs.list keep answering, from the standby, while no controller leads; a submit
    sent in that gap is retried to the new leader and creates one job."""
    first, other = await controllers.pair(bus)
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    done = await cluster.wait_done((await cluster.submit("echo before", name="before")).id)
    answered: list[tuple[float, str]] = []  # when a round of reads ended, and who answered its ping
    unanswered: list[str] = []
    async with Client(cluster.nats.url, timeout=2.0) as c:
        stop = asyncio.Event()

        async def reader() -> None:
            while not stop.is_set():
                try:
                    got, listed = await c.job(done.id), await c.jobs()
                    assert got.state is JobState.SUCCEEDED and done.id in [j.id for j in listed]
                    answered.append((time.monotonic(), (await c.ping()).controller_id))
                except Unavailable as exc:
                    unanswered.append(repr(exc))

        reading = asyncio.create_task(reader())
        await wait_for(lambda: len(answered) >= 5, what="reads answered by the leader")
        first = await lease_holder(bus) or first  # a loaded host may have moved the lease since `pair`
        other = "c2" if first == "c1" else "c1"
        # Its warm copy answers once it has read the buckets (a loaded host has taken seconds over it).
        await wait_for(lambda: "standby_serving_reads" in controllers.running[other].output(),
                       what="the standby to serve reads")
        controllers.running[first].kill()
        killed = time.monotonic()
        listing = asyncio.create_task(asyncio.to_thread(cluster.cli, "ls", "--json"))
        submitted = asyncio.create_task(submit(cluster, "during-gap"))
        await wait_for(lambda: _holds(bus, other), timeout=15, interval=0.02, what="the standby to take over")
        elected = time.monotonic()
        cli = await listing
        job = await submitted
        await asyncio.sleep(0.5)
        stop.set()
        await reading

    assert not unanswered, unanswered
    gap = [who for t, who in answered if killed < t < elected]
    assert gap and set(gap) == {other}, f"between the kill and the takeover, answered by {set(gap)}"
    around = [t for t, _ in answered if t > killed - 1]
    longest = max(b - a for a, b in itertools.pairwise(around))
    assert longest < 1.0, f"reads went {longest:.2f} s unanswered"
    print(f"\ntakeover {elected - killed:.2f} s after kill -9; {len(gap)} read rounds answered by the standby "
          f"meanwhile; longest wait for an answer {longest * 1e3:.0f} ms")
    assert cli.returncode == 0 and done.id in cli.stdout, cli.stderr
    assert (await cluster.wait_done(job.id)).state is JobState.SUCCEEDED
    async with cluster.client() as c:
        assert [j.spec.name for j in await c.jobs()].count("during-gap") == 1


@pytest.mark.timeout(120)
async def test_a_standby_answers_reads_while_the_leader_is_paused_and_never_takes_a_write(
        cluster: Cluster, controllers: Controllers, bus: Bus) -> None:
    first, other = await controllers.pair(bus, **LONG_LEASE)
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    done = await cluster.wait_done((await cluster.submit("echo before", name="before")).id)
    paused = controllers.running[first]
    standby = controllers.running[other]
    assert paused.proc is not None
    os.kill(paused.proc.pid, signal.SIGSTOP)
    try:
        async with Client(cluster.nats.url, timeout=3.0) as c:
            started = time.monotonic()
            assert (await c.job(done.id)).state is JobState.SUCCEEDED
            assert time.monotonic() - started < 2.0
            assert (await c.ping()).controller_id == other
            assert [j.id for j in await c.jobs()] == [done.id]
            assert [a.record.info.agent_id for a in await c.agents()] == ["a1"]
            status = await c.status()
            assert status.controller_id == other
            assert sorted((m.controller_id, m.leader) for m in status.controllers) == sorted(
                [(first, True), (other, False)])
            cli = await asyncio.to_thread(cluster.cli, "ls", "--json")
            assert cli.returncode == 0 and done.id in cli.stdout, cli.stderr
            spec = load_spec({"run": "echo written", "name": "while-paused"})
            with pytest.raises(Unavailable):  # only the leader takes writes, and it sleeps
                await c.submit(spec, key="one-key", attempts=1)
        assert '"job_submitted"' not in standby.output()
        assert await lease_holder(bus) == first
    finally:
        os.kill(paused.proc.pid, signal.SIGCONT)
    async with cluster.client() as c:  # the same submit again, as a client retries it: one job, by the leader
        job = await c.submit(spec, key="one-key")
        assert (await cluster.wait_done(job.id)).state is JobState.SUCCEEDED
        assert [j.spec.name for j in await c.jobs()].count("while-paused") == 1
    assert '"job_submitted"' not in standby.output()


PEOPLE = {"alice": (["vision"], [], False), "bob": (["nlp"], [], False),
          "root": ([], [], True)}  # the test process's own user: its helpers (wait_agents) speak as a cluster admin


@pytest.fixture
def team_nats(tmp_path: Path) -> Iterator[AuthNats]:
    with people_nats(tmp_path, PEOPLE) as server:
        yield server


@pytest.mark.timeout(120)
async def test_a_standby_refuses_what_the_leader_refuses_in_the_same_words(
        team_nats: AuthNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INCL_HOME", str(team_nats.home))
    cluster = Cluster(tmp_path, team_nats)  # type: ignore[arg-type]  # an AuthNats serves as its NatsServer
    pair = Controllers(cluster)
    creds = str(team_nats.creds("controller", "controller"))
    try:
        async with Client(team_nats.url, creds=team_nats.creds("controller", "controller")) as admin:
            first, other = await pair.pair(admin.bus, creds=creds, **LONG_LEASE)
            cluster.start_agent("a1", creds=str(team_nats.creds("agent", "a1")))
            await cluster.wait_agents(1)

            def as_user(name: str) -> Client:
                return Client(team_nats.url, creds=team_nats.creds("user", name), timeout=3.0)

            async with as_user("alice") as alice:
                job = await alice.submit(load_spec({"run": "echo hers"}))
                await cluster.wait_done(job.id)

            async def refusals() -> list[str]:
                async with as_user("bob") as bob, as_user("alice") as alice:
                    said = []
                    for call in (bob.job(job.id), bob.dead_letters(), bob.audit()):
                        with pytest.raises(NotAllowed) as refused:
                            await call
                        said.append(str(refused.value))
                    assert await bob.jobs() == []
                    assert (await alice.job(job.id)).user == "alice"
                    return [*said, (await bob.ping()).controller_id]

            *by_leader, leader_id = await refusals()
            assert leader_id == first
            paused = pair.running[first].proc
            assert paused is not None
            os.kill(paused.pid, signal.SIGSTOP)
            try:
                *by_standby, standby_id = await refusals()
            finally:
                os.kill(paused.pid, signal.SIGCONT)
            assert standby_id == other
            assert by_standby == by_leader
            assert by_leader[0] == f"not allowed: job {job.id} belongs to alice (team vision)"
    finally:
        for daemon in pair.running.values():
            daemon.stop()
        cluster.close()


@pytest.mark.timeout(180)
async def test_a_standby_shows_a_study_and_its_trials_while_the_leader_is_paused(
        cluster: Cluster, controllers: Controllers, bus: Bus, tmp_path: Path) -> None:
    """studies.get and studies.list from the standby read the study's journal without writing to it."""
    from test_hpo import QUADRATIC, study_spec, submit_study, wait_study

    first, other = await controllers.pair(bus, **LONG_LEASE)
    cluster.start_agent("a1", cpus=2)
    await cluster.wait_agents(1)
    spec = study_spec("python trial.py", trials=2, parallel=2,
                      params={"X": {"type": "float", "low": -4, "high": 4},
                              "Y": {"type": "float", "low": -4, "high": 4}})
    created = await submit_study(cluster, spec, tmp_path, QUADRATIC)
    by_leader = await wait_study(cluster, created.id)
    paused = controllers.running[first].proc
    assert paused is not None
    os.kill(paused.pid, signal.SIGSTOP)
    try:
        async with Client(cluster.nats.url, timeout=10.0) as c:
            assert (await c.ping()).controller_id == other
            by_standby = await c.study(created.id)
            assert [s.study.id for s in await c.studies()] == [created.id]
    finally:
        os.kill(paused.pid, signal.SIGCONT)
    assert by_standby.summary.study.state == by_leader.summary.study.state
    assert [(t.number, t.state, t.value) for t in by_standby.trials] == [
        (t.number, t.state, t.value) for t in by_leader.trials]
    assert len(by_standby.trials) == 2 and by_standby.summary.best_value == by_leader.summary.best_value
