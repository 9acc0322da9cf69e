"""Job and agent records in JetStream KV, cached in memory, every write a revision compare-and-set.

The controller rebuilds the cache from the buckets at start; it never holds the only copy of anything. A standby
keeps a cache that writes nothing, fed by the bucket's watch (`observe`, `incl.controller.standby`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

import msgspec
import structlog

from incl.bus.kv import Bucket, Change, WrongRevision
from incl.proto.codec import Decoder, encode
from incl.proto.errors import DecodeError, NotFound

log = structlog.get_logger()

T = TypeVar("T", bound=msgspec.Struct)


class Conflicted(Exception):
    """The record changed under us (another writer); re-read and retry."""


class Records(Generic[T]):
    def __init__(self, kv: Bucket, type_: type[T], key: Callable[[T], str],
                 upgrade: Callable[[bytes], T] | None = None, fence: Callable[[], None] = lambda: None) -> None:
        self._kv = kv
        self.fence = fence  # called before every write: raises when this controller may no longer write
        self._decoder: Decoder[T] = Decoder(type_)
        self._upgrade = upgrade  # reads a record an older controller wrote, if this one's decoder cannot
        self._key = key
        self._items: dict[str, tuple[T, int]] = {}

    async def load(self) -> None:
        """Read every record, in one pass over the bucket (`Bucket.snapshot`: a request per record took a minute for
        90,000 jobs, which a leader retaking its lease paid again each time)."""
        self._items.clear()
        for change in await self._kv.snapshot():
            self.observe(change)

    async def refresh(self, key: str) -> T | None:
        """The record as the bucket holds it now (another writer may have changed it)."""
        return await self._refresh(key)

    async def _refresh(self, key: str) -> T | None:
        entry = await self._kv.get(key)
        if entry is None:
            self._items.pop(key, None)
            return None
        data, revision = entry
        try:
            value = self._decoder.decode(data)
        except DecodeError as exc:
            upgraded = self._upgraded(key, data)
            if upgraded is None:
                log.error("record_undecodable", key=key, error=str(exc))
                return None
            value = upgraded
        self._items[key] = (value, revision)
        return value

    def observe(self, change: Change) -> tuple[T | None, T | None]:
        """A change another controller made, as the bucket's watch reported it: (the record before, after; None
        where there is none). A value that cannot be read is logged and leaves the record as it was."""
        before = self.get(change.key)
        if change.value is None:
            self._items.pop(change.key, None)
            return before, None
        try:
            value = self._decoder.decode(change.value)
        except DecodeError as exc:
            upgraded = self._upgraded(change.key, change.value)
            if upgraded is None:
                log.error("record_undecodable", key=change.key, error=str(exc))
                return before, before
            value = upgraded
        self._items[change.key] = (value, change.revision)
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
        self._items[key] = (value, revision)
        return value

    async def put(self, value: T) -> T:
        key = self._key(value)
        self.fence()
        revision = await self._kv.put(key, encode(value))
        self._items[key] = (value, revision)
        return value

    async def delete(self, key: str) -> None:
        self.fence()
        await self._kv.delete(key)
        self._items.pop(key, None)

    async def update(self, key: str, change: Callable[[T], T], attempts: int = 5) -> T:
        """Apply `change` to the current record with compare-and-set; re-read and retry on a conflict."""
        for _ in range(attempts):
            item = self._items.get(key)
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
            self._items[key] = (new, new_revision)
            return new
        raise Conflicted(f"record {key!r} kept changing under us")
