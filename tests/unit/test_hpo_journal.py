"""A study's journal on JetStream (incl.bus.journal) and Optuna's storage over it (incl.hpo.backend, whose `storage` is
`incl.hpo.storage`), against a real NATS server: Optuna's storage contract (one order, read-your-writes, concurrent
writers), a lost ack, a kill -9 of NATS, garbage on the subject, and plain Optuna (and optuna-dashboard) reading a
study."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import optuna
import pytest
import structlog
from conftest import NatsServer, free_port

from incl.bus import journal
from incl.bus.connection import Bus, connect
from incl.bus.streams import StreamLimits, ensure_streams
from incl.hpo.backend import JetStreamJournalBackend, backend, backend_over, storage
from incl.proto import subjects

STREAM = subjects.STUDIES_STREAM
FAST = journal.JournalConfig(request_timeout=1.0, op_timeout=8.0, retry_initial=0.01, retry_max=0.2,
                             connect_timeout=2.0, reconnect_wait=0.05)


async def _ensure(url: str) -> None:
    async with await connect(url, "test-setup", connect_timeout=2, reconnect_wait=0.1, request_timeout=5) as bus:
        await ensure_streams(bus, StreamLimits())


@pytest.fixture
def url(nats_server: NatsServer) -> str:
    """The server with INCL's streams, created as the controller does."""
    asyncio.run(_ensure(nats_server.url))
    return nats_server.url


@pytest.fixture
def opened(url: str) -> Iterator[list[journal.SyncJournal]]:
    """Journals the test opens, each with its own connection, closed after it."""
    journals: list[journal.SyncJournal] = []
    yield journals
    for j in journals:
        j.close()


def open_journal(url: str, opened: list[journal.SyncJournal], study: str = "s1") -> journal.SyncJournal:
    j = journal.connect(url, STREAM, subjects.study_journal(study), config=FAST)
    opened.append(j)
    return j


def entry(writer: str, i: int) -> dict[str, Any]:
    return {"op_code": 0, "worker_id": writer, "i": i}


def test_appends_are_read_back_in_their_order_and_from_any_number(url: str, opened: list[journal.SyncJournal]) -> None:
    """Read-your-writes: each append is in the very next read; reads from a number return only the rest."""
    writer, reader = open_journal(url, opened), open_journal(url, opened)
    for i in range(10):
        writer.append([entry("w", i), entry("w", i + 100)])
        assert writer.read(0)[-2:] == [entry("w", i), entry("w", i + 100)]
    assert writer.read(0) == reader.read(0) == [e for i in range(10) for e in (entry("w", i), entry("w", i + 100))]
    assert reader.read(18) == [entry("w", 9), entry("w", 109)]
    assert reader.read(20) == []


def test_two_writers_on_two_connections_agree_on_one_order(url: str, opened: list[journal.SyncJournal]) -> None:
    """200 appends each from two threads: nothing lost or doubled, every reader sees the same order, and each
    writer's appends keep theirs."""
    writers = {"a": open_journal(url, opened), "b": open_journal(url, opened)}
    failures: list[BaseException] = []

    def write(name: str) -> None:
        try:
            for i in range(200):
                writers[name].append([entry(name, i)])
                assert entry(name, i) in writers[name].read(0)  # read-your-writes, while the other writes
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(name,)) for name in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not failures, failures
    orders = [writers["a"].read(0), writers["b"].read(0), open_journal(url, opened).read(0)]
    assert orders[0] == orders[1] == orders[2]
    assert len(orders[0]) == 400
    for name in writers:
        assert [e["i"] for e in orders[0] if e["worker_id"] == name] == list(range(200))


class LostFirstAck:
    """A Bus whose first conditional publish is stored but its ack lost (as when NATS restarts at that moment)."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self.lost = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bus, name)

    async def publish_after(self, subject: str, data: bytes, **kwargs: Any) -> Any:
        stored = await self._bus.publish_after(subject, data, **kwargs)
        if not self.lost:
            self.lost += 1
            raise TimeoutError("the ack was lost")
        return stored


async def test_an_append_retried_after_a_lost_ack_is_stored_once(url: str) -> None:
    """The retry carries the same msg id: the journal finds its own message instead of storing it again."""
    async with await connect(url, "test", connect_timeout=2, reconnect_wait=0.1, request_timeout=5) as bus:
        flaky = LostFirstAck(bus)
        log = journal.Journal(flaky, STREAM, subjects.study_journal("s1"), FAST)  # type: ignore[arg-type]
        await log.append([entry("w", 0)])
        await log.append([entry("w", 1)])
        assert flaky.lost == 1
        fresh = journal.Journal(bus, STREAM, subjects.study_journal("s1"), FAST)
        assert await fresh.read(0) == [entry("w", 0), entry("w", 1)]
        # Within the duplicate window the stream itself answers a retry with the first copy's sequence.
        again = await bus.publish_after(subjects.study_journal("s2"), b"[]", last_seq=0, msg_id="m", timeout=1)
        dup = await bus.publish_after(subjects.study_journal("s2"), b"[]", last_seq=again.seq, msg_id="m", timeout=1)
        assert (dup.seq, dup.duplicate) == (again.seq, True)


def test_nats_killed_and_restarted_mid_appends_loses_and_doubles_nothing(
        url: str, nats_server: NatsServer, opened: list[journal.SyncJournal]) -> None:
    """kill -9 of NATS while a writer appends, then NATS restarted on its store: the writer carries on by itself
    and the journal holds every append exactly once, in order."""
    writer = open_journal(url, opened)
    done = threading.Event()
    count = 300
    failures: list[BaseException] = []

    def write() -> None:
        try:
            for i in range(count):
                writer.append([entry("w", i)])
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failures.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=write)
    thread.start()
    deadline = time.monotonic() + 5
    while len(writer.read(0)) < 100 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not done.is_set(), "the writer finished before NATS was killed"
    nats_server.kill()  # SIGKILL, mid-append
    nats_server.start()  # same port, same store
    assert done.wait(9), "the writer did not finish after NATS came back"
    thread.join()
    assert not failures, failures
    assert [e["i"] for e in open_journal(url, opened).read(0)] == list(range(count))


def test_garbage_on_the_subject_is_skipped_with_a_warning(url: str, opened: list[journal.SyncJournal]) -> None:
    """Bytes that are not a journal message do not break the journal, nor shift the numbers of its entries."""
    writer = open_journal(url, opened)
    writer.append([entry("w", 0)])

    async def publish_garbage() -> None:
        async with await connect(url, "test", connect_timeout=2, reconnect_wait=0.1, request_timeout=5) as bus:
            for data in (b"\xff\x00 not json", b'{"not": "a list"}', b"[1, 2]"):
                await bus.publish_durable(subjects.study_journal("s1"), data)

    with structlog.testing.capture_logs() as logs:
        asyncio.run(publish_garbage())
        writer.append([entry("w", 1)])  # refused (the garbage came last), caught up, appended after it
        assert writer.read(0) == [entry("w", 0), entry("w", 1)]
    assert [e["reason"][:8] for e in logs if e["event"] == "journal_message_skipped"] == [
        "not JSON", "not a li", "not a li"]
    assert open_journal(url, opened).read(1) == [entry("w", 1)]


def optuna_study(url: str, study_id: str) -> tuple[optuna.Study, JetStreamJournalBackend]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    log_backend = backend(url, study_id, timeout=8.0, journal_subject=subjects.study_journal(study_id))
    study = optuna.create_study(study_name=study_id, storage=optuna.storages.JournalStorage(log_backend))
    study.optimize(lambda t: (t.suggest_float("x", -3, 3) - 1) ** 2 + t.suggest_int("n", 0, 3), n_trials=20,
                   n_jobs=4)
    return study, log_backend


def summary(study: optuna.Study) -> list[tuple[int, str, dict[str, Any], float | None]]:
    return sorted((t.number, t.state.name, t.params, t.value) for t in study.trials)


def test_plain_optuna_runs_a_study_and_loads_it_from_a_new_connection_and_another_process(url: str) -> None:
    """20 trials from 4 threads; `optuna.load_study` over a new connection, and `incl.hpo.storage` in a separate
    Python, see exactly those 20 with the same params and values."""
    study, log_backend = optuna_study(url, "e2e")
    try:
        reopened = storage(url, "e2e", journal_subject=subjects.study_journal("e2e"))
        loaded = optuna.load_study(study_name="e2e", storage=reopened)
        assert len(loaded.trials) == 20
        assert summary(loaded) == summary(study)
        assert {t.state.name for t in loaded.trials} == {"COMPLETE"}
        script = ("import json, optuna, incl.hpo; optuna.logging.set_verbosity(optuna.logging.WARNING); "
                  "s = optuna.load_study(study_name='e2e', storage=incl.hpo.storage("
                  f"{url!r}, 'e2e', journal_subject='incl.studies.e2e')); "
                  "print(json.dumps(sorted([t.number, t.params, t.value] for t in s.trials)))")
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == [[n, p, v] for n, _, p, v in summary(study)]
    finally:
        log_backend.close()


async def test_the_controllers_flavour_runs_on_its_own_bus_from_a_worker_thread(bus: Bus) -> None:
    """Over the controller's connection and loop: usable from a worker thread, refused (not hung) on the loop."""
    await ensure_streams(bus, StreamLimits())
    log_backend = backend_over(bus, asyncio.get_running_loop(), subjects.study_journal("ctl"), config=FAST)
    await asyncio.to_thread(log_backend.append_logs, [entry("w", 0)])
    assert await asyncio.to_thread(log_backend.read_logs, 0) == [entry("w", 0)]
    with pytest.raises(RuntimeError, match="own event loop"):
        log_backend.read_logs(0)


def test_optuna_dashboard_serves_the_study(url: str, tmp_path: Any) -> None:
    """optuna-dashboard's own server, given `incl.hpo.storage`, lists the study (skipped where it is not
    installed: it is no dependency of ours)."""
    pytest.importorskip("optuna_dashboard")
    _, log_backend = optuna_study(url, "dash")
    log_backend.close()
    port = free_port()
    script = ("import optuna_dashboard, incl.hpo; optuna_dashboard.run_server(incl.hpo.storage("
              f"{url!r}, 'dash', journal_subject='incl.studies.dash'), host='127.0.0.1', port={port})")
    with open(tmp_path / "dashboard.log", "wb") as out:
        server = subprocess.Popen([sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline, body = time.monotonic() + 8, None
        while body is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=1) as reply:
                    body = json.loads(reply.read())
            except OSError:
                time.sleep(0.1)
        assert body is not None, (tmp_path / "dashboard.log").read_text()
        studies = {s["study_name"]: s for s in body["study_summaries"]}
        assert "dash" in studies
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{studies['dash']['study_id']}",
                                    timeout=2) as reply:
            assert len(json.loads(reply.read())["trials"]) == 20
    finally:
        server.kill()
        server.wait()


def test_a_read_only_journal_reads_a_begun_study_and_never_begins_one(url: str,
                                                                      opened: list[journal.SyncJournal]) -> None:
    """A standby's journals (`ReadOnly`, studies loaded, not created): a study the leader began is read with its
    trials; one whose journal is not begun is not there (KeyError), and nothing is written either way."""
    from optuna.storages import JournalStorage

    from incl.hpo.backend import ReadOnly
    from incl.hpo.engine import StudyEngine
    from incl.proto.errors import Unavailable
    from incl.proto.spec import load_spec

    hpo = load_spec({"run": "true", "hpo": {"metric": "loss", "trials": 2,
                                            "params": {"x": {"type": "float", "low": 0, "high": 1}}}}).hpo
    assert hpo is not None
    leader = JournalStorage(JetStreamJournalBackend(open_journal(url, opened, "s1")))
    optuna.create_study(storage=leader, study_name="s1").optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    journal_s1 = open_journal(url, opened, "s1")
    written = len(journal_s1.read(0))
    standby = JournalStorage(ReadOnly(JetStreamJournalBackend(journal_s1)))
    assert len(StudyEngine(standby, "s1", hpo, seed=1, create=False).trials()) == 2
    assert len(journal_s1.read(0)) == written
    fresh = open_journal(url, opened, "s2")
    with pytest.raises(KeyError):
        StudyEngine(JournalStorage(ReadOnly(JetStreamJournalBackend(fresh))), "s2", hpo, seed=1, create=False)
    with pytest.raises(Unavailable):  # and were it asked to write, it would refuse
        ReadOnly(JetStreamJournalBackend(fresh)).append_logs([entry("w", 0)])
    assert fresh.read(0) == []
