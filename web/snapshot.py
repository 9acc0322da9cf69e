"""The jobs listing read from the controller, shared by every request for `ttl` seconds.

The controller pages its listing oldest first and filters only by state, user and study; the list a person
wants (newest first, any column's order, a text search) needs every job. Reading 10,000 jobs is dozens of
requests, so one read serves all the requests that come within `ttl` of it, and requests arriving while a read
is under way wait for that read instead of starting their own. This is a moment's copy, never a store: nothing
is kept past `ttl`, and a job's own page reads the controller directly.
"""

from __future__ import annotations

import asyncio
import time

from incl.bus.client import Client
from incl.web.listing import Row, row


class JobsSnapshot:
    def __init__(self, client: Client, ttl: float) -> None:
        self._client, self._ttl = client, ttl
        self._rows: list[Row] = []
        self._read_at = -float("inf")
        self._reading: asyncio.Task[list[Row]] | None = None

    async def rows(self) -> list[Row]:
        if time.monotonic() - self._read_at < self._ttl:
            return self._rows
        if self._reading is None:
            self._reading = asyncio.create_task(self._read())
            self._reading.add_done_callback(self._done)
        # shield: a browser that goes away cancels its request, not the read the others wait on
        return await asyncio.shield(self._reading)

    def _done(self, task: asyncio.Task[list[Row]]) -> None:
        self._reading = None
        if not task.cancelled() and task.exception() is None:
            self._rows, self._read_at = task.result(), time.monotonic()

    async def _read(self) -> list[Row]:
        reply = await self._client.jobs_reply()
        return [row(j, reply.gpu_util.get(j.id)) for j in reply.jobs]

    async def close(self) -> None:
        if self._reading is not None:
            self._reading.cancel()
