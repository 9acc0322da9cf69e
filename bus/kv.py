"""A JetStream key-value bucket, with compare-and-set writes and errors of our own (no nats type leaks out)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, Callable
from typing import Any, NamedTuple

import structlog
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

log = structlog.get_logger()


MARKER_TTL = 1.0  # seconds a deleted key's marker lives (JetStream's smallest per-message TTL)


class KeyExists(Exception):
    """`create` of a key that exists."""


class WrongRevision(Exception):
    """`update` of a key that changed since the revision given (another writer)."""


class Change(NamedTuple):
    """A key as a bucket's watch reports it: its value (None: deleted or purged) and its revision."""
    key: str
    value: bytes | None
    revision: int


class BucketUnreadable(Exception):
    """The bucket's keys could not be listed; going on with none would forget every record."""


class Bucket:
    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def get(self, key: str) -> tuple[bytes, int] | None:
        """The value and its revision, or None."""
        try:
            entry = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        return bytes(entry.value or b""), entry.revision or 0

    async def create(self, key: str, value: bytes) -> int:
        try:
            return int(await self._kv.create(key, value))
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            # KeyNotFoundError: the key was there when the create was refused and gone (expired) when nats-py looked
            # whether it was a deleted one: a lost race, to be tried again like any existing key.
            raise KeyExists(key) from None

    async def update(self, key: str, value: bytes, last: int) -> int:
        try:
            return int(await self._kv.update(key, value, last=last))
        except KeyWrongLastSequenceError:
            raise WrongRevision(key) from None

    async def put(self, key: str, value: bytes) -> int:
        return int(await self._kv.put(key, value))

    async def delete(self, key: str, marker_ttl: float = MARKER_TTL) -> None:
        """Remove the key. Its purge marker expires after `marker_ttl` in a bucket made to allow it (see
        `incl.bus.streams.ensure_buckets`), so a bucket whose keys come and go does not fill with markers;
        elsewhere the marker stays."""
        await self._kv.purge(key, msg_ttl=marker_ttl)

    async def watch(self) -> AsyncGenerator[Change | None, None]:
        """Every key's current value, then None once (the watch has caught up with the bucket), then each change
        as the server stores it, for as long as the caller reads: JetStream's own KV watch (an ordered consumer,
        which nats-py re-creates from the last revision it delivered after a gap or two missed heartbeats)."""
        watcher = await self._kv.watchall()
        try:
            async for entry in watcher:
                if entry is None:
                    yield None
                    continue
                deleted = entry.operation in ("DEL", "PURGE")
                yield Change(entry.key, None if deleted else bytes(entry.value or b""), entry.revision or 0)
        finally:
            with contextlib.suppress(Exception):  # the connection may be gone: nothing left to stop
                await watcher.stop()  # type: ignore[no-untyped-call]  # nats-py leaves it untyped

    async def scan(self, begin: Callable[[], None], each: Callable[[Change], Any], attempts: int = 5,
                   pause: float = 0.2) -> None:
        """Every key's current value handed to `each` as it arrives, never all held at once (the watch's first
        part: one consumer delivering the last value of each subject, not a request per key), deleted keys left
        out; `begin` is called before each pass, which starts over. Checked against the bucket's own message count
        as `keys` is (a short pass is read again); then, rather than pass for a store with fewer records, the keys
        are read one by one."""
        for attempt in range(attempts):
            expected = (await self._kv.status()).stream_info.state.messages  # history 1: one per key or marker
            seen = 0
            begin()
            if expected:
                async with contextlib.aclosing(self.watch()) as changes:
                    async for change in changes:
                        if change is None:
                            break
                        seen += 1
                        if change.value is not None:
                            each(change)
            if seen >= expected:
                return
            log.warning("bucket_snapshot_short", seen=seen, expected=expected, attempt=attempt)
            await asyncio.sleep(pause * 2 ** attempt)
        begin()
        for key in await self.keys():
            entry = await self.get(key)
            if entry is not None:
                each(Change(key, *entry))

    async def last_revision(self) -> int:
        """The revision the bucket's latest write got (0: none yet)."""
        return int((await self._kv.status()).stream_info.state.last_seq or 0)

    async def since(self, after: int, limit: int, timeout: float) -> list[Change]:
        """At most `limit` keys whose current value was written after revision `after`, in revision order (deleted
        ones as None). The bucket keeps one value per key, so reading its stream from a revision on reads current
        values only: a page of old records costs one short-lived consumer (made, asked once for its whole batch,
        the messages gathered by a callback as `Bus.read_subject` does, deleted), not a listing of every key."""
        kv = self._kv
        js = kv._js
        nc = js._nc
        name = nc.new_inbox().rsplit(".", 1)[-1]
        config = ConsumerConfig(name=name, filter_subject=f"{kv._pre}>", ack_policy=AckPolicy.NONE,
                                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1,
                                inactive_threshold=max(timeout * 4, 5.0), mem_storage=True, num_replicas=1)
        info = await js.add_consumer(kv._stream, config, timeout=timeout)
        try:
            want = min(int(info.num_pending or 0), limit)
            return await _gathered(nc, kv._stream, name, kv._pre, want, timeout) if want else []
        finally:  # without waiting for the reply: `inactive_threshold` removes it should this be lost
            await nc.publish(f"$JS.API.CONSUMER.DELETE.{kv._stream}.{name}", b"")

    async def listing(self) -> list[str]:
        """The keys as one listing finds them, unchecked: for what is only shown (a short listing is possible)."""
        try:
            return list(await self._kv.keys())
        except NoKeysError:
            return []

    async def keys(self, attempts: int = 5, pause: float = 0.2) -> list[str]:
        """Every key. The bucket's own message count is the check: nats-py's listing can come back empty (or
        short) while the bucket holds records, so a short listing is retried, and an empty listing of a bucket
        that holds records raises rather than passing for an empty store."""
        keys: list[str] = []
        expected = 0
        for attempt in range(attempts):
            expected = (await self._kv.status()).stream_info.state.messages  # history 1: one per key
            try:
                keys = await self._kv.keys()
            except NoKeysError:
                keys = []
            if len(keys) >= expected:
                return keys
            log.warning("key_listing_short", keys=len(keys), expected=expected, attempt=attempt)
            await asyncio.sleep(pause * 2 ** attempt)
        if not keys and expected:
            raise BucketUnreadable(f"the bucket holds {expected} records and listing them returned none "
                                   f"{attempts} times")
        return keys  # short but not empty: deleted keys leave markers the count includes


async def _gathered(nc: Any, stream: str, consumer: str, prefix: str, want: int, timeout: float) -> list[Change]:
    """`want` messages of a consumer of a bucket's stream, as changes (fewer if the server has fewer: a 404)."""
    got: list[Change] = []
    done = asyncio.Event()

    async def on_msg(msg: Any) -> None:
        headers = msg.headers or {}
        if "Status" in headers:  # 404/408: fewer than asked (a purge, an expiry meanwhile)
            done.set()
            return
        # the ack subject: $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<...> (9 tokens), or with
        # <domain>.<account hash> after ACK (12 tokens)
        tokens = msg.reply.split(".")
        deleted = headers.get("KV-Operation") in ("DEL", "PURGE")
        got.append(Change(msg.subject[len(prefix):], None if deleted else bytes(msg.data),
                          int(tokens[5] if len(tokens) == 9 else tokens[7])))
        if len(got) >= want:
            done.set()

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_msg, pending_msgs_limit=2 * want + 16, pending_bytes_limit=-1)
    try:
        await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
                         json.dumps({"batch": want, "no_wait": True}).encode(), reply=inbox)
        await asyncio.wait_for(done.wait(), timeout)
    finally:
        await sub.unsubscribe()
    return got
