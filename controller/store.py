"""Job and agent records in JetStream KV, cached in memory, every write a revision compare-and-set.

The controller rebuilds the cache from the buckets at start; it never holds the only copy of anything. A standby
keeps a cache that writes nothing, fed by the bucket's watch (`observe`, `incl.controller.standby`).

A cache may be bounded (`Retention`): records that will not change again (ended jobs) stay in memory for a window
of the most recently written ones; older ones are read from the bucket when asked for (`read`, `need`, and
`update`, which reads first). `get` and iteration see the records held only. A `Tally` is told of every record
the cache takes in, held or not (counts over the whole store, kept without the records).

A cache knows the revision up to which it has seen every write (`seen`): a controller that leads again after a
short lapse brings its cache up to date from there (`catch_up`: the records written since, one pass over the
bucket's stream from that revision) instead of reading every record again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import msgspec
import structlog

from incl.bus.kv import Bucket, Change, WrongRevision
from incl.proto.codec import Decoder, encode
from incl.proto.errors import DecodeError, NotFound

log = structlog.get_logger()

T = TypeVar("T", bound=msgspec.Struct)
T_contra = TypeVar("T_contra", contravariant=True)


class Conflicted(Exception):
    """The record changed under us (another writer); re-read and retry."""


@dataclass(frozen=True, slots=True)
class Retention(Generic[T]):
    """Of the records `done` says will not change again, the `keep` most recently written stay in memory."""
    done: Callable[[T], bool]
    keep: int


class Tally(Protocol[T_contra]):
    """Told of each record taken in (`before`: the one held before it, None if none was; `after`: None when the
    key was deleted), and of each load starting afresh (`reset`)."""
    def reset(self) -> None: ...
    def seen(self, before: T_contra | None, after: T_contra | None) -> None: ...


class Records(Generic[T]):
    def __init__(self, kv: Bucket, type_: type[T], key: Callable[[T], str],
                 upgrade: Callable[[bytes], T] | None = None, fence: Callable[[], None] = lambda: None,
                 retention: Retention[T] | None = None, tally: Tally[T] | None = None) -> None:
        self._kv = kv
        self.fence = fence  # called before every write: raises when this controller may no longer write
        self._decoder: Decoder[T] = Decoder(type_)
        self._upgrade = upgrade  # reads a record an older controller wrote, if this one's decoder cannot
        self._key = key
        self._items: dict[str, tuple[T, int]] = {}
        self._retention = retention
        self._done: dict[str, None] = {}  # keys of the records held that will not change, oldest write first
        self.tally = tally
        self.evicted = 0  # records dropped from memory since the last load (0: memory holds every record)
        self.seen = 0  # every write up to this revision is reflected here
        self._ahead: set[int] = set()  # revisions taken in past a gap (another writer's write, not seen yet)

    @property
    def bucket(self) -> Bucket:
        return self._kv

    async def load(self) -> None:
        """Read every record, in one pass over the bucket (`Bucket.scan`: a request per record took a minute for
        90,000 jobs, which a leader retaking its lease paid again each time), each taken in as it arrives: with a
        retention, the ones past its window are never all in memory at once."""
        start = await self._kv.last_revision()  # every write up to it is in the pass that follows

        def begin() -> None:
            self._forget_all()
            self._reflects(start)

        await self._kv.scan(begin, self.observe)

    async def catch_up(self, timeout: float, chunk: int = 1000) -> int:
        """Take in every record written since revision `seen` (how many were), read from the bucket's stream: all
        a cache that was once complete needs to be complete again. A key deleted meanwhile is seen only while its
        marker lives (`incl.bus.kv.MARKER_TTL`): for records that are never deleted (jobs, agents, studies)."""
        end = await self._kv.last_revision()
        taken = 0
        while self.seen < end:
            changes = await self._kv.since(self.seen, chunk, timeout)
            if not changes:
                break
            for change in changes:
                self.observe(change)
            self._reflects(changes[-1].revision)  # the writes between were overwritten since: their keys came later
            taken += len(changes)
        return taken

    def _saw(self, revision: int) -> None:
        """The write at `revision` is reflected (ours, or a change watched): `seen` moves past it once nothing
        before it is missing."""
        if revision == self.seen + 1:
            self.seen = revision
            self._follow_on()
        elif revision > self.seen and len(self._ahead) < 100_000:  # else forgotten: a catch-up reads it again
            self._ahead.add(revision)

    def _reflects(self, revision: int) -> None:
        """Every write up to `revision` is reflected (a load's start, a page of a catch-up)."""
        if revision > self.seen:
            self.seen = revision
            self._ahead = {r for r in self._ahead if r > revision}
            self._follow_on()

    def _follow_on(self) -> None:
        while self.seen + 1 in self._ahead:
            self._ahead.remove(self.seen + 1)
            self.seen += 1

    def _forget_all(self) -> None:
        self._items.clear()
        self._done.clear()
        self._ahead.clear()
        self.seen = 0
        self.evicted = 0
        if self.tally is not None:
            self.tally.reset()

    def _hold(self, key: str, before: T | None, value: T, revision: int) -> None:
        """Take in `value` (`before`: the record held before it, if any); with a retention, the oldest record
        past its window leaves memory."""
        self._items[key] = (value, revision)
        self._saw(revision)
        if self.tally is not None:
            self.tally.seen(before, value)
        if self._retention is None:
            return
        self._done.pop(key, None)
        if self._retention.done(value):
            self._done[key] = None
            while len(self._done) > self._retention.keep:
                oldest = next(iter(self._done))
                del self._done[oldest]
                del self._items[oldest]
                self.evicted += 1

    def _drop(self, key: str) -> None:
        before = self._items.pop(key, None)
        self._done.pop(key, None)
        if before is not None and self.tally is not None:
            self.tally.seen(before[0], None)

    def revision(self, key: str) -> int | None:
        """The revision of the record held (None: not held)."""
        item = self._items.get(key)
        return item[1] if item else None

    async def read(self, key: str) -> T | None:
        """The record, from memory or, when a retention let it go, from the bucket (not taken back in)."""
        item = self._items.get(key)
        if item is not None or not self.evicted:
            return item[0] if item else None
        found = await self._fetch(key)
        return found[0] if found else None

    async def need(self, key: str, what: str = "record") -> T:
        """`read`, or NotFound."""
        value = await self.read(key)
        if value is None:
            raise NotFound(f"no {what} with id {key!r}")
        return value

    async def exists(self, key: str) -> bool:
        """Whether the bucket holds `key` (a request only when memory may not hold every record)."""
        return key in self._items or (bool(self.evicted) and await self._kv.get(key) is not None)

    def decode(self, key: str, data: bytes) -> T | None:
        """A stored value as a record (None, logged, when it cannot be read)."""
        try:
            return self._decoder.decode(data)
        except DecodeError as exc:
            upgraded = self._upgraded(key, data)
            if upgraded is None:
                log.error("record_undecodable", key=key, error=str(exc))
            return upgraded

    async def _fetch(self, key: str) -> tuple[T, int] | None:
        entry = await self._kv.get(key)
        if entry is None:
            return None
        value = self.decode(key, entry[0])
        return None if value is None else (value, entry[1])

    async def refresh(self, key: str) -> T | None:
        """The record as the bucket holds it now (another writer may have changed it)."""
        return await self._refresh(key)

    async def _refresh(self, key: str) -> T | None:
        found = await self._fetch(key)
        if found is None:
            self._drop(key)
            return None
        retention = self._retention
        if key in self._items or retention is None or not retention.done(found[0]):  # an ended one let go stays out
            self._hold(key, self.get(key), *found)
        return found[0]

    def observe(self, change: Change) -> tuple[T | None, T | None]:
        """A change another controller made, as the bucket's watch reported it: (the record before, after; None
        where there is none). A value that cannot be read is logged and leaves the record as it was."""
        before = self.get(change.key)
        if change.value is None:
            self._drop(change.key)
            self._saw(change.revision)
            return before, None
        value = self.decode(change.key, change.value)
        if value is None:
            self._saw(change.revision)  # read, if not understood: a catch-up would read it again for nothing
            return before, before
        self._hold(change.key, before, value, change.revision)
        return before, value

    def _upgraded(self, key: str, data: bytes) -> T | None:
        if self._upgrade is None:
            return None
        try:
            value = self._upgrade(data)
        except Exception as exc:  # noqa: BLE001 - an old record that cannot be read is logged, never fatal
            log.error("record_upgrade_failed", key=key, error=repr(exc))
            return None
        log.info("record_upgraded", key=key)
        return value

    def get(self, key: str) -> T | None:
        item = self._items.get(key)
        return item[0] if item else None

    def require(self, key: str, what: str = "record") -> T:
        value = self.get(key)
        if value is None:
            raise NotFound(f"no {what} with id {key!r}")
        return value

    def __iter__(self) -> Iterator[T]:
        return iter([v for v, _ in self._items.values()])

    def __len__(self) -> int:
        return len(self._items)

    async def create(self, value: T) -> T:
        key = self._key(value)
        self.fence()
        revision = await self._kv.create(key, encode(value))
        self._hold(key, None, value, revision)
        return value

    async def put(self, value: T) -> T:
        key = self._key(value)
        self.fence()
        revision = await self._kv.put(key, encode(value))
        self._hold(key, self.get(key), value, revision)
        return value

    async def delete(self, key: str) -> None:
        self.fence()
        await self._kv.delete(key)
        self._drop(key)

    async def update(self, key: str, change: Callable[[T], T], attempts: int = 5) -> T:
        """Apply `change` to the current record with compare-and-set; re-read and retry on a conflict. A record a
        retention let go is read from the bucket first."""
        for _ in range(attempts):
            item = self._items.get(key) or (await self._fetch(key) if self.evicted else None)
            if item is None:
                raise NotFound(f"no record {key!r}")
            current, revision = item
            new = change(current)
            if new is current:
                return current
            self.fence()
            try:
                new_revision = await self._kv.update(key, encode(new), last=revision)
            except WrongRevision:
                log.warning("record_conflict", key=key, revision=revision)
                await self._refresh(key)
                continue
            self._hold(key, current, new, new_revision)
            return new
        raise Conflicted(f"record {key!r} kept changing under us")
