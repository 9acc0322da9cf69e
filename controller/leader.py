"""Leadership among controllers: one leads, the others stand by, by a lease in a KV bucket.

The bucket `incl_leader` keeps each entry `leader_ttl` seconds past its last write (the bucket's max age). The
leader holds the key `leader`: it took it with `create` (only when no entry is there) and renews it every
`leader_renew` seconds with a compare-and-set on the revision it holds. A standby tries `create` every
`leader_poll` seconds; it succeeds only once the leader has not renewed for `leader_ttl` (the entry expired).

Fencing. The leader counts its lease from the moment it *sent* the write that renewed it: until then plus
`leader_ttl - leader_margin`. The server stores that write later than it was sent, so the entry expires, and a
standby can take over, only after the leader's own deadline has passed (clocks may drift by the margin). Every
write of the leader's records (`Records`, through `check`) and every renewal is refused past that deadline,
and the renewal loop raises `NotLeader` then: a leader cut off from NATS, or paused (SIGSTOP) past its lease,
stops acting before anyone else can start. What no lease can stop is a write whose check passed just before the
process was paused and whose bytes leave after it resumes; the margin makes that window the time between one
check and the socket write, and every record write is a compare-and-set on the record's revision, so a write
that crosses the new leader's is refused.

A controller's id must be unique among running controllers: a restarted process finds the lease under its own
id and takes it back at once (its previous process is dead: it was this one's), instead of waiting out the TTL.

Each controller also keeps `member.<id>` fresh in the bucket, so `incl status` can list the standbys.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from typing import NoReturn

import msgspec
import structlog

from incl.bus.connection import Bus
from incl.bus.kv import Bucket, KeyExists, WrongRevision
from incl.bus.retry import TRANSIENT
from incl.bus.streams import ensure_expiring_bucket
from incl.proto import subjects
from incl.proto.codec import Decoder, encode
from incl.proto.errors import DecodeError

log = structlog.get_logger()

LEADER_KEY = "leader"
MEMBER_PREFIX = "member."


class NotLeader(BaseException):
    """This controller no longer holds the lease: everything it does as the leader stops, and it stands by.

    A BaseException, as asyncio.CancelledError is: the generic `except Exception` of a loop that must survive
    one bad message (`incl.bus.consume`) must let it through, or a deposed leader would park good events."""


class LeaseRecord(msgspec.Struct, frozen=True, kw_only=True):
    controller_id: str
    instance: str  # this process
    since: float  # unix time this controller took the lease
    renewed: float  # unix time of the last renewal (informative: the TTL counts from the server's store time)


class Member(msgspec.Struct, frozen=True, kw_only=True):
    controller_id: str
    instance: str
    started: float


@dataclasses.dataclass(frozen=True)
class LeaseTimes:
    ttl: float  # an entry lives this long after its last write
    renew: float  # the leader renews this often (well inside the TTL)
    poll: float  # a standby tries to take the lease this often
    margin: float  # the leader stops this long before the entry can expire

    def __post_init__(self) -> None:
        if not 0 < self.renew < self.ttl - self.margin or self.margin < 0:
            raise ValueError(f"leader_renew ({self.renew}) must be under leader_ttl - leader_margin "
                             f"({self.ttl} - {self.margin})")


async def open_bucket(bus: Bus, ttl: float, replicas: int) -> Bucket:
    """The lease bucket, its entries living `ttl` seconds."""
    return await ensure_expiring_bucket(bus, subjects.LEADER_BUCKET, ttl, replicas)


class Leadership:
    def __init__(self, kv: Bucket, controller_id: str, times: LeaseTimes) -> None:
        self._kv = kv
        self.controller_id = controller_id
        self.instance = uuid.uuid4().hex[:12]
        self._times = times
        self._started = time.time()
        self._since = 0.0
        self._revision = 0
        self._deadline = 0.0  # monotonic: past it, this process does not act as the leader
        self._waiting_on: str | None = None  # the leader this controller last said it stands by for
        self._decoder: Decoder[LeaseRecord] = Decoder(LeaseRecord)

    @property
    def leading(self) -> bool:
        return time.monotonic() < self._deadline

    def check(self) -> None:
        """Before a write as the leader: raises NotLeader once the lease may have run out."""
        if time.monotonic() >= self._deadline:
            raise NotLeader("the lease ran out")

    def _value(self) -> bytes:
        return encode(LeaseRecord(controller_id=self.controller_id, instance=self.instance, since=self._since,
                                  renewed=time.time()))

    async def acquire(self) -> None:
        """Stand by until this controller holds the lease."""
        while not await self.take():  # noqa: ASYNC110 - the lease is polled: nothing here could set an event
            await asyncio.sleep(self._times.poll)

    async def take(self) -> bool:
        """One try at the lease: True if this controller holds it now."""
        sent = time.monotonic()
        self._since = time.time()
        try:
            self._took(await self._kv.create(LEADER_KEY, self._value()), sent)
            return True
        except KeyExists:
            holder = await self._holder()
            if holder is not None and holder[0].controller_id == self.controller_id:
                try:  # our own previous process (ids are unique): it is dead; take the lease back now
                    self._took(await self._kv.update(LEADER_KEY, self._value(), last=holder[1]), sent)
                    return True
                except WrongRevision:
                    pass
            if holder is not None and holder[0].controller_id != self._waiting_on:
                self._waiting_on = holder[0].controller_id
                log.info("standing_by", leader=self._waiting_on)
        except TRANSIENT as exc:
            log.debug("lease_unreachable", error=repr(exc))
        return False

    def _took(self, revision: int, sent: float) -> None:
        self._revision = revision
        self._waiting_on = None
        self._deadline = sent + self._times.ttl - self._times.margin
        log.info("leader_elected", controller_id=self.controller_id, instance=self.instance, revision=revision)

    async def _holder(self) -> tuple[LeaseRecord, int] | None:
        entry = await self._kv.get(LEADER_KEY)  # with its revision, for a compare-and-set
        if entry is None:
            return None
        try:
            return self._decoder.decode(entry[0]), entry[1]
        except DecodeError:
            return None

    async def hold(self) -> NoReturn:
        """Renew the lease for as long as this controller leads; raises NotLeader when it cannot any more."""
        times = self._times
        while True:
            await asyncio.sleep(max(0.0, min(times.renew, self._deadline - time.monotonic())))
            sent = time.monotonic()
            if sent >= self._deadline:
                raise NotLeader("the lease ran out before it could be renewed (NATS unreachable, or paused)")
            try:
                revision = await asyncio.wait_for(self._kv.update(LEADER_KEY, self._value(), last=self._revision),
                                                  timeout=self._deadline - sent)
            except WrongRevision:
                self._deadline = 0.0
                raise NotLeader("another controller holds the lease") from None
            except (TimeoutError, *TRANSIENT) as exc:  # type: ignore[misc]  # mypy cannot type a starred except tuple
                log.warning("lease_renewal_failed", error=repr(exc), left_s=round(self._deadline - sent, 2))
                continue
            self._revision = revision
            self._deadline = sent + times.ttl - times.margin

    async def release(self) -> None:
        """A clean stop hands over at once: the lease is removed (only if it is still this process's)."""
        if not self.leading:
            return
        self._deadline = 0.0
        holder = await self._holder()
        if holder is not None and holder[0].instance == self.instance:
            await self._kv.delete(LEADER_KEY)

    async def announce(self) -> NoReturn:
        """Keep this controller listed (leader or standby) while it runs."""
        member = encode(Member(controller_id=self.controller_id, instance=self.instance, started=self._started))
        while True:
            try:
                await self._kv.put(MEMBER_PREFIX + self.controller_id, member)
            except TRANSIENT as exc:
                log.debug("announce_failed", error=repr(exc))
            await asyncio.sleep(self._times.renew)


async def holder(kv: Bucket) -> LeaseRecord | None:
    """Who holds the lease now (None while nobody does)."""
    entry = await kv.get(LEADER_KEY)
    if entry is None:
        return None
    try:
        return Decoder(LeaseRecord).decode(entry[0])
    except DecodeError:
        return None


async def members(kv: Bucket) -> list[Member]:
    """Every controller that announced itself lately (leader and standbys), by id."""
    found: list[Member] = []
    for key in await kv.listing():
        entry = await kv.get(key) if key.startswith(MEMBER_PREFIX) else None
        if entry is None:
            continue
        try:
            found.append(Decoder(Member).decode(entry[0]))
        except DecodeError:
            continue
    return sorted(found, key=lambda m: m.controller_id)
