"""The attacks of issue 15 against a real nats-server configured exactly as INCL renders it: each one fails closed,
refused by the server itself (not by a check the controller hopes every client runs)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from authstack import AuthNats, make_identities
from conftest import Cluster, wait_for

from incl.auth import identities, keys
from incl.bus.client import Client
from incl.bus.connection import AuthFailed, Bus, connect
from incl.bus.streams import StreamLimits, ensure_buckets, ensure_streams
from incl.proto import subjects
from incl.proto.codec import encode
from incl.proto.errors import InclError, NotAllowed
from incl.proto.messages import Attempt, Envelope, Job, JobState, LogBatch, LogLine, SubmitReply, SubmitRequest
from incl.proto.spec import load_spec


@pytest.fixture
def auth_nats(tmp_path: Path) -> Iterator[AuthNats]:
    home = tmp_path / "home"
    make_identities(home)
    server = AuthNats(home, tmp_path).start()
    yield server
    server.kill()


async def dial(server: AuthNats, kind: str | None, name: str | None, creds: Path | None = None,
               dropped: asyncio.Event | None = None) -> Bus:
    """A connection as `kind` `name` (or with the file `creds`); `dropped` is set when the server closes it."""
    path = creds or (server.creds(kind, name) if kind and name else None)

    async def on_disconnect() -> None:
        if dropped is not None:
            dropped.set()

    return await connect(server.url, "test", connect_timeout=2, reconnect_wait=0.1, request_timeout=5,
                         max_reconnect_attempts=0, quiet=True, creds=path, on_disconnect=on_disconnect)


def refused(bus: Bus, what: str, subject: str) -> bool:
    """The server refused `bus` `what` ('publish' or 'subscription') to `subject`."""
    return f'permissions violation for {what} to "{subject.lower()}"' in bus.refused


@pytest.fixture
async def controller_bus(auth_nats: AuthNats) -> AsyncIterator[Bus]:
    """The controller's identity, with the streams and buckets it creates (no controller process: cheaper)."""
    async with await dial(auth_nats, "controller", "controller") as bus:
        await ensure_streams(bus, StreamLimits())
        buckets = await ensure_buckets(bus)
        await buckets[subjects.JOBS_BUCKET].put("j-1", b"a record with secrets")
        yield bus


async def test_no_wrong_or_revoked_credentials_are_refused_at_connect(auth_nats: AuthNats, tmp_path: Path) -> None:
    with pytest.raises(AuthFailed, match=r"authentication failed: .* without credentials"):
        await dial(auth_nats, None, None)
    stranger = keys.write_creds(tmp_path / "stranger.nk", "user", "alice", keys.new_seed())  # the right name only
    with pytest.raises(AuthFailed, match="authentication failed"):
        await dial(auth_nats, None, None, creds=stranger)

    closed = asyncio.Event()
    bob = await dial(auth_nats, "user", "bob", dropped=closed)
    bob_file = auth_nats.creds("user", "bob")
    seed = bob_file.read_text()
    assert identities.remove(auth_nats.home, "user", "bob")
    auth_nats.reload()
    await asyncio.wait_for(closed.wait(), 10)  # revoked at once: the live connection is closed by the server
    await bob.close()
    bob_file.write_text(seed)  # even holding the old file, bob is no longer let in
    with pytest.raises(AuthFailed):
        await dial(auth_nats, None, None, creds=bob_file)


def test_the_cli_says_authentication_failed_in_one_line(auth_nats: AuthNats, tmp_path: Path) -> None:
    wrong = keys.write_creds(tmp_path / "wrong.nk", "user", "bob", keys.new_seed())
    result = subprocess.run([sys.executable, "-m", "incl.cli", "--nats", auth_nats.url, "ls"], capture_output=True,
                            text=True, timeout=60, env={"INCL_CREDS": str(wrong), "INCL_HOME": str(tmp_path / "h"),
                                                        "PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert result.stderr.strip().count("\n") == 0 and "authentication failed" in result.stderr, result.stderr


async def test_a_user_cannot_forge_events_sniff_assignments_or_read_the_buckets(auth_nats: AuthNats,
                                                                             controller_bus: Bus) -> None:
    sniffed: list[str] = []

    async def never(subject: str, _data: bytes) -> bytes | None:
        sniffed.append(subject)
        return None

    async with await dial(auth_nats, "user", "bob") as bob:
        await bob.publish(subjects.events("a1"), b"forged JobExited")
        await bob.publish(subjects.agent_api("a1", subjects.HEARTBEAT), b"forged heartbeat")
        await bob.publish("$KV.incl_jobs.j-1", b"rewritten")
        await bob.serve(f"{subjects.ASSIGN_PREFIX}.>", "", never)
        await bob.serve("_INBOX.u.alice.>", "", never)
        await controller_bus.publish_durable(subjects.assign("a1"), b"an assignment with secrets")
        for what, subject in (("publish", subjects.events("a1")),
                              ("publish", subjects.agent_api("a1", subjects.HEARTBEAT)),
                              ("publish", "$KV.incl_jobs.j-1"), ("subscription", "incl.assign.>"),
                              ("subscription", "_INBOX.u.alice.>")):
            await wait_for(lambda w=what, s=subject: refused(bob, w, s), 5, f"the server to refuse {what} {subject}")
        await bob.publish(subjects.user_api("bob", subjects.PING), b"")  # a round trip after the assignment
        assert sniffed == []
    async with await dial(auth_nats, "user", "bob") as bob:
        for subject in ("$JS.API.STREAM.INFO.KV_incl_jobs", "$JS.API.STREAM.MSG.GET.KV_incl_jobs",
                        "$JS.API.DIRECT.GET.KV_incl_jobs.$KV.incl_jobs.j-1", "$JS.API.DIRECT.GET.KV_incl_jobs",
                        "$JS.API.CONSUMER.CREATE.KV_incl_jobs", "$JS.API.STREAM.INFO.INCL_ASSIGN",
                        "$JS.API.CONSUMER.CREATE.INCL_EVENTS", "$JS.API.STREAM.PURGE.INCL_LOGS",
                        subjects.user_api("alice", subjects.PING),
                        # The forms of reading the output streams that carry what they read in the payload:
                        "$JS.API.STREAM.INFO.INCL_LOGS", "$JS.API.STREAM.MSG.GET.INCL_LOGS",
                        "$JS.API.DIRECT.GET.INCL_LOGS", "$JS.API.CONSUMER.CREATE.INCL_LOGS",
                        "$JS.API.CONSUMER.CREATE.INCL_METRICS.x", "$JS.API.STREAM.MSG.GET.INCL_METRICS"):
            with pytest.raises(NotAllowed, match="not allowed"):
                await bob.request_raw(subject, b'{"last_by_subj": "$KV.incl_jobs.j-1"}', timeout=5)


def _job(job_id: str, user: str, team: str | None) -> Job:
    spec = load_spec({"run": "true", **({"team": team} if team else {})})
    attempt = Attempt(number=1, agent_id="a1", state=JobState.SUCCEEDED, assigned_at=1.0, output_key=f"k{job_id[2:]}",
                      agent_subjects=True)
    return Job(id=job_id, spec=spec, user=user, state=JobState.SUCCEEDED, submitted_at=1.0, updated_at=1.0,
               attempts=[attempt])


def _out(job: Job, stream: str = subjects.LOGS_STREAM) -> str:
    att = job.attempts[0]
    return subjects.output(stream, job, att.output_key, att.agent_id)


async def test_a_user_reads_their_own_and_their_teams_output_and_nobody_elses(auth_nats: AuthNats,
                                                                             controller_bus: Bus) -> None:
    """The server's own rule, with no controller to ask: bob (team nlp) reads his jobs' output and team nlp's,
    as the client reads it (a consumer with its filter in the subject, a direct get), and never team vision's."""
    jobs = {"own": _job("j-1", "bob", None), "team": _job("j-2", "carol", "nlp"),
            "other": _job("j-3", "alice", "vision"), "own-in-other-team": _job("j-4", "bob", "vision")}
    async with await dial(auth_nats, "agent", "a1") as agent:
        for name, job in jobs.items():
            for subject in (_out(job), _out(job, subjects.METRICS_STREAM)):
                await agent.publish_durable(subject, encode(LogBatch(job_id=job.id, attempt=1, seq=0, lines=[
                    LogLine(stream=1, data=name.encode(), ts=1.0)])))
    async with Client(auth_nats.url, creds=auth_nats.creds("user", "bob")) as bob:
        assert bob.user == "bob"
        for name in ("own", "team", "own-in-other-team"):
            assert [b.lines[0].data async for b in bob.log_batches(jobs[name], follow=False)] == [name.encode()]
        for read in (bob.log_batches, bob.metric_batches):
            with pytest.raises(NotAllowed, match="refused these credentials"):
                [b async for b in read(jobs["other"], follow=False)]
        # A consumer named for his own subject whose payload asks for alice's: the server refuses the mismatch.
        own, other = _out(jobs["own"]), _out(jobs["other"])
        config = {"stream_name": subjects.LOGS_STREAM, "config": {
            "name": "sneaky", "filter_subject": other, "ack_policy": "none", "deliver_policy": "all"}}
        reply = json.loads(await bob.bus.request_raw(f"$JS.API.CONSUMER.CREATE.{subjects.LOGS_STREAM}.sneaky.{own}",
                                                     json.dumps(config).encode(), timeout=5))
        assert "error" in reply, reply
        # Wildcards in the filter token match only what the rights match literally.
        for filter_ in ("incl.logs.>", "incl.logs.*.*.*.*", "incl.logs.*.*.*.*.*", "incl.logs.vision.>"):
            with pytest.raises(NotAllowed, match="refused"):
                await bob.bus.request_raw(f"$JS.API.CONSUMER.CREATE.{subjects.LOGS_STREAM}.w.{filter_}", b"{}", 5)
    async with Client(auth_nats.url, creds=auth_nats.creds("user", "alice")) as alice:  # a cluster admin
        assert [b.lines[0].data async for b in alice.log_batches(jobs["team"], follow=False)] == [b"team"]


async def test_another_agent_cannot_write_where_a_jobs_readers_read(auth_nats: AuthNats, controller_bus: Bus) -> None:
    """An attempt's output subjects end in its random key, told only to the agents running it (in their own
    assignment) and to the job's readers: another agent's forgeries, under every key it could guess, are never
    read."""
    job = _job("j-9", "bob", "nlp")
    batch = LogBatch(job_id=job.id, attempt=1, seq=0, lines=[LogLine(stream=1, data=b"real", ts=1.0)])
    async with await dial(auth_nats, "agent", "a1") as a1:
        await a1.publish_durable(_out(job), encode(batch))
    forged = LogBatch(job_id=job.id, attempt=1, seq=1, lines=[LogLine(stream=1, data=b"forged", ts=2.0)])
    async with await dial(auth_nats, "agent", "a2") as a2:
        for key in ("", "_", "k1", "*", ">"):
            subject = f"{subjects.LOGS_PREFIX}.nlp.bob.{job.id}" + (f".{key}" if key else "")
            with contextlib.suppress(Exception):  # a wildcard subject is not publishable at all
                await a2.publish_durable(subject, encode(forged))
    async with Client(auth_nats.url, creds=auth_nats.creds("user", "bob")) as bob:
        assert [line.data for b in [b async for b in bob.log_batches(job, follow=False)] for line in b.lines] \
            == [b"real"]


async def test_an_agent_cannot_submit_or_take_another_agents_assignments(auth_nats: AuthNats,
                                                                         controller_bus: Bus) -> None:
    await controller_bus.publish_durable(subjects.assign("a1"), b"for a1")
    async with await dial(auth_nats, "agent", "a1") as a1:
        for subject in (subjects.user_api("a1", subjects.SUBMIT), subjects.agent_api("a2", subjects.HEARTBEAT),
                        "$JS.API.CONSUMER.INFO.INCL_ASSIGN.agent-a2", "$JS.API.CONSUMER.MSG.NEXT.INCL_ASSIGN.agent-a2",
                        "$JS.API.CONSUMER.CREATE.INCL_ASSIGN.agent-a1.incl.assign.a2",  # its name, a2's subject
                        "$JS.API.CONSUMER.DURABLE.CREATE.INCL_ASSIGN.agent-a1", "$JS.API.CONSUMER.CREATE.INCL_ASSIGN",
                        "$JS.API.STREAM.MSG.GET.INCL_ASSIGN", "$JS.API.STREAM.INFO.KV_incl_jobs"):
            with pytest.raises(NotAllowed):
                await a1.request_raw(subject, b"{}", timeout=5)
        # Its own consumer works, as the agent makes it: it gets its assignment and acks it.
        mine = await a1.pull(subjects.ASSIGN_STREAM, subjects.assign("a1"), subjects.assign_consumer("a1"), ack_wait=5)
        got = await mine.fetch(1, timeout=5)
        assert [m.data for m in got] == [b"for a1"]
        await got[0].ack()


@pytest.fixture
async def authed_cluster(auth_nats: AuthNats, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    monkeypatch.setenv("INCL_HOME", str(auth_nats.home))
    monkeypatch.setenv("INCL_CREDS", str(auth_nats.creds("user", "alice")))
    cluster = Cluster(tmp_path, auth_nats)  # type: ignore[arg-type]  # an AuthNats serves as its NatsServer
    yield cluster
    cluster.close()


async def test_a_stack_with_auth_runs_a_job_as_the_user_its_credentials_name(authed_cluster: Cluster,
                                                                            auth_nats: AuthNats) -> None:
    authed_cluster.start_controller(creds=str(auth_nats.creds("controller", "controller")))
    authed_cluster.start_agent("a1", creds=str(auth_nats.creds("agent", "a1")))
    await authed_cluster.wait_agents(1)
    async with authed_cluster.client() as alice:
        job = await alice.submit(load_spec({"run": "echo hi from $INCL_JOB_ID"}))
    done = await authed_cluster.wait_done(job.id)
    assert done.state is JobState.SUCCEEDED, authed_cluster.dump()
    listed = authed_cluster.cli("ls", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(j["id"], j["user"]) for j in json.loads(listed.stdout)] == [(job.id, "alice")]
    shown = authed_cluster.cli("logs", job.id)
    assert shown.returncode == 0 and f"hi from {job.id}" in shown.stdout, shown.stdout + shown.stderr
    async with authed_cluster.client() as alice:
        with pytest.raises(NotAllowed, match="NATS server refused"):  # under bob's subject: the server refuses
            await alice.submit(load_spec({"run": "true"}), user="bob")
        forged = SubmitRequest(meta=Envelope.new("x"), spec=load_spec({"run": "true"}), user="bob")
        with pytest.raises(NotAllowed, match="names user 'bob' but comes from user 'alice'"):  # the controller does
            await alice.bus.request(subjects.user_api("alice", subjects.SUBMIT), forged, SubmitReply, 5)
        with pytest.raises(InclError, match="unknown subject"):  # an agent's verb under a user's name
            await alice.bus.request(subjects.user_api("alice", subjects.REGISTER), forged, SubmitReply, 5)
        assert len(await alice.jobs()) == 1
    assert authed_cluster.controller is not None and "api_refused" in authed_cluster.controller.output()


async def test_admin_user_add_lets_a_user_in_rotate_and_remove_cut_the_old_key_off_at_once(auth_nats: AuthNats,
                                                                               tmp_path: Path) -> None:
    """The CLI's path: the registry changes, the config is rendered again, the server `incl up` recorded reloads."""
    import msgspec

    from incl.cli import stack
    assert auth_nats.proc is not None
    conf = stack.server_conf(auth_nats.home)
    recorded = stack.Stack(nats_url=auth_nats.url, embedded_nats=True, started_at=0.0, procs=[
        stack.Proc(name="nats", pid=auth_nats.proc.pid, marker=f"nats-server -c {conf}", log="")])
    stack.state_file(auth_nats.home).write_bytes(msgspec.json.encode(recorded))
    env = {"INCL_HOME": str(auth_nats.home), "PATH": "/usr/bin:/bin"}

    def incl(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "incl.cli", *args], capture_output=True, text=True,
                              timeout=60, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    added = incl("admin", "user", "add", "carol", "--team", "vision")
    assert "the running server reloaded it" in added
    carol_file = auth_nats.creds("user", "carol")

    closed = asyncio.Event()

    async def let_in() -> Bus | None:
        with contextlib.suppress(AuthFailed):  # the reload signal is applied a moment after it is sent
            return await dial(auth_nats, None, None, creds=carol_file, dropped=closed)
        return None

    async with await wait_for(let_in, 10, "carol to be let in"):  # a new key: the old one is out at once
        old_seed = carol_file.read_text()
        assert "the old ones are refused: the running server reloaded it" in incl("admin", "user", "rotate", "carol")
        await asyncio.wait_for(closed.wait(), 10)
    rotated = identities.load(auth_nats.home).find("user", "carol")
    assert rotated is not None and rotated.teams == ["vision"] and rotated.rotated_at > 0
    new_seed = carol_file.read_text()
    assert new_seed != old_seed and carol_file.stat().st_mode & 0o777 == 0o600
    carol_file.write_text(old_seed)
    with pytest.raises(AuthFailed):
        await dial(auth_nats, None, None, creds=carol_file)
    carol_file.write_text(new_seed)
    closed = asyncio.Event()

    async with await wait_for(let_in, 10, "carol to be let in with her new key"):
        seed = carol_file.read_text()
        assert "the running server reloaded it" in incl("admin", "user", "remove", "carol")
        await asyncio.wait_for(closed.wait(), 10)
    assert identities.load(auth_nats.home).find("user", "carol") is None
    carol_file.write_text(seed)
    with pytest.raises(AuthFailed):
        await dial(auth_nats, None, None, creds=carol_file)


def test_a_daemon_refused_at_connect_says_so_in_one_line_without_its_seed(auth_nats: AuthNats, tmp_path: Path) -> None:
    seed = keys.new_seed()
    wrong = keys.write_creds(tmp_path / "a9.nk", "agent", "a9", seed)
    done = subprocess.run([sys.executable, "-m", "incl.agent", "--id", "a9", "--nats", auth_nats.url, "--creds",
                           str(wrong), "--work-dir", str(tmp_path / "a9")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    events = [json.loads(line) for line in (done.stdout + done.stderr).splitlines() if line.startswith("{")]
    assert [e["event"] for e in events if e["level"] == "error"] == ["daemon_refused"]
    assert "authentication failed" in events[-1]["error"] and seed not in done.stdout + done.stderr
