"""A client's read asks the leader first and any controller once the leader is silent or gone (`Client._hedged`),
on a real NATS server with stand-ins for the two subjects: the leader's answer wins while it comes; a standby's is
taken when the leader is paused (after `hedge_after`) or dead (at once); an old controller's "unknown subject" to
`any.` never hides the leader's answer; a write is never sent to `any.`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from conftest import NatsServer

from incl.bus.client import Client
from incl.bus.connection import Bus, error_reply
from incl.proto import subjects
from incl.proto.codec import encode
from incl.proto.errors import InclError, NoResponders, Unavailable
from incl.proto.messages import PingReply

USER = "ann"
LEADER = subjects.user_api(USER, subjects.PING)
ANY = subjects.user_api_any(USER, subjects.PING)


def answering(who: str, after: float = 0.0) -> Callable[[str, bytes], Awaitable[bytes | None]]:
    async def handler(subject: str, data: bytes) -> bytes | None:
        await asyncio.sleep(after)
        return encode(PingReply(controller_id=who))
    return handler


async def silent(subject: str, data: bytes) -> bytes | None:
    return None  # a paused leader: subscribed, never answering


async def unknown(subject: str, data: bytes) -> bytes | None:
    return error_reply(InclError(f"unknown subject {subject}"))


async def ask(url: str, hedge_after: float | None = 0.2) -> tuple[str, float]:
    async with Client(url, timeout=2.0, user=USER, hedge_after=hedge_after) as c:
        started = time.monotonic()
        return (await c.ping()).controller_id, time.monotonic() - started


async def serving(bus: Bus, handlers: dict[str, Any]) -> list[Callable[[], Awaitable[None]]]:
    return [await bus.serve(subject, "", handler) for subject, handler in handlers.items()]


async def test_the_leaders_answer_is_taken_while_it_answers(nats_server: NatsServer, bus: Bus) -> None:
    await serving(bus, {LEADER: answering("leader", after=0.05), ANY: answering("standby")})
    assert (await ask(nats_server.url))[0] == "leader"


async def test_a_paused_leader_is_waited_for_hedge_after_then_a_standby_answers(nats_server: NatsServer,
                                                                                bus: Bus) -> None:
    await serving(bus, {LEADER: silent, ANY: answering("standby")})
    who, took = await ask(nats_server.url)
    assert who == "standby" and 0.2 <= took < 1.0
    with pytest.raises(Unavailable):  # without hedging, only the leader is asked
        await ask(nats_server.url, hedge_after=None)


async def test_with_no_leader_a_standby_answers_at_once(nats_server: NatsServer, bus: Bus) -> None:
    await serving(bus, {ANY: answering("standby")})
    who, took = await ask(nats_server.url)
    assert who == "standby" and took < 0.2
    await serving(bus, {})
    with pytest.raises(NoResponders):
        async with Client(nats_server.url, timeout=1.0, user=USER) as c:
            await c.job("j-none")  # nothing serves either subject


async def test_an_old_controllers_unknown_subject_never_hides_the_leaders_answer(nats_server: NatsServer,
                                                                                 bus: Bus) -> None:
    await serving(bus, {LEADER: answering("leader", after=0.4), ANY: unknown})
    assert (await ask(nats_server.url))[0] == "leader"


async def test_a_write_is_never_sent_to_any_controller(nats_server: NatsServer, bus: Bus) -> None:
    asked: list[str] = []

    async def record(subject: str, data: bytes) -> bytes | None:
        asked.append(subject)
        return None

    await serving(bus, {f"{subjects.API_PREFIX}.>": record})
    async with Client(nats_server.url, timeout=0.5, user=USER) as c:
        with pytest.raises(Unavailable):
            await c.cancel("j-1")
    assert asked == [subjects.user_api(USER, subjects.CANCEL)]
