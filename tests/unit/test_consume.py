"""The consume loop on a real NATS server: one message's failure parks that message and the loop goes on;
the daemon kit's waits end when a sibling task fails (no half-dead daemon)."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import msgspec

from incl.bus.connection import Bus
from incl.bus.consume import consume
from incl.bus.streams import StreamLimits, ensure_streams
from incl.proto import subjects
from incl.proto.codec import Decoder, encode
from incl.proto.messages import DeadLetter


class Item(msgspec.Struct, frozen=True):
    n: int


async def test_a_failing_handler_parks_its_message_and_the_next_ones_are_handled(bus: Bus) -> None:
    await ensure_streams(bus, StreamLimits())
    handled: list[int] = []

    async def handle(item: Item) -> None:
        if item.n == 2:
            raise RuntimeError("cannot handle two")
        handled.append(item.n)

    for data in (encode(Item(1)), encode(Item(2)), b"\xc1", encode(Item(3))):
        await bus.publish_durable(subjects.events("a1"), data)
    pull = await bus.pull(subjects.EVENTS_STREAM, f"{subjects.EVENTS_PREFIX}.*", "test", ack_wait=5)
    loop = asyncio.create_task(consume(bus, pull, "test", Decoder(Item), handle, batch=10, timeout=0.2,
                                       backoff=0.1))
    try:
        while len(handled) < 2:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    finally:
        loop.cancel()
    assert handled == [1, 3]
    dead = await bus.pull(subjects.DEAD_STREAM, subjects.dead("test"), "test-dead", ack_wait=5)
    letters = [Decoder(DeadLetter).decode(d.data) for d in await dead.fetch(10, timeout=1)]
    assert [(d.data, d.source) for d in letters] == [(encode(Item(2)), "test"), (b"\xc1", "test")]
    assert "RuntimeError: cannot handle two" in letters[0].error
    assert (await bus.state(subjects.EVENTS_STREAM)).messages == 0  # nothing left to redeliver into a crash loop


async def test_with_lanes_one_lane_is_handled_in_order_and_lanes_side_by_side(bus: Bus) -> None:
    """The controller's events: one job's in order, different jobs' round trips overlapping; all acked."""
    await ensure_streams(bus, StreamLimits())
    handled: list[int] = []
    running, most = 0, 0

    async def handle(item: Item) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.05 if item.n < 2 else 0)  # the first of each lane is the slowest
        handled.append(item.n)
        running -= 1

    for n in range(6):
        await bus.publish_durable(subjects.events("a1"), encode(Item(n)))
    pull = await bus.pull(subjects.EVENTS_STREAM, f"{subjects.EVENTS_PREFIX}.*", "test", ack_wait=5)
    loop = asyncio.create_task(consume(bus, pull, "test", Decoder(Item), handle, batch=10, timeout=0.2,
                                       backoff=0.1, lane=lambda item: item.n % 2))
    try:
        while len(handled) < 6:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
    finally:
        loop.cancel()
    assert [n for n in handled if n % 2 == 0] == [0, 2, 4] and [n for n in handled if n % 2] == [1, 3, 5]
    assert most == 2
    assert (await bus.state(subjects.EVENTS_STREAM)).messages == 0


SIBLING_FAILS = """
import asyncio
from incl.bus.daemon import wait_event

async def main():
    kick = asyncio.Event()

    async def loop():
        while True:
            await wait_event(kick, 1.0)
            kick.clear()

    async def setter():  # the wait often ends just as the cancellation arrives
        while True:
            kick.set()
            await asyncio.sleep(0)

    async def fails():
        await asyncio.sleep(0.05)
        raise RuntimeError("essential loop died")

    for _ in range(5):
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(setter())
                tg.create_task(loop())
                tg.create_task(fails())
        except ExceptionGroup:
            pass

asyncio.run(main())
"""


def test_a_loop_waiting_on_an_event_ends_when_a_sibling_fails() -> None:
    """On Python 3.11 `asyncio.wait_for(event.wait())` can swallow the TaskGroup's cancellation and hang the
    daemon half-dead (3 runs in 5 with wait_for here); with `wait_event` the group always ends."""
    subprocess.run([sys.executable, "-c", SIBLING_FAILS], check=True, timeout=30)
