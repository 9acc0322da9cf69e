"""A study's Optuna storage: Optuna's own `JournalStorage` over the study's journal on the bus.

No database: the study is its journal (`incl.studies.<team>.<owner>.<study_id>` in stream INCL_STUDIES), so plain
Optuna opens it from anywhere NATS is reachable:

    optuna.load_study(study_name=study_id, storage=incl.hpo.storage(nats_url, study_id))

The controller, which calls Optuna from worker threads while its event loop runs, uses `backend_over` on its own
connection instead.
"""

from __future__ import annotations

import asyncio
import weakref
from pathlib import Path
from typing import Any

from optuna.storages import JournalStorage
from optuna.storages.journal import BaseJournalBackend
from optuna.storages.journal._storage import JournalOperation

from incl.auth.keys import read_creds
from incl.bus import journal
from incl.bus.client import current_user, resolve_ca, resolve_creds
from incl.bus.connection import Bus
from incl.proto import subjects
from incl.proto.errors import Unavailable
from incl.proto.messages import Envelope
from incl.proto.studies import GetStudyReply, GetStudyRequest

_OP_CODES = frozenset(int(op) for op in JournalOperation)


def is_optuna_log(entry: dict[str, Any]) -> bool:
    """What Optuna's replay can apply; a journal message with anything else is skipped (it would stop the replay)."""
    op_code = entry.get("op_code")
    return isinstance(op_code, int) and op_code in _OP_CODES and isinstance(entry.get("worker_id"), str)


class JetStreamJournalBackend(BaseJournalBackend):
    """Optuna's journal backend on a study's journal: `append_logs` is one atomic, ordered append; `read_logs`
    sees every append acknowledged before it (read-your-writes) in the one order every reader sees."""

    def __init__(self, log: journal.SyncJournal) -> None:
        self._log = log

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        return self._log.read(log_number_from)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        self._log.append(logs)

    def close(self) -> None:
        self._log.close()


class ReadOnly(BaseJournalBackend):
    """A journal read, never written: a standby controller's (it answers reads; only the leader drives studies).
    Open studies over it with `optuna.load_study`: Optuna's create-or-load appends even for a study that exists."""

    def __init__(self, inner: JetStreamJournalBackend) -> None:
        self._inner = inner

    def read_logs(self, log_number_from: int) -> list[dict[str, Any]]:
        return self._inner.read_logs(log_number_from)

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        raise Unavailable("a standby controller writes nothing to a study's journal")

    def close(self) -> None:
        self._inner.close()


def backend(nats_url: str, study_id: str, *, timeout: float = 10.0, creds: Path | None = None,
            tls_ca: Path | None = None, journal_subject: str | None = None) -> JetStreamJournalBackend:
    """A backend with its own NATS connection, as the identity in `creds` (default: the CLI's, `resolve_creds`),
    verifying a TLS server against `tls_ca` (default: the CLI's, `resolve_ca`); every wait (connecting, one append
    or read) is bounded by `timeout`. `close()` it when done. The controller says where the study's journal is
    (and refuses, in one line, a study the caller may not read); the NATS server lets the caller read only the
    journals of their own studies and their teams'. `journal_subject`: where the journal is, when there is no
    controller to ask (a journal kept outside INCL's studies)."""
    config = journal.JournalConfig(connect_timeout=timeout, op_timeout=timeout, request_timeout=min(timeout, 5.0),
                                   direct=True)
    found = resolve_creds(creds)
    user = (read_creds(found).name if found is not None else None) or current_user()

    async def where(bus: Bus) -> str:
        req = GetStudyRequest(meta=Envelope.new(f"incl-study:{user}"), study_id=study_id, brief=True)
        reply = await bus.request(subjects.user_api(user, subjects.GET_STUDY), req, GetStudyReply,
                                  config.request_timeout)
        return reply.summary.study.journal_subject

    return JetStreamJournalBackend(journal.connect(nats_url, subjects.STUDIES_STREAM, journal_subject or where,
                                                   config=config,
                                                   accept=is_optuna_log, name=f"incl-study-{study_id}",
                                                   creds=found, tls_ca=resolve_ca(tls_ca)))


def backend_over(bus: Bus, loop: asyncio.AbstractEventLoop, subject: str, *,
                 config: journal.JournalConfig | None = None) -> JetStreamJournalBackend:
    """A backend on the controller's own connection, whose event loop `loop` runs in another thread: build and
    use it from a worker thread (`asyncio.to_thread`), never on the loop itself. `subject`: the study's journal
    (`Study.journal_subject`)."""
    return JetStreamJournalBackend(journal.over(bus, loop, subjects.STUDIES_STREAM, subject, config=config,
                                                accept=is_optuna_log))


def storage(nats_url: str, study_id: str, *, timeout: float = 10.0, creds: Path | None = None,
            tls_ca: Path | None = None, journal_subject: str | None = None) -> JournalStorage:
    """The study's Optuna storage from anywhere NATS is reachable (a laptop, a notebook). Its connection closes
    when the storage is garbage-collected, or at exit."""
    log_backend = backend(nats_url, study_id, timeout=timeout, creds=creds, tls_ca=tls_ca,
                          journal_subject=journal_subject)
    try:
        result = JournalStorage(log_backend)
    except BaseException:
        log_backend.close()
        raise
    weakref.finalize(result, log_backend.close)
    return result
