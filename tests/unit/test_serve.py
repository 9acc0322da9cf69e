"""A served subject keeps being served whatever one request's handler does: raises, or has a future it awaits
cancelled under it (a worker shut down mid-call). Each such request gets an error reply; the next is served."""

from __future__ import annotations

import asyncio

from incl.bus.connection import Bus
from incl.proto.codec import Decoder
from incl.proto.messages import ErrorReply


async def test_a_failing_or_interrupted_handler_fails_its_request_and_serving_goes_on(bus: Bus) -> None:
    async def handler(subject: str, data: bytes) -> bytes:
        if data == b"interrupted":
            dropped = asyncio.get_running_loop().create_future()
            dropped.cancel()  # what a thread pool's shutdown(cancel_futures=True) does to a queued call
            await dropped
        if data == b"bug":
            raise ValueError("a bug in one handler")
        return b"ok " + data

    await bus.serve("t.>", "", handler)
    errors = Decoder(ErrorReply)
    interrupted = errors.decode(await bus.request_raw("t.x", b"interrupted", timeout=2))
    assert "interrupted; try again" in interrupted.message
    assert errors.decode(await bus.request_raw("t.x", b"bug", timeout=2)).message == "internal error"
    assert await bus.request_raw("t.x", b"fine", timeout=2) == b"ok fine"  # still served
