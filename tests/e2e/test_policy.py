"""Who may see and change which job, through a real controller and a real nats-server configured as INCL renders
it: own jobs, the team's (read; cancel only for team admins), cluster admins everything; one clear line each."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import msgpack
import pytest
from authstack import AuthNats, people_nats, start_with_creds
from conftest import Cluster, wait_for
from test_bad_input import GARBAGE, USER_VERBS

from incl.bus.client import Client
from incl.proto import subjects
from incl.proto.errors import NotAllowed, SpecInvalid
from incl.proto.messages import Envelope, JobState, SubmitReply, SubmitRequest
from incl.proto.spec import load_spec

# name: (teams, team_admin, admin)
PEOPLE = {"alice": (["vision"], [], False), "carol": (["vision"], [], False), "dave": ([], ["vision"], False),
          "bob": (["nlp"], [], False), "root": ([], [], True)}


@pytest.fixture
def team_nats(tmp_path: Path) -> Iterator[AuthNats]:
    with people_nats(tmp_path, PEOPLE) as server:
        yield server


@pytest.fixture
async def cluster(team_nats: AuthNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    monkeypatch.setenv("INCL_HOME", str(team_nats.home))
    cluster = Cluster(tmp_path, team_nats)  # type: ignore[arg-type]  # an AuthNats serves as its NatsServer
    start_with_creds(cluster, team_nats)
    yield cluster
    cluster.close()


def as_user(server: AuthNats, name: str) -> Client:
    return Client(server.url, creds=server.creds("user", name), timeout=5.0)


async def test_own_team_and_admin_rights_each_refusal_one_line(cluster: Cluster, team_nats: AuthNats) -> None:
    await cluster.wait_agents(1)
    async with as_user(team_nats, "alice") as alice:
        job = await alice.submit(load_spec({"run": "echo secret-result-of-alice; sleep 60"}))
        assert job.spec.team == "vision"  # her only team: the job is the team's
        await cluster.wait_state(job.id, {JobState.RUNNING})
        mine = await alice.job(job.id)
        assert mine.user == "alice"
    belongs = f"not allowed: job {job.id} belongs to alice (team vision)"

    async with as_user(team_nats, "bob") as bob:  # another team: nothing, each refusal at once and in one line
        for call in (bob.job(job.id), bob.cancel(job.id)):
            with pytest.raises(NotAllowed) as refused:
                await call
            assert str(refused.value) == belongs
        with pytest.raises(NotAllowed, match=re.escape(belongs)):
            [b async for b in bob.log_batches(job.id, follow=False)]
        assert await bob.jobs() == []
        with pytest.raises(SpecInvalid, match="bob is not in team vision") as bad:  # nor submit as the team
            await bob.submit(load_spec({"run": "true", "team": "vision"}))
        assert bad.value.field == "team"
        for admins_only in (bob.dead_letters(), bob.audit(), bob.shares(everyone=True)):
            with pytest.raises(NotAllowed, match="cluster admins"):
                await admins_only

    async with as_user(team_nats, "carol") as carol:  # the same team: reads, but may not cancel
        assert [j.id for j in await carol.jobs()] == [job.id]

        async def lines() -> bytes | None:  # the agent ships the line within its flush interval
            read = b"".join(line.data for b in [b async for b in carol.log_batches(job.id, follow=False)]
                            for line in b.lines)
            return read if b"secret-result-of-alice" in read else None

        await wait_for(lines, what="alice's line, read by carol")
        with pytest.raises(NotAllowed) as refused:
            await carol.cancel(job.id)
        assert str(refused.value) == f"{belongs}; only team vision's admins may change it"

    async with as_user(team_nats, "dave") as dave:  # the team's admin cancels
        await dave.cancel(job.id)
    assert (await cluster.wait_done(job.id)).state is JobState.CANCELLED

    async with as_user(team_nats, "root") as root:  # a cluster admin sees all, bob's too
        async with as_user(team_nats, "bob") as bob:
            own = await bob.submit(load_spec({"run": 'echo bobs | tee "$INCL_OUTPUT_DIR/bobs.txt"'}))
            assert own.spec.team == "nlp"
            assert [j.id for j in await bob.jobs()] == [own.id]
        assert {j.id for j in await root.jobs()} == {job.id, own.id}
        await root.dead_letters()
        assert await root.shares(everyone=True) == []
        trail = await root.audit(user="bob")  # bob's refusals are on record, with who and what
        assert any(e.verb == "jobs.cancel" and e.target == job.id and e.outcome == "refused" for e in trail), trail

    listed = cluster.cli("ls", "--json", env={"INCL_CREDS": str(team_nats.creds("user", "bob"))})
    assert listed.returncode == 0, listed.stderr
    assert [j["id"] for j in json.loads(listed.stdout)] == [own.id]
    shown = cluster.cli("logs", job.id, env={"INCL_CREDS": str(team_nats.creds("user", "bob"))})
    assert shown.returncode != 0 and belongs in shown.stderr and "Traceback" not in shown.stderr, shown.stderr
    # gc keeps what every job and link needs, which only a cluster admin can see: anyone else's run stops before it
    # deletes anything (the store is listed first: it is there)
    assert (await cluster.wait_done(own.id)).state is JobState.SUCCEEDED
    before = sorted(p for p in (cluster.tmp / "store").rglob("*") if p.is_file())  # bob's output, among others
    collected = cluster.cli("gc", "--grace", "0s", "--retention", "0s",
                            env={"INCL_CREDS": str(team_nats.creds("user", "bob"))})
    assert collected.returncode != 0 and "cluster admins" in collected.stderr, collected.stderr
    assert before and sorted(p for p in (cluster.tmp / "store").rglob("*") if p.is_file()) == before
    assert cluster.controller is not None
    refusals = [line for line in cluster.controller.output().splitlines() if "api_refused" in line]
    assert refusals and not any("SU" in line for line in refusals)  # logged, and never a seed (seeds start SU)


async def test_garbage_and_oversized_messages_from_an_authenticated_user_never_stop_a_daemon(
        cluster: Cluster, team_nats: AuthNats) -> None:
    """The fuzz of test_bad_input with authentication on: bob's credentials, his own subjects, every verb; then a
    payload over the server's limit, and a flood of them. Every request is answered with an error, and afterwards
    both daemons still serve him and run his job."""
    await cluster.wait_agents(1)
    async with as_user(team_nats, "bob") as bob:
        for verb in USER_VERBS:
            for payload in GARBAGE:
                answer = msgpack.unpackb(await bob.bus.request_raw(subjects.user_api("bob", verb), payload, 5))
                assert answer["type"] == "ErrorReply" and answer["code"] in ("decode_error", "version_mismatch")
        too_big = b"\x00" * (bob.bus.max_payload + 1)
        with pytest.raises(Exception):  # noqa: B017 - refused by the client or the server, whichever first
            await bob.bus.request_raw(subjects.user_api("bob", subjects.SUBMIT), too_big, 5)
    async with as_user(team_nats, "bob") as bob:  # a new connection: the server may have closed the last
        for _ in range(200):
            await bob.bus.publish(subjects.user_api("bob", subjects.SUBMIT), b"\xc1" * 60_000)
        job = await bob.submit(load_spec({"run": "echo still here"}))
        # The same submit replayed (same idempotency key, sent again as it was): one job.
        replay = SubmitRequest(meta=Envelope.new("cli:bob", idempotency_key="bob-replay-1"),
                               spec=load_spec({"run": "true"}), user="bob")
        ids = {(await bob.bus.request(subjects.user_api("bob", subjects.SUBMIT), replay, SubmitReply, 5)).job.id
               for _ in range(3)}
        assert len(ids) == 1 and len([j for j in await bob.jobs() if j.id in ids]) == 1
    assert (await cluster.wait_done(job.id)).state is JobState.SUCCEEDED
    assert cluster.controller is not None and cluster.controller.proc is not None
    assert cluster.controller.proc.poll() is None and all(a.proc is not None and a.proc.poll() is None
                                                          for a in cluster.agents.values())


async def test_a_studys_journal_is_read_by_its_owner_and_team_and_refused_to_others(
        cluster: Cluster, team_nats: AuthNats) -> None:
    """`incl.hpo.storage` asks the controller where the journal is (the policy's refusal, in one line) and the NATS
    server lets each read only their own and their teams' journals."""
    import optuna
    from webpages import STUDY

    from incl.hpo import storage

    await cluster.wait_agents(1)
    spec = {**STUDY, "hpo": {**STUDY["hpo"], "trials": 2, "parallel": 2}}
    async with as_user(team_nats, "alice") as alice:
        study = await alice.submit_study(load_spec(spec))
    assert study.journal.startswith("incl.studies.vision.alice.")

    def load(name: str) -> int:
        got = storage(team_nats.url, study.id, creds=team_nats.creds("user", name), timeout=5)
        return len(optuna.load_study(study_name=study.id, storage=got).trials)

    async def finished() -> bool:
        async with as_user(team_nats, "alice") as alice:
            return (await alice.study(study.id)).summary.study.state != "RUNNING"

    await wait_for(finished, 60, "the study to end")
    assert await asyncio.to_thread(load, "carol") == 2  # same team
    with pytest.raises(NotAllowed, match=re.escape(f"not allowed: study {study.id} belongs to alice (team vision)")):
        await asyncio.to_thread(load, "bob")
    async with as_user(team_nats, "bob") as bob:  # and the server itself refuses him the journal's subject
        with pytest.raises(NotAllowed, match="refused"):
            await bob.bus.last_seq(subjects.STUDIES_STREAM, study.journal, 5, direct=True)
