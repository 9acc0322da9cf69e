"""A job's live events as server-sent events: log batches, metric batches and changes of its record.

Each connection has its own followers (one per subject, from the stream's start) feeding one bounded queue,
and one writer draining it to the socket. A follower waits at most `slow_client_after` for room in the queue;
a client slower than that is dropped, so a stalled tab holds only its own followers, never the server's other
work or other tabs. The browser reconnects by itself, sending the id of the last event it got: an id counts
the log and metric batches sent so far (`<logs>.<metrics>`), and the new connection skips exactly those, so
the tab resumes where it was, with nothing lost or repeated. `?since=<logs>.<metrics>` does the same for a first
connection (a page that drew the metrics it already read from /metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncGenerator
from typing import Any, NamedTuple

import msgspec
import structlog
from aiohttp import web

from incl.bus.client import Client
from incl.proto.messages import TERMINAL, LogBatch, MetricBatch
from incl.web.config import WebConfig
from incl.web.errors import BadQuery
from incl.web.metrics import json_number

log = structlog.get_logger()


class Since(NamedTuple):
    logs: int
    metrics: int

    def __str__(self) -> str:
        return f"{self.logs}.{self.metrics}"


def parse_since(value: str | None, name: str) -> Since:
    if not value:
        return Since(0, 0)
    parts = value.split(".")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise BadQuery(name, "not an event id this server gave (<logs>.<metrics>)")
    return Since(int(parts[0]), int(parts[1]))


class Event(NamedTuple):
    kind: str  # "log" | "metric" | "job" | "done" (a follower finished; never sent)
    data: bytes


class SlowClient(Exception):
    """The client left its queue full past `slow_client_after`."""


class EventQueue:
    """Events waiting for one client, bounded in bytes (one log batch can be hundreds of kilobytes): a put waits
    while more than `max_bytes` wait, unless none does (an event larger than the bound still passes, alone)."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._items: deque[Event] = deque()
        self._bytes = 0
        self._changed = asyncio.Condition()

    async def put(self, event: Event) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: not self._items or self._bytes + len(event.data) <= self._max)
            self._items.append(event)
            self._bytes += len(event.data)
            self._changed.notify_all()

    async def get(self) -> Event:
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._items))
            event = self._items.popleft()
            self._bytes -= len(event.data)
            self._changed.notify_all()
            return event


def log_event(batch: LogBatch) -> bytes:
    lines = [[ln.ts, int(ln.stream), ln.data.decode("utf-8", "replace"), ln.partial] for ln in batch.lines]
    return json.dumps({"attempt": batch.attempt, "rank": batch.rank, "lines": lines}).encode()


def metric_event(batch: MetricBatch) -> bytes:
    points = [[p.ts, p.step, {k: json_number(v) for k, v in p.values.items()}] for p in batch.points]
    return json.dumps({"attempt": batch.attempt, "rank": batch.rank, "points": points}).encode()


def frame(kind: str, data: bytes, event_id: str | None) -> bytes:
    """One SSE event. `data` is one line of JSON (json.dumps escapes every newline in it)."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\n".encode() + b"data: " + data + b"\n\n"


class JobStream:
    def __init__(self, client: Client, cfg: WebConfig, job_id: str, since: Since) -> None:
        self._client, self._cfg, self._job_id, self._since = client, cfg, job_id, since
        self._queue = EventQueue(cfg.stream_queue_bytes)

    async def _put(self, event: Event) -> None:
        try:
            await asyncio.wait_for(self._queue.put(event), self._cfg.slow_client_after)
        except TimeoutError:
            raise SlowClient from None

    async def _batches(self, kind: str, batches: AsyncGenerator[Any, None], skip: int) -> None:
        async with contextlib.aclosing(batches):
            async for batch in batches:
                if skip > 0:
                    skip -= 1
                    continue
                await self._put(Event(kind, log_event(batch) if kind == "log" else metric_event(batch)))
        await self._put(Event("done", b""))

    async def _states(self) -> None:
        """The job's record whenever it changes, until it has ended."""
        seen: float | None = None
        while True:
            job = await self._client.job(self._job_id)
            if job.updated_at != seen:
                seen = job.updated_at
                await self._put(Event("job", msgspec.json.encode(job)))
            if job.state in TERMINAL:
                break
            await asyncio.sleep(self._cfg.state_poll)
        await self._put(Event("done", b""))

    async def _write(self, resp: web.StreamResponse) -> None:
        logs, metrics = self._since
        await resp.write(f"retry: {self._cfg.stream_retry_ms}\n\n".encode())
        done = 0
        while done < 3:
            try:
                event = await asyncio.wait_for(self._queue.get(), self._cfg.stream_keepalive)
            except TimeoutError:
                await resp.write(b": keepalive\n\n")
                continue
            event_id = None
            if event.kind == "done":
                done += 1
                continue
            if event.kind == "log":
                logs += 1
                event_id = str(Since(logs, metrics))
            elif event.kind == "metric":
                metrics += 1
                event_id = str(Since(logs, metrics))
            await resp.write(frame(event.kind, event.data, event_id))
        await resp.write(frame("end", b"{}", None))

    async def run(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        resp.force_close()  # one stream per connection: its end (or a drop) closes the connection
        await resp.prepare(request)
        poll = self._cfg.stream_poll
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._batches("log", self._client.log_batches(self._job_id, True, poll),
                                             self._since.logs))
                tg.create_task(self._batches("metric", self._client.metric_batches(self._job_id, True, poll),
                                             self._since.metrics))
                tg.create_task(self._states())
                tg.create_task(self._write(resp))
        except* SlowClient:
            log.info("web_stream_dropped", job_id=self._job_id, why="slow_client",
                     queue_bytes=self._cfg.stream_queue_bytes)
            # At once, with what is still unsent: a client that does not read would hold a graceful close open.
            # It resumes from the last event it got.
            if request.transport is not None:
                request.transport.abort()
        except* ConnectionError:
            pass  # the browser went away (a closed tab, or a reconnect of its own)
        return resp
