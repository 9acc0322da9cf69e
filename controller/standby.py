"""A standby controller answers the API's reads, from records it keeps warm; writes reach the leader only.

Records. The jobs, agents and studies buckets are each followed by JetStream's own KV watch (`Bucket.watch`: every
key's value, then each change as the server stores it) into `Records` whose fence refuses every write. Models,
share links, the audit trail and dead letters are read from NATS per request, as the leader reads them. The
answers come from the leader's own `Api` class over these records (`wiring.reader`), so the checks of who may see
what (`incl.controller.policy`) are the same code. What only the leader holds in memory is empty on a standby:
agents' heartbeats (their `last_seen` is the one registered), GPU readings, why a queued job waits.

Routing. A request's subject names its caller and verb, `incl.api.user.<name>.<verb>` (the NATS server lets each
user publish under their own name only, so the controller reads the caller from the subject). The leader, for as
long as it leads, serves `incl.api.>`: every verb. A standby serves only `incl.api.user.*.any.<verb>` for each verb in
`subjects.READS`: a write never reaches it, and neither does a plain request, which is the leader's alone. The client
(`incl.bus.client`) asks the leader first; when nothing serves the leader's subject (it died: NATS says so at once,
and while a new leader loads its records), or the leader has not answered within `hedge_after` (0.25 s: paused,
cut off, overloaded), it asks `any.` too, which the standbys answer (the leader, asked already, leaves it), and
takes the first answer. No queue group anywhere: a controller paused by SIGSTOP keeps its subscriptions in NATS
until its connection is dropped (minutes), and a queue group would hand it its share of the requests, unanswered.

Staleness. A standby's records lag the bucket by the watch's delivery time (milliseconds: docs/reliability.md).
A standby answers only a read the leader did not answer in time, so a user sees its copy only while the leader is
gone or slow; a write the leader acknowledged before the read was sent is in that copy, unless it was acknowledged
within about a millisecond of the read (measured) or the watch stalled.
After a reconnect to NATS the watches start afresh (`Controller` restarts `serve`); nats-py re-creates a watch that
missed two heartbeats (10 s). A client that must read its own writes or nothing sets `hedge_after=None`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import structlog

from incl.bus.connection import Bus
from incl.bus.kv import Bucket
from incl.controller import wiring
from incl.controller.config import ControllerConfig
from incl.controller.jobs import Jobs
from incl.controller.store import Records
from incl.proto import subjects
from incl.proto.errors import InclError

log = structlog.get_logger()


class StandbyWrite(InclError):
    """A write reached a standby's records (never by routing: a bug). Raised before anything is sent."""


class WatchEnded(Exception):
    """A watch stopped delivering: the copy would go stale in silence, so it is made afresh."""


async def _all(events: list[asyncio.Event]) -> None:
    for event in events:
        await event.wait()


def refuse_write() -> None:
    raise StandbyWrite("a standby controller writes nothing; the leader does")


class Standby:
    """One warm copy: the watches, then (once every watch has caught up) the read verbs served from it."""

    def __init__(self, cfg: ControllerConfig, bus: Bus, buckets: Mapping[str, Bucket]) -> None:
        self._cfg = cfg
        self._bus = bus
        self._buckets = buckets
        self.stores = wiring.records(buckets, fence=refuse_write, ended_jobs=cfg.ended_jobs_in_memory)
        self._jobs: Jobs | None = None  # the job service over the records, once built (it keeps indexes)

    async def serve(self, handover: asyncio.Event) -> None:
        """Follow the buckets and answer reads until `handover` is set (this controller's term answers the API
        now): then the reads already received are answered, and it returns. Cancelled, it stops at once."""
        stores = self.stores
        followed: list[tuple[str, Records[Any]]] = [
            (subjects.JOBS_BUCKET, stores.jobs), (subjects.AGENTS_BUCKET, stores.agents),
            (subjects.STUDIES_BUCKET, stores.studies)]
        async with asyncio.TaskGroup() as tg:
            caught_up = [asyncio.Event() for _ in followed]
            watches = [tg.create_task(self._follow(self._buckets[bucket], records, event))
                       for (bucket, records), event in zip(followed, caught_up, strict=True)]
            waits = [tg.create_task(_all(caught_up)), tg.create_task(handover.wait())]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for wait in waits:
                wait.cancel()
            if not handover.is_set():
                await self._answer(stores, handover)
            for watch in watches:
                watch.cancel()

    async def _answer(self, stores: wiring.Stores, handover: asyncio.Event) -> None:
        self._jobs, api = wiring.reader(self._cfg, self._bus, self._buckets, stores)
        stops = [await self._bus.serve(subjects.every_user_api_any(verb), "", api.answer)
                 for verb in sorted(subjects.READS)]
        log.info("standby_serving_reads", jobs=len(stores.jobs), agents=len(stores.agents),
                 studies=len(stores.studies))
        drain = False
        try:
            await handover.wait()
            drain = True  # a read that came before the term subscribed is answered here
        finally:
            for stop in stops:
                await stop(drain=drain)

    async def _follow(self, bucket: Bucket, records: Records[Any], caught_up: asyncio.Event) -> None:
        async with contextlib.aclosing(bucket.watch()) as changes:
            async for change in changes:
                if change is None:
                    caught_up.set()
                    continue
                before, after = records.observe(change)
                if records is self.stores.jobs and self._jobs is not None:
                    self._jobs.follow(before, after)
        raise WatchEnded("a bucket's watch ended (the connection closed)")
