"""Following one subject of a stream, in order, live: a named pull consumer whose filter is in its API subject.

Why not nats-py's ordered push consumer: it is created on `$JS.API.CONSUMER.CREATE.<stream>` with the filter in the
payload, a request the NATS server cannot scope by subject, so permitting it would let a user read every job's
output. Created as `$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`, the filter is in the subject (the server
refuses a payload whose filter differs), and a user's permissions allow exactly the filters of the jobs they may
read (`incl.auth.permissions`).

One pull request at a time, held by the server up to `poll` seconds: each message is handed on as it arrives (no
batching delay), and a request that expires with nothing yields None (the caller's "caught up"). The consumer keeps
no state worth saving: lost (the server restarted, it was idle past its threshold, the leader moved), it is made
again from the sequence after the last message read, so nothing is read twice or skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass
from typing import Any, Protocol

import nats
import structlog
from nats.aio.client import Client as Nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

log = structlog.get_logger()

PULL_BATCH = 256  # messages one pull request may carry


class Guard(Protocol):
    """Makes a request on the subject given, raising NotAllowed at once if the server refuses it."""
    def __call__(self, subject: str, call: Awaitable[Any], /) -> Awaitable[Any]: ...


@dataclass(frozen=True)
class Followed:
    """A message read from a stream in order, its stream sequence, how many more the stream held when it was
    read, and the subject it was stored on (a follow of a wildcard reads several)."""
    data: bytes
    pending: int
    seq: int = 0
    subject: str = ""


async def to_end(items: AsyncGenerator[Followed | None, None]) -> AsyncGenerator[bytes, None]:
    """The data of `items` (what `follow` yields) up to the stream's end as it was when reached."""
    async with contextlib.aclosing(items):
        async for item in items:
            if item is None:
                return
            yield item.data
            if item.pending == 0:
                return


def ack_position(reply: str) -> tuple[int, int]:
    """The stream sequence and the count still pending of a delivered message, from its ack subject:
    `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>` (9 tokens), or with
    `<domain>.<account hash>` after ACK and a random token last (12)."""
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5]), int(tokens[8])
    return int(tokens[7]), int(tokens[10])


def _status(msg: Msg) -> str | None:
    return (msg.headers or {}).get("Status") if not msg.data else None


class Follower:
    """The state of one follow: where it stands and the consumer it reads through."""

    def __init__(self, nc: Nats, js: JetStreamContext, stream: str, subject: str, *, poll: float,
                 timeout: float, guard: Guard, from_seq: int = 1, batch: int = PULL_BATCH) -> None:
        self._nc, self._js, self._guard = nc, js, guard
        self._stream, self._subject = stream, subject
        self._poll, self._timeout = poll, timeout
        self._next_seq = max(from_seq, 1)
        self._batch = batch  # messages one pull request may carry
        self._consumer: str | None = None
        self._inbox: asyncio.Queue[Msg] = asyncio.Queue()
        self._requests = 0  # each pull request has its own reply subject: a late status of an old one is ignored

    async def _on_msg(self, msg: Msg) -> None:
        self._inbox.put_nowait(msg)

    async def _create(self) -> int:
        """A consumer from where this follow stands; how many messages it has to deliver now. Retried (NATS
        restarting, a stream leader being elected) for up to `timeout`, then the last error is raised."""
        name = secrets.token_hex(11)  # unguessable: nobody may list the consumers of these streams
        config = api.ConsumerConfig(name=name, filter_subject=self._subject, ack_policy=api.AckPolicy.NONE,
                                    deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self._next_seq,
                                    inactive_threshold=max(30.0, 4 * self._poll), mem_storage=True, num_replicas=1)
        api_subject = f"$JS.API.CONSUMER.CREATE.{self._stream}.{name}.{self._subject}"
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self._timeout
        while True:
            try:
                info = await self._guard(api_subject, self._js.add_consumer(self._stream, config,
                                                                            timeout=self._timeout))
                break
            except NotFoundError:
                raise
            except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
                if loop.time() >= give_up:
                    raise
                log.debug("follow_consumer_retry", subject=self._subject, error=repr(exc))
                await asyncio.sleep(min(self._poll, 0.25))
        self._consumer = name
        return int(info.num_pending or 0)

    async def run(self) -> AsyncGenerator[Followed | None, None]:
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(f"{inbox}.*", cb=self._on_msg, pending_msgs_limit=4 * self._batch,
                                       pending_bytes_limit=-1)
        try:
            while True:
                if self._consumer is None:
                    try:
                        pending = await self._create()
                    except NotFoundError:
                        return  # no stream holds the subject
                    if pending == 0:
                        yield None  # caught up already (an empty subject answers at once, not after a poll)
                got = 0
                async for item in self._pull(inbox):
                    got += 1
                    yield item
                if not got and self._consumer is not None:
                    yield None  # the request expired with nothing new (not: the consumer was lost)
        finally:
            with contextlib.suppress(nats.errors.Error):  # the connection closed first: nothing to undo
                await sub.unsubscribe()
                if self._consumer is not None:
                    await self._nc.publish(f"$JS.API.CONSUMER.DELETE.{self._stream}.{self._consumer}", b"")

    async def _pull(self, inbox: str) -> AsyncGenerator[Followed, None]:
        """One pull request: its messages as they come, until it is filled, expires, or the consumer is gone."""
        request = {"batch": self._batch, "expires": int(self._poll * 1e9)}
        self._requests += 1
        reply = f"{inbox}.{self._requests}"
        await self._nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{self._consumer}",
                               json.dumps(request).encode(), reply=reply)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._poll + self._timeout
        delivered = 0
        while delivered < self._batch:
            try:  # one already come is taken without a timer (a task each on Python 3.11: a cold read's 2,000)
                msg = self._inbox.get_nowait() if not self._inbox.empty() else \
                    await asyncio.wait_for(self._inbox.get(), max(deadline - loop.time(), 0.0))
            except TimeoutError:
                self._consumer = None  # no answer at all: the consumer (or its server) is gone
                return
            status = _status(msg)
            if status is not None and msg.subject != reply:
                continue  # the end of a request given up on (a message comes with its own subject)
            if status is None:
                seq, pending = ack_position(msg.reply)
                if seq < self._next_seq:
                    continue  # a late copy of what was read already (a request that was given up on)
                self._next_seq = seq + 1
                delivered += 1
                yield Followed(data=bytes(msg.data), pending=pending, seq=seq, subject=msg.subject)
            elif status == "100":
                continue  # an idle heartbeat
            elif status in ("404", "408"):
                return  # nothing more now / the request expired
            else:
                self._consumer = None  # 409 (deleted, leader changed), 503 (no such consumer): make it again
                return
