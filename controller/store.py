"""Job and agent records in JetStream KV, cached in memory, every write a revision compare-and-set.

The controller rebuilds the cache from the buckets at start; it never holds the only copy of anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

import msgspec
import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from incl.proto.codec import Decoder, encode
from incl.proto.errors import DecodeError, NotFound

log = structlog.get_logger()

T = TypeVar("T", bound=msgspec.Struct)


class StoreUnreadable(Exception):
    """The bucket's records could not be listed; starting with none would forget every job."""


class Conflicted(Exception):
    """The record changed under us (another writer); re-read and retry."""


class Records(Generic[T]):
    def __init__(self, kv: KeyValue, type_: type[T], key: Callable[[T], str]) -> None:
        self._kv = kv
        self._decoder: Decoder[T] = Decoder(type_)
        self._key = key
        self._items: dict[str, tuple[T, int]] = {}

    async def load(self, attempts: int = 5, pause: float = 0.2) -> None:
        """Read every record. The bucket's own count is the check: nats-py's key listing can come back empty
        (or short) while the bucket holds records, and an empty store must never be mistaken for one."""
        self._items.clear()
        keys: list[str] = []
        for attempt in range(attempts):
            expected = (await self._kv.status()).stream_info.state.messages  # history 1: one per key
            try:
                keys = await self._kv.keys()
            except NoKeysError:
                keys = []
            if len(keys) >= expected:
                break
            log.warning("record_listing_short", keys=len(keys), expected=expected, attempt=attempt)
            await asyncio.sleep(pause * 2 ** attempt)
        else:
            if not keys and expected:
                raise StoreUnreadable(f"the bucket holds {expected} records and listing them returned none "
                                      f"{attempts} times")
            # Short but not empty: deleted keys leave markers the count includes; go on with what is there.
        for key in keys:
            await self._refresh(key)

    async def refresh(self, key: str) -> T | None:
        """The record as the bucket holds it now (another writer may have changed it)."""
        return await self._refresh(key)

    async def _refresh(self, key: str) -> T | None:
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            self._items.pop(key, None)
            return None
        try:
            value = self._decoder.decode(entry.value or b"")
        except DecodeError as exc:
            log.error("record_undecodable", key=key, error=str(exc))
            return None
        self._items[key] = (value, entry.revision or 0)
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
        revision = await self._kv.create(key, encode(value))
        self._items[key] = (value, revision)
        return value

    async def put(self, value: T) -> T:
        key = self._key(value)
        revision = await self._kv.put(key, encode(value))
        self._items[key] = (value, revision)
        return value

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
            try:
                new_revision = await self._kv.update(key, encode(new), last=revision)
            except KeyWrongLastSequenceError:
                log.warning("record_conflict", key=key, revision=revision)
                await self._refresh(key)
                continue
            self._items[key] = (new, new_revision)
            return new
        raise Conflicted(f"record {key!r} kept changing under us")
