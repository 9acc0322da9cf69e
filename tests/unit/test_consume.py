"""The consume loop on a real NATS server: one message's failure parks that message and the loop goes on;
the daemon kit's waits end when a sibling task fails (no half-dead daemon)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats
import pytest
from nats.js import api

from incl.bus.consume import consume
from incl.controller.store import Records
from incl.proto import subjects
from incl.proto.codec import Decoder, encode
from incl.proto.messages import DeadLetter
from incl.bus.streams import StreamLimits, ensure_buckets, ensure_streams


class Item(msgspec.Struct, frozen=True):
    n: int


@pytest.fixture
async def js(nats_server: Any) -> AsyncIterator[Any]:
    nc = await nats.connect(nats_server.url)
    js = nc.jetstream()
    await ensure_streams(js, StreamLimits())
    yield js
    await nc.close()


async def test_a_failing_handler_parks_its_message_and_the_next_ones_are_handled(js: Any) -> None:
    handled: list[int] = []

    async def handle(item: Item) -> None:
        if item.n == 2:
            raise RuntimeError("cannot handle two")
        handled.append(item.n)

    for data in (encode(Item(1)), encode(Item(2)), b"\xc1", encode(Item(3))):
        await js.publish(subjects.events("a1"), data)
    sub = await js.pull_subscribe(f"{subjects.EVENTS_PREFIX}.*", durable="test", stream=subjects.EVENTS_STREAM,
                                  config=api.ConsumerConfig(ack_wait=5, max_deliver=-1))
    loop = asyncio.create_task(consume(js, sub, "test", Decoder(Item), handle, batch=10, timeout=0.2, backoff=0.1))
    try:
        while len(handled) < 2:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    finally:
        loop.cancel()
    assert handled == [1, 3]
    dead = await js.pull_subscribe(subjects.dead("test"), stream=subjects.DEAD_STREAM)
    letters = [Decoder(DeadLetter).decode(m.data) for m in await dead.fetch(10, timeout=1)]
    assert [(d.data, d.source) for d in letters] == [(encode(Item(2)), "test"), (b"\xc1", "test")]
    assert "RuntimeError: cannot handle two" in letters[0].error
    info = await js.stream_info(subjects.EVENTS_STREAM)
    assert info.state.messages == 0  # nothing left to redeliver into a crash loop


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


async def test_loading_never_takes_a_short_listing_for_an_empty_store(nats_server: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        kv = (await ensure_buckets(nc.jetstream()))[subjects.JOBS_BUCKET]
        for n in range(3):
            await kv.put(f"k{n}", encode(Item(n)))  # type: ignore[attr-defined]
        real_keys, calls = kv.keys, []  # type: ignore[attr-defined]

        async def flaky_keys() -> list[str]:
            calls.append(1)
            if len(calls) == 1:
                raise nats.js.errors.NoKeysError
            return await real_keys()

        monkeypatch.setattr(kv, "keys", flaky_keys)
        records: Records[Item] = Records(kv, Item, key=lambda i: f"k{i.n}")  # type: ignore[arg-type]
        await records.load(pause=0.01)
        assert sorted(i.n for i in records) == [0, 1, 2] and len(calls) == 2
    finally:
        await nc.close()
