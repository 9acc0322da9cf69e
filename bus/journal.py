"""An append-only log on one JetStream subject (an HPO study's Optuna journal), usable from any thread.

Why it reads the way it does:
- One message per `append`: a call's entries are atomic, never interleaved with another writer's.
- Each append says which message it expects last on the subject (the last this writer has read), so a writer that
  missed another's append is refused, catches up and tries again: every reader sees one total order, and a
  writer's cache of the log is exactly the subject's history (its own append needs no read-back).
- Each append carries a msg id of its own, kept across its retries: a retry after a lost ack (NATS restarted, say)
  is recognised, by the stream's duplicate window or, past it, by finding that id while catching up.
- Reads fetch only what is new: one cheap request says whether anything is; a short-lived consumer reads the rest
  in batches. A message that does not decode (garbage on the subject) is skipped by every reader alike, with a
  warning, so it shifts no entry's number.
- Optuna calls its storage synchronously from any thread: `SyncJournal` runs the async core on an event loop,
  either its own in a daemon thread (`connect`, for a laptop or notebook) or the caller's (`over`, for the
  controller, which calls Optuna from worker threads while its loop runs).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import structlog

from incl.bus import retry
from incl.bus.connection import Bus, Stored, WrongLastSequence
from incl.bus.connection import connect as bus_connect

log = structlog.get_logger()

T = TypeVar("T")
Entry = dict[str, Any]
Accept = Callable[[Entry], bool]


class JournalConfig(msgspec.Struct, frozen=True, kw_only=True):
    request_timeout: float = 5.0  # one NATS request
    op_timeout: float = 30.0  # one append or read, its retries included; then JournalUnavailable
    retry_initial: float = 0.02  # backoff on transient NATS failures (a restart, a reconnect)
    retry_max: float = 1.0
    read_batch: int = 1000  # messages per pull request when catching up
    consumer_inactive: float = 10.0  # the server drops a catch-up consumer its reader abandoned after this
    connect_timeout: float = 10.0  # `connect` only: the first connection (later ones are retried for ever)
    reconnect_wait: float = 0.5  # `connect` only
    close_timeout: float = 5.0  # `connect` only: closing its connection and loop
    direct: bool = False  # probe the last sequence by a direct get (a reader whose rights are scoped by subject)


class JournalUnavailable(Exception):
    """An append or read did not complete in time (NATS unreachable): an append may or may not be stored; the
    next read or append finds out."""


def _decode(stored: Stored, accept: Accept | None, subject: str) -> list[Entry]:
    """A message's entries, or none if it is not what `append` writes (a JSON array of accepted objects)."""
    try:
        entries = json.loads(stored.data)
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        log.warning("journal_message_skipped", subject=subject, seq=stored.seq, reason=f"not JSON: {exc}")
        return []
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        log.warning("journal_message_skipped", subject=subject, seq=stored.seq, reason="not a list of objects")
        return []
    if accept is not None and not all(accept(e) for e in entries):
        log.warning("journal_message_skipped", subject=subject, seq=stored.seq, reason="entries not accepted")
        return []
    return entries


class Journal:
    """The async core over a `Bus`: the subject's entries, cached in memory with the stream sequence read up to.
    `accept` judges each decoded entry; a message with one it rejects is skipped whole."""

    def __init__(self, bus: Bus, stream: str, subject: str, config: JournalConfig | None = None,
                 accept: Accept | None = None) -> None:
        self._bus, self._stream, self._subject = bus, stream, subject
        self._cfg = config or JournalConfig()
        self._accept = accept
        self._entries: list[Entry] = []
        self._seq = 0  # the stream sequence read up to (0: nothing yet)
        self._lock = asyncio.Lock()  # one append or read at a time: they share the cache

    @property
    def config(self) -> JournalConfig:
        return self._cfg

    async def append(self, entries: list[Entry]) -> int:
        """Store `entries` as one message after everything this writer has read; returns its stream sequence."""
        data = json.dumps(entries).encode()
        msg_id = uuid.uuid4().hex
        async with self._deadline("append"), self._lock:
            while True:
                try:
                    stored = await self._retry("journal_append", lambda: self._bus.publish_after(
                        self._subject, data, last_seq=self._seq, msg_id=msg_id, timeout=self._cfg.request_timeout))
                except WrongLastSequence:  # another writer came first, or our own earlier try was stored
                    found = await self._catch_up(msg_id)
                    if found is not None:
                        return found
                    continue
                if stored.duplicate:  # an earlier try was stored: read up to it like anyone else's
                    await self._catch_up(msg_id)
                    return stored.seq
                # Stored right after self._seq: the subject's history is our cache plus this message.
                self._apply(Stored(seq=stored.seq, msg_id=msg_id, data=data))
                return stored.seq

    async def read(self, start: int = 0) -> list[Entry]:
        """The entries from number `start` on (0: all), including every append acknowledged before the call."""
        async with self._deadline("read"), self._lock:
            last = await self._retry("journal_probe", lambda: self._bus.last_seq(
                self._stream, self._subject, self._cfg.request_timeout, direct=self._cfg.direct))
            if last > self._seq:
                await self._catch_up(None)
            return self._entries[start:]

    async def _catch_up(self, msg_id: str | None) -> int | None:
        """Read what was appended since our last read; the sequence of the message with `msg_id` if it is among
        them."""
        new = await self._retry("journal_read", lambda: self._bus.read_subject(
            self._stream, self._subject, self._seq + 1, batch=self._cfg.read_batch,
            timeout=self._cfg.request_timeout, inactive=self._cfg.consumer_inactive))
        found = None
        for stored in new:
            self._apply(stored)
            if msg_id is not None and stored.msg_id == msg_id:
                found = stored.seq
        return found

    def _apply(self, stored: Stored) -> None:
        if stored.seq <= self._seq:
            return
        self._entries.extend(_decode(stored, self._accept, self._subject))
        self._seq = stored.seq

    async def _retry(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        return await retry.forever(what, fn, initial=self._cfg.retry_initial, maximum=self._cfg.retry_max)

    def _deadline(self, what: str) -> _Deadline:
        return _Deadline(self._cfg.op_timeout, f"journal {what} on {self._subject}")


class _Deadline:
    """`asyncio.timeout` that says what did not finish, as JournalUnavailable."""

    def __init__(self, seconds: float, what: str) -> None:
        self._timeout = asyncio.timeout(seconds)
        self._seconds, self._what = seconds, what

    async def __aenter__(self) -> None:
        await self._timeout.__aenter__()

    async def __aexit__(self, *exc: Any) -> None:
        try:
            await self._timeout.__aexit__(*exc)
        except TimeoutError:
            raise JournalUnavailable(f"{self._what}: not done within {self._seconds:g}s (is NATS reachable?)") from None


class _LoopThread:
    """An event loop of our own in a daemon thread, for callers that have none running (a laptop, a notebook)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="incl-journal-loop", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.close()

    def stop(self, timeout: float) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)


class SyncJournal:
    """A blocking, thread-safe facade of a `Journal` running on `loop`; never call it from that loop's thread."""

    def __init__(self, journal: Journal, loop: asyncio.AbstractEventLoop, *,
                 owned: tuple[_LoopThread, Bus] | None = None) -> None:
        self._journal, self._loop, self._owned = journal, loop, owned
        self._closed = False

    def append(self, entries: list[Entry], timeout: float | None = None) -> int:
        """See `Journal.append`; `timeout` defaults to the config's op_timeout (plus one request's)."""
        return self._call(lambda: self._journal.append(entries), timeout)

    def read(self, start: int = 0, timeout: float | None = None) -> list[Entry]:
        """See `Journal.read`."""
        return self._call(lambda: self._journal.read(start), timeout)

    def close(self) -> None:
        """Close the connection and loop `connect` made (a journal `over` a Bus leaves both to their owner)."""
        if self._closed:
            return
        self._closed = True
        if self._owned is not None:
            runner, bus = self._owned
            cfg = self._journal.config
            try:
                asyncio.run_coroutine_threadsafe(bus.close(), self._loop).result(cfg.close_timeout)
            except (concurrent.futures.TimeoutError, OSError) as exc:
                log.warning("journal_close_failed", error=repr(exc))
            finally:
                runner.stop(cfg.close_timeout)

    def _call(self, make: Callable[[], Awaitable[T]], timeout: float | None) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            raise RuntimeError("a SyncJournal was called from its own event loop's thread, where it would wait on "
                               "itself for ever: call it from a worker thread (asyncio.to_thread) or use Journal")
        if self._closed:
            raise RuntimeError("the journal is closed")
        cfg = self._journal.config
        future = asyncio.run_coroutine_threadsafe(_awaited(make), self._loop)
        try:
            return future.result(cfg.op_timeout + cfg.request_timeout if timeout is None else timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise JournalUnavailable("the journal did not answer in time (is its event loop running?)") from None


async def _awaited(make: Callable[[], Awaitable[T]]) -> T:
    """The coroutine is made on the loop, so a refused call leaves none un-awaited."""
    return await make()


def over(bus: Bus, loop: asyncio.AbstractEventLoop, stream: str, subject: str, *,
         config: JournalConfig | None = None, accept: Accept | None = None) -> SyncJournal:
    """A journal on `bus`, whose event loop `loop` runs in another thread (the controller's)."""
    return SyncJournal(Journal(bus, stream, subject, config, accept), loop)


def connect(url: str, stream: str, subject: str | Callable[[Bus], Awaitable[str]], *,
            config: JournalConfig | None = None, accept: Accept | None = None, name: str = "incl-journal",
            creds: Path | None = None, tls_ca: Path | None = None) -> SyncJournal:
    """A journal with its own NATS connection (reconnecting for ever, with the identity in `creds`, a TLS server
    verified against `tls_ca`) on its own loop in a daemon thread; `close()` it when done. `subject`: the journal's,
    or what asks for it on the new connection (the controller knows where a study's journal is)."""
    cfg = config or JournalConfig()
    runner = _LoopThread()

    async def dial() -> tuple[Bus, str]:
        bus = await asyncio.wait_for(
            bus_connect(url, name, connect_timeout=cfg.connect_timeout, reconnect_wait=cfg.reconnect_wait,
                        request_timeout=cfg.request_timeout, max_reconnect_attempts=-1, quiet=True, creds=creds,
                        tls_ca=tls_ca),
            cfg.connect_timeout)
        try:
            return bus, subject if isinstance(subject, str) else await subject(bus)
        except BaseException:
            await bus.close()
            raise

    try:
        bus, found = asyncio.run_coroutine_threadsafe(dial(), runner.loop).result(
            cfg.connect_timeout + cfg.request_timeout + cfg.close_timeout)
    except BaseException:
        runner.stop(cfg.close_timeout)
        raise
    return SyncJournal(Journal(bus, stream, found, cfg, accept), runner.loop, owned=(runner, bus))
