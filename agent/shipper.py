"""Ordered, batched, loss-free shipping of a job's log lines and metric points into JetStream.

Items are buffered and published in batches, in order, one publish in flight at a time, each batch with a
`Nats-Msg-Id` so that a retry after an uncertain failure is stored once. While NATS is away the buffer
grows to `buffer_max_bytes`, then `add` waits (the job's output blocks): nothing is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from incl.bus.connection import Bus
from incl.bus.daemon import wait_event
from incl.bus.retry import forever
from incl.proto.codec import encode
from incl.proto.messages import LogLine, Stream

log = structlog.get_logger()



class Shipper:
    def __init__(self, bus: Bus, subject: str, msg_id: str,
                 make_batch: Callable[[int, list[Any]], Any], *, max_items: int, max_bytes: int,
                 buffer_max_bytes: int, flush_interval: float, timeout: float,
                 retry_initial: float, retry_max: float, first_seq: int = 0) -> None:
        self._bus = bus
        self._subject = subject
        self._msg_id = msg_id
        self._make_batch = make_batch
        self._max_items, self._max_bytes = max_items, max_bytes
        self._buffer_max = buffer_max_bytes
        self._flush_interval = flush_interval
        self._timeout = timeout
        self._retry = (retry_initial, retry_max)
        self._items: list[tuple[Any, int]] = []
        self._bytes = 0
        self._seq = first_seq  # a re-adopted job's shipping continues where the crashed agent's ended
        self._full = asyncio.Event()
        self._room = asyncio.Condition()
        self._closing = False
        self._started = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Ship from now on. The shipping task itself starts with the first item: most jobs log no metric, and
        many print nothing, and an idle task still wakes every flush interval."""
        self._started = True
        if self._items:
            self._task = asyncio.create_task(self._run())

    @property
    def seq(self) -> int:
        """The sequence number the next batch gets: how many this subject has had, counting from the first."""
        return self._seq

    async def add(self, items: list[Any], nbytes: int) -> None:
        if self._bytes > self._buffer_max:
            async with self._room:
                await self._room.wait_for(lambda: self._bytes <= self._buffer_max)
        per = nbytes // max(len(items), 1)
        self._items.extend((item, per) for item in items)
        self._bytes += nbytes
        if self._task is None and self._started:
            self._task = asyncio.create_task(self._run())
        if len(self._items) >= self._max_items or self._bytes >= self._max_bytes:
            self._full.set()

    async def close(self) -> None:
        """Ship everything buffered, then stop."""
        self._closing = True
        self._full.set()
        if self._task is None and self._items:  # added before start(): shipped now
            self._task = asyncio.create_task(self._run())
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            if not self._closing:
                await wait_event(self._full, self._flush_interval)
            self._full.clear()
            while self._items:
                await self._ship_one()
            if self._closing:
                return

    async def _ship_one(self) -> None:
        take, size = 0, 0
        for _, n in self._items:
            if take and (take >= self._max_items or size + n > self._max_bytes):
                break
            take, size = take + 1, size + n
        while take > 1 and len(encode([item for item, _ in self._items[:take]])) > self._max_bytes:
            take //= 2  # the callers' size estimates were low (e.g. long metric names): measured, halve
        size = sum(n for _, n in self._items[:take])
        # Built once per batch: a log batch's builder counts the lines it ships.
        data = encode(self._make_batch(self._seq, [item for item, _ in self._items[:take]]))
        msg_id = f"{self._msg_id}.{self._seq}"
        try:
            if len(data) > self._bus.max_payload:
                raise ValueError(f"one item encodes to {len(data)} bytes, over the NATS payload limit")
            await forever(
                "ship_" + self._subject.split(".")[1],
                lambda: self._bus.publish_durable(self._subject, data, msg_id=msg_id, timeout=self._timeout),
                initial=self._retry[0], maximum=self._retry[1],
            )
        except Exception as exc:  # noqa: BLE001 - not transient: this batch fails, the shipping goes on
            log.error("batch_dropped", subject=self._subject, seq=self._seq, items=take, size=len(data),
                      error=repr(exc))
        del self._items[:take]
        self._bytes -= size
        self._seq += 1
        async with self._room:
            self._room.notify_all()


class LineSplitter:
    """Turns raw output chunks into LogLines: split on newlines, carry partial lines, cap very long ones.

    `redact` (the job's secrets, `runner.Redactor`) is applied to the text before it is cut, and `hold` bytes of a
    very long line are kept back at each cut: a value up to `hold + 1` bytes long that a cut (or a chunk boundary)
    would split is whole when the next chunk arrives, and is found."""

    def __init__(self, max_line: int, redact: Callable[[bytes], bytes] | None = None, hold: int = 0) -> None:
        self._max = max_line
        self._redact = redact or (lambda data: data)
        self._hold = max(hold, 0)
        self._partial: dict[Stream, bytes] = {}

    def feed(self, stream: Stream, chunk: bytes, now: float | None = None) -> list[LogLine]:
        ts = time.time() if now is None else now
        data = self._partial.pop(stream, b"") + chunk
        parts = [self._redact(p) for p in data.split(b"\n")]
        rest = parts.pop()
        lines = [LogLine(ts=ts, stream=stream, data=p, partial=partial) for p, partial in self._cap(parts)]
        while len(rest) > self._max + self._hold:  # an endless line is shipped in pieces, not held for ever
            lines.append(LogLine(ts=ts, stream=stream, data=rest[: self._max], partial=True))
            rest = rest[self._max:]
        if rest:
            self._partial[stream] = rest
        return lines

    def flush(self, now: float | None = None) -> list[LogLine]:
        ts = time.time() if now is None else now
        out = [LogLine(ts=ts, stream=s, data=self._redact(d)) for s, d in self._partial.items()]
        self._partial.clear()
        return out

    def _cap(self, parts: list[bytes]) -> list[tuple[bytes, bool]]:
        """Lines with their `partial` flag: a line over the limit becomes pieces, all but the last partial."""
        if all(len(p) <= self._max for p in parts):
            return [(p, False) for p in parts]
        out: list[tuple[bytes, bool]] = []
        for p in parts:
            pieces = [p[i:i + self._max] for i in range(0, max(len(p), 1), self._max)]
            out.extend((piece, i < len(pieces) - 1) for i, piece in enumerate(pieces))
        return out
