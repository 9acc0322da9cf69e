"""The controller's buckets on a real NATS server: compare-and-set writes raise our own errors, and a key
listing that comes back short is never taken for an empty store (which would forget every job)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from incl.bus.connection import Bus
from incl.bus.kv import Bucket, BucketUnreadable, KeyExists, WrongRevision
from incl.bus.streams import ensure_buckets
from incl.controller.store import Records
from incl.proto import subjects
from incl.proto.codec import encode


class Item(msgspec.Struct, frozen=True):
    n: int


@pytest.fixture
async def buckets(bus: Bus) -> dict[str, Bucket]:
    return await ensure_buckets(bus)


class ShortListing:
    """A bucket's nats KeyValue whose first `failures` key listings fail with `error` (or, with None, come back
    empty), as nats-py's listing does now and then while the bucket holds records."""

    def __init__(self, real: Any, failures: int, error: BaseException | None) -> None:
        self._real, self._left, self._error = real, failures, error
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def keys(self) -> list[str]:
        self.calls += 1
        if self._left:
            self._left -= 1
            if self._error is not None:
                raise self._error
            return []
        return list(await self._real.keys())


async def empty_listing_error(bucket: Bucket) -> BaseException:
    """The exception nats-py raises when it lists the keys of an empty bucket (its NoKeysError), taken from a
    real one so that no test imports nats."""
    with pytest.raises(Exception) as caught:
        await bucket._kv.keys()
    assert type(caught.value).__name__ == "NoKeysError", caught.value
    return caught.value


async def test_create_and_update_are_compare_and_set(buckets: dict[str, Bucket]) -> None:
    kv = buckets[subjects.JOBS_BUCKET]
    first = await kv.create("k", b"one")
    with pytest.raises(KeyExists):
        await kv.create("k", b"again")
    second = await kv.update("k", b"two", last=first)
    with pytest.raises(WrongRevision):
        await kv.update("k", b"stale", last=first)
    assert await kv.get("k") == (b"two", second)
    assert await kv.get("missing") is None


@pytest.mark.parametrize("fails_with", ["no_keys_error", "empty_list"])
async def test_loading_never_takes_a_short_listing_for_an_empty_store(buckets: dict[str, Bucket],
                                                                      fails_with: str) -> None:
    kv = buckets[subjects.JOBS_BUCKET]
    error = await empty_listing_error(kv) if fails_with == "no_keys_error" else None
    for n in range(3):
        await kv.put(f"k{n}", encode(Item(n)))
    kv._kv = flaky = ShortListing(kv._kv, failures=1, error=error)  # type: ignore[assignment]
    assert sorted(await kv.keys(pause=0.01)) == ["k0", "k1", "k2"] and flaky.calls == 2


class ShortWatch:
    """A bucket's nats KeyValue whose first `failures` watches end their first part early, having delivered only
    `deliver` of the values (the same failure as a short listing, in the one-pass read)."""

    def __init__(self, real: Any, failures: int, deliver: int = 0) -> None:
        self._real, self._left, self._deliver = real, failures, deliver
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def watchall(self) -> Any:
        self.calls += 1
        real = await self._real.watchall()
        if not self._left:
            return real
        self._left -= 1
        deliver = self._deliver

        class Short:
            async def __aiter__(self) -> Any:
                n = 0
                async for entry in real:
                    if entry is None or n == deliver:
                        break
                    n += 1
                    yield entry
                yield None

            async def stop(self) -> None:
                await real.stop()

        return Short()


@pytest.mark.parametrize("failures", [0, 1, 99])
async def test_records_load_in_one_pass_and_never_from_a_short_one(buckets: dict[str, Bucket], failures: int) -> None:
    """Every record as it is now (a deleted one absent), whether the one-pass read is whole at once, after a short
    pass, or never (then key by key)."""
    kv = buckets[subjects.JOBS_BUCKET]
    for n in range(5):
        await kv.put(f"k{n}", encode(Item(n)))
    await kv.put("k1", encode(Item(11)))
    await kv.delete("k3")
    kv._kv = flaky = ShortWatch(kv._kv, failures=failures, deliver=2)  # type: ignore[assignment]
    records: Records[Item] = Records(kv, Item, key=lambda i: f"k{i.n}")
    await records.load()
    assert sorted(i.n for i in records) == [0, 2, 4, 11]
    assert flaky.calls == (1 if failures == 0 else 2 if failures == 1 else 5)


async def test_a_bucket_whose_records_never_list_is_unreadable_not_empty(buckets: dict[str, Bucket]) -> None:
    kv = buckets[subjects.JOBS_BUCKET]
    await kv.put("k0", encode(Item(0)))
    kv._kv = ShortListing(kv._kv, failures=99, error=None)  # type: ignore[assignment]
    with pytest.raises(BucketUnreadable, match="holds 1 records"):
        await kv.keys(attempts=3, pause=0.01)


async def test_an_empty_bucket_lists_no_keys(buckets: dict[str, Bucket]) -> None:
    assert await buckets[subjects.SUBMITS_BUCKET].keys(pause=0.01) == []


async def test_a_job_an_older_controller_wrote_is_read_with_its_spec_re_parsed(buckets: dict[str, Bucket]) -> None:
    """Before issue 11, `notify` and `gpu_idle` were stored as written (a channel name, durations as text); the
    controller reads such a record through the spec loader rather than dropping it."""
    from incl.controller.wiring import records
    from incl.proto.messages import JobState

    old = {"id": "j-old", "user": "ann", "state": "SUCCEEDED", "submitted_at": 1.0, "updated_at": 2.0,
           "spec": {"run": "python train.py", "notify": "ml-alerts",
                    "gpu_idle": {"threshold": "20%", "window": "15m", "action": "stop"}}}
    await buckets[subjects.JOBS_BUCKET].put("j-old", msgspec.msgpack.encode(old))
    jobs = records(buckets).jobs
    await jobs.load()
    job = jobs.require("j-old")
    assert job.state is JobState.SUCCEEDED and job.spec.run == "python train.py"
    assert job.spec.notify is not None and job.spec.notify.channel == "ml-alerts"
    assert not isinstance(job.spec.gpu_idle, bool) and job.spec.gpu_idle is not None
    assert job.spec.gpu_idle.window == 900.0


async def test_a_copy_fed_by_the_watch_follows_every_write_and_delete(buckets: dict[str, Bucket]) -> None:
    """A standby's records (`Records.observe` over `Bucket.watch`): the values already there, then a marker, then
    each create, update and delete as another writer makes it, with the writer's revision; an undecodable value
    leaves the record as it was."""
    kv = buckets[subjects.JOBS_BUCKET]
    writer = Records(kv, Item, key=lambda i: str(i.n))
    await writer.create(Item(1))
    await writer.create(Item(2))
    copy = Records(kv, Item, key=lambda i: str(i.n), fence=lambda: pytest.fail("the copy wrote"))
    changes = kv.watch()
    seen = []
    while (change := await anext(changes)) is not None:
        seen.append(copy.observe(change))
    assert sorted(copy, key=lambda i: i.n) == [Item(1), Item(2)] and (None, Item(1)) in seen

    async def next_change() -> tuple[Item | None, Item | None]:
        change = await anext(changes)
        assert change is not None
        return copy.observe(change)

    await writer.update("1", lambda i: i)  # no change: no write, nothing watched
    await kv.put("1", encode(Item(1)))
    assert await next_change() == (Item(1), Item(1))
    await kv.put("3", encode(Item(3)))
    assert await next_change() == (None, Item(3))
    await kv.put("3", b"\xc1 not msgpack")
    assert await next_change() == (Item(3), Item(3))
    await writer.delete("2")
    assert await next_change() == (Item(2), None)
    assert sorted(i.n for i in copy) == [1, 3]
    await changes.aclose()
