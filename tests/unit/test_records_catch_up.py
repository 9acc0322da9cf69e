"""A cache once complete is made complete again from the revision up to which it has seen every write
(`Records.seen`): the records another writer wrote meanwhile, even between two writes of its own, and nothing read
twice over (a controller leading again after a short lapse, instead of reading every record)."""

from __future__ import annotations

import msgspec

from incl.bus.connection import Bus
from incl.bus.kv import Bucket
from incl.controller.store import Records


class Item(msgspec.Struct, frozen=True):
    n: int
    v: str = ""


async def test_a_cache_catches_up_on_every_write_it_missed(bus: Bus) -> None:
    kv = Bucket(await bus.jetstream.create_key_value(bucket="catchup", history=1))
    ours = Records(kv, Item, key=lambda i: str(i.n))
    for n in range(5):
        await ours.create(Item(n))
    await ours.load()
    assert ours.seen == 5
    other = Records(kv, Item, key=lambda i: str(i.n))  # another leader, while ours was away
    await other.load()
    await other.create(Item(10))
    await ours.create(Item(11))  # a write of ours after the one it missed: `seen` stays before the gap
    assert ours.seen == 5 and ours.get("10") is None
    await other.update("2", lambda i: Item(2, "changed"))
    await other.create(Item(12))
    assert await ours.catch_up(timeout=5.0) == 4  # 10, 11 (its own, read again), 2, 12
    assert (ours.get("10"), ours.get("2"), ours.get("12")) == (Item(10), Item(2, "changed"), Item(12))
    assert ours.seen == 9 and len(ours) == 8
    assert await ours.catch_up(timeout=5.0) == 0  # up to date: nothing read
