"""The durable work-queue consumer loop, and the dead-letter stream for what it cannot handle."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import TypeVar

import structlog

from incl.bus import probe
from incl.bus.connection import Bus, Delivery, Pull
from incl.bus.retry import TRANSIENT
from incl.proto import subjects
from incl.proto.codec import Decoder, encode
from incl.proto.errors import DecodeError
from incl.proto.messages import DeadLetter

T = TypeVar("T")

log = structlog.get_logger()

DEAD_LETTER_MAX_DATA = 64 * 1024


async def park(bus: Bus, source: str, msg: Delivery, error: str, *, timeout: float) -> None:
    """Keep `msg` in the dead-letter stream with why it failed, and terminate it in its own stream. Parking is
    best effort (a few tries): a message that cannot even be parked is logged and terminated all the same."""
    probe.parked(source)
    letter = DeadLetter(source=source, subject=msg.subject, error=error[:2000], data=msg.data[:DEAD_LETTER_MAX_DATA],
                        size=len(msg.data), ts=time.time())
    for attempt in range(3):
        try:
            await bus.publish_durable(subjects.dead(source), encode(letter), timeout=timeout)
            break
        except TRANSIENT as exc:
            log.warning("park_failed", source=source, attempt=attempt, error=repr(exc))
            await asyncio.sleep(0.1 * 2 ** attempt)
    try:
        await msg.term()
    except TRANSIENT as exc:
        log.warning("term_failed", source=source, error=repr(exc))


async def consume(bus: Bus, sub: Pull, source: str, decoder: Decoder[T], handle: Callable[[T], Awaitable[None]], *,
                  batch: int, timeout: float, backoff: float, lane: Callable[[T], Hashable] | None = None) -> None:
    """Pull messages for ever: decode, handle in order, ack. A message that does not decode, or whose handler
    fails with anything but a transient NATS error, is that message's failure: logged with the message, parked
    in the dead-letter stream, and terminated; the loop goes on. A message whose ack is lost is delivered
    again, so `handle` must be idempotent.

    With `lane`, the messages of one fetched batch are handled in order only within a lane (e.g. one job's
    events) and lanes side by side, so that their round trips (a record write each) overlap; the next batch is
    fetched once all are done."""
    applied = probe.applied(source)

    async def one(msg: Delivery, item: T) -> None:
        try:
            await handle(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one message's failure must not end the daemon
            log.exception("message_parked", subject=msg.subject, message=_describe(item))
            await park(bus, source, msg, f"{type(exc).__name__}: {exc}", timeout=timeout)
            return
        applied()
        try:
            await msg.ack()
        except TRANSIENT as exc:
            log.debug("ack_failed", error=repr(exc))

    async def in_order(items: list[tuple[Delivery, T]]) -> None:
        for msg, item in items:
            await one(msg, item)

    while True:
        try:
            msgs = await sub.fetch(batch, timeout=timeout)
        except TRANSIENT as exc:
            log.debug("fetch_failed", error=repr(exc))
            await asyncio.sleep(backoff)
            continue
        lanes: dict[Hashable, list[tuple[Delivery, T]]] = {}
        for msg in msgs:
            try:
                item = decoder.decode(msg.data)
            except DecodeError as exc:
                log.warning("message_dropped", subject=msg.subject, size=len(msg.data), error=str(exc))
                await park(bus, source, msg, str(exc), timeout=timeout)
                continue
            if lane is None:
                await one(msg, item)
            else:
                lanes.setdefault(lane(item), []).append((msg, item))
        if len(lanes) == 1:
            await in_order(next(iter(lanes.values())))
        elif lanes:
            await asyncio.gather(*(in_order(items) for items in lanes.values()))


def _describe(item: object) -> str:
    """A message for a log line: its type and fields, bounded."""
    text = repr(item)
    return text if len(text) <= 500 else text[:500] + f"... ({len(text)} chars)"
