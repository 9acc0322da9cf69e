"""The audit trail against a real nats-server: on an authenticated stack (the server as INCL renders it), every
state-changing request is recorded with who, when, what and from where, refusals and errors included, reads are
not; `incl admin audit` narrows by user, verb and time; the entries outlive the controller (the stream is the
truth); and a publish that fails is retried until the stream takes it, or logged whole when it never does."""

from __future__ import annotations

import asyncio
import datetime
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from authstack import AuthNats, make_identities
from conftest import Cluster, wait_for
from structlog.testing import capture_logs

from incl.bus import probe
from incl.bus.client import Client
from incl.bus.connection import Bus
from incl.bus.streams import StreamLimits, ensure_streams
from incl.controller import auditread
from incl.controller.audit import Audit, AuditConfig
from incl.controller.leader import NotLeader
from incl.controller.policy import Principal
from incl.proto import subjects
from incl.proto.audit import Actor, AuditEntry, AuditRequest, Outcome
from incl.proto.errors import InclError, NotAllowed
from incl.proto.messages import Envelope, JobState, SubmitReply, SubmitRequest
from incl.proto.spec import load_spec

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def auth_nats(tmp_path: Path) -> Iterator[AuthNats]:
    home = tmp_path / "home"
    make_identities(home)
    server = AuthNats(home, tmp_path).start()
    yield server
    server.kill()


@pytest.fixture
async def authed_cluster(auth_nats: AuthNats, tmp_path: Path,
                         monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    monkeypatch.setenv("INCL_HOME", str(auth_nats.home))
    monkeypatch.setenv("INCL_CREDS", str(auth_nats.creds("user", "alice")))
    cluster = Cluster(tmp_path, auth_nats)  # type: ignore[arg-type]  # an AuthNats serves as its NatsServer
    yield cluster
    cluster.close()


def listed(cluster: Cluster, *args: str) -> list[dict[str, object]]:
    done = cluster.cli("admin", "audit", "--json", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    return list(json.loads(done.stdout))


def summary(entries: list[AuditEntry]) -> list[tuple[str, str, str | None, Outcome]]:
    return [(e.who.name, e.verb, e.target, e.outcome) for e in entries]


async def test_state_changing_requests_are_recorded_with_who_when_what_and_where_and_outlive_the_controller(
        authed_cluster: Cluster, auth_nats: AuthNats) -> None:
    authed_cluster.start_controller(creds=str(auth_nats.creds("controller", "controller")))
    authed_cluster.start_agent("a1", creds=str(auth_nats.creds("agent", "a1")))
    await authed_cluster.wait_agents(1)
    began = time.time()
    async with authed_cluster.client() as alice:
        made = await alice.submit(load_spec({"run": "echo w > $INCL_OUTPUT_DIR/m.bin", "name": "train"}))
        assert (await authed_cluster.wait_done(made.id)).state is JobState.SUCCEEDED, authed_cluster.dump()
        sleeper = await alice.submit(load_spec({"run": "sleep 60"}))
        await alice.cancel(sleeper.id)
        forged = SubmitRequest(meta=Envelope.new("x"), spec=load_spec({"run": "true"}), user="bob")
        with pytest.raises(NotAllowed):
            await alice.bus.request(subjects.user_api("alice", subjects.SUBMIT), forged, SubmitReply, 5)
        await asyncio.sleep(0.05)  # the entries after this are stored at least this much later than those before
        middle = time.time()
        version = await alice.register_model("resnet", made.id)
        await alice.alias_model("resnet", version.version, "production")
        await alice.jobs()  # reads are not recorded
        await alice.job(made.id)
    async with Client(auth_nats.url, creds=auth_nats.creds("user", "bob")) as bob:
        with pytest.raises(InclError, match="no model named"):
            await bob.alias_model("nothing", 1, "production")
        for subject in ("$JS.API.STREAM.INFO.INCL_AUDIT", "$JS.API.STREAM.MSG.GET.INCL_AUDIT",
                        "$JS.API.CONSUMER.CREATE.INCL_AUDIT", "incl.audit.user.bob.submit"):
            with pytest.raises(NotAllowed):  # only the controller reads or writes the trail
                await bob.bus.request_raw(subject, b"{}", timeout=5)
    added = authed_cluster.cli("admin", "user", "add", "carol", "--team", "nlp")  # as alice: INCL_CREDS
    assert added.returncode == 0 and "audit" not in added.stderr, added.stdout + added.stderr

    async with authed_cluster.client() as alice:
        entries = await alice.audit()
    assert summary(entries) == [
        ("alice", "users.added", "carol", Outcome.OK),
        ("bob", "models.alias", "nothing:v1", Outcome.ERROR),
        ("alice", "models.alias", "resnet:v1", Outcome.OK),
        ("alice", "models.register", "resnet:v1", Outcome.OK),
        ("alice", "submit", None, Outcome.REFUSED),
        ("alice", "jobs.cancel", sleeper.id, Outcome.OK),
        ("alice", "submit", sleeper.id, Outcome.OK),
        ("alice", "submit", made.id, Outcome.OK),
    ], authed_cluster.dump()
    assert all(began <= e.at <= time.time() and e.who.kind == "user" for e in entries)
    assert {(e.origin.host, e.origin.address) for e in entries if e.origin} == {(socket.gethostname(), "127.0.0.1")}
    assert all(e.origin is not None for e in entries if e.request_id != forged.meta.request_id)  # forged: no origin
    assert entries[-1].detail == {"name": "train"} and entries[2].detail == {"alias": "production"}
    assert "names user 'bob' but comes from user 'alice'" in (entries[4].reason or "")
    assert entries[0].detail == {"teams": "nlp"}
    # The refusal is in the controller's log too, without the credentials.
    log = authed_cluster.controller.output() if authed_cluster.controller else ""
    assert "api_refused" in log
    assert not any(auth_nats.creds("user", name).read_text().split()[-1] in log for name in ("alice", "bob"))

    assert [e["target"] for e in listed(authed_cluster, "--user", "bob")] == ["nothing:v1"]
    assert [e["verb"] for e in listed(authed_cluster, "--verb", "jobs.cancel")] == ["jobs.cancel"]
    since = datetime.datetime.fromtimestamp(middle).isoformat()
    assert [e["verb"] for e in listed(authed_cluster, "--since", since)] == [
        "users.added", "models.alias", "models.alias", "models.register"]
    assert [e["verb"] for e in listed(authed_cluster, "--user", "alice", "--since", since, "-n", "2")] == [
        "users.added", "models.alias"]
    table = authed_cluster.cli("admin", "audit", "--since", "1h")
    assert table.returncode == 0 and "refused" in table.stdout and "OUTCOME" in table.stdout, table.stderr
    bad = authed_cluster.cli("admin", "audit", "--since", "yesterday")
    assert bad.returncode == 2 and "neither a duration" in bad.stderr

    # The stream is the truth: a new controller reads the same trail.
    assert authed_cluster.controller is not None
    authed_cluster.controller.stop()
    authed_cluster.start_controller(creds=str(auth_nats.creds("controller", "controller")))
    await authed_cluster.wait_controller()
    async with authed_cluster.client() as alice:
        assert [e.id for e in await alice.audit()] == [e.id for e in entries]


async def test_a_read_pages_back_through_many_entries_by_caller_newest_first(bus: Bus) -> None:
    """More entries than one scan window and one page: every one comes back once, newest first, narrowed."""
    await ensure_streams(bus, StreamLimits())
    audit = Audit(bus, AuditConfig(read_window=16, read_batch=8), retry_initial=0.02, retry_max=0.1,
                  page_bytes=2000)
    for n in range(90):
        await audit.record(entry("bob" if n % 10 == 0 else "alice", float(n)))

    async def everything(**narrow: object) -> list[AuditEntry]:
        out: list[AuditEntry] = []
        cursor = None
        while True:
            reply = await auditread.newest(bus, AuditRequest(meta=Envelope.new("t"), cursor=cursor, **narrow),
                                           AuditConfig(read_window=16, read_batch=8), 2000)
            assert len(reply.entries) >= 1 or reply.next is None
            out += reply.entries
            if reply.next is None:
                return out
            cursor = reply.next

    assert [e.at for e in await everything()] == [float(n) for n in range(89, -1, -1)]
    assert [e.at for e in await everything(user="bob")] == [float(n) for n in range(80, -1, -10)]
    assert [e.at for e in await everything(user="bob", limit=3)] == [float(n) for n in range(80, -1, -10)]
    assert await everything(user="carol") == []


def entry(name: str, at: float) -> AuditEntry:
    return AuditEntry(id=uuid.uuid4().hex, at=at, who=Actor(kind=subjects.USER, name=name), verb=subjects.CANCEL,
                      outcome=Outcome.OK, target="j-1")


class Retries:
    def __init__(self) -> None:
        self.count: dict[str, int] = {}

    def retried(self, what: str) -> None:
        self.count[what] = self.count.get(what, 0) + 1

    def parked(self, source: str) -> None:
        pass

    def applied(self, source: str) -> Callable[[], None]:
        return lambda: None


async def test_a_failing_publish_is_retried_until_stored_once_and_logged_whole_when_it_never_is(bus: Bus) -> None:
    await ensure_streams(bus, StreamLimits())
    await bus.jetstream.delete_stream(subjects.AUDIT_STREAM)  # every publish fails: no stream takes the subject
    retries = Retries()
    probe.install(retries)
    audit = Audit(bus, AuditConfig(record_timeout=20), retry_initial=0.02, retry_max=0.1, page_bytes=10**5)
    cancelled = entry("alice", time.time())
    recording = asyncio.create_task(audit.record(cancelled))
    await wait_for(lambda: retries.count.get("audit_record", 0) >= 3, 10, "the publish to be retried")
    assert not recording.done()
    await ensure_streams(bus, StreamLimits())  # the stream is back: the next try is stored
    await asyncio.wait_for(recording, 10)
    await audit.record(cancelled)  # the same entry again (a retry whose first try was stored): stored once
    reply = await audit.read(AuditRequest(meta=Envelope.new("t")), Principal(name="alice", admin=True))
    assert [e.id for e in reply.entries] == [cancelled.id]

    await bus.jetstream.delete_stream(subjects.AUDIT_STREAM)
    hasty = Audit(bus, AuditConfig(record_timeout=0.3), retry_initial=0.02, retry_max=0.1, page_bytes=10**5)
    with capture_logs() as logs:
        started = time.monotonic()
        await hasty.record(cancelled)
    assert time.monotonic() - started < 2  # the API is not held for long
    lost = [e for e in logs if e["event"] == "audit_lost"]
    assert len(lost) == 1 and lost[0]["who"] == {"kind": "user", "name": "alice"} and lost[0]["verb"] == "jobs.cancel"


async def test_a_deposed_leader_writes_no_entry(bus: Bus) -> None:
    """Writing an entry is a write like any other: the lease is checked first, and a deposed leader stops there."""
    await ensure_streams(bus, StreamLimits())

    def deposed() -> None:
        raise NotLeader("the lease is another controller's")

    audit = Audit(bus, AuditConfig(), retry_initial=0.02, retry_max=0.1, page_bytes=10**5, fence=deposed)
    with pytest.raises(NotLeader):
        await audit.record(entry("alice", time.time()))
    assert (await bus.state(subjects.AUDIT_STREAM)).messages == 0
