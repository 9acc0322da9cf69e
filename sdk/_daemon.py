"""What INCL's two daemons share (not part of the job-side SDK): config loading, the signal-bound main,
and the durable work-queue consumer loop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import structlog
import yaml
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext
from nats.js.errors import FetchTimeoutError

from incl._retry import TRANSIENT
from incl.proto import subjects
from incl.proto.codec import Decoder, encode
from incl.proto.errors import DecodeError
from incl.proto.messages import DeadLetter

T = TypeVar("T")
C = TypeVar("C", bound=msgspec.Struct)

log = structlog.get_logger()


def load_config(type_: type[C], path: str | Path | None, overrides: dict[str, Any]) -> C:
    """Defaults, then the YAML file (if any), then keyword overrides (flags); unknown keys are errors."""
    data: dict[str, Any] = {}
    if path:
        data.update(yaml.safe_load(Path(path).read_text()) or {})
    data.update({k: v for k, v in overrides.items() if v is not None})
    return msgspec.convert(data, type_)


def run_until_signalled(serve: Callable[[], Awaitable[None]]) -> None:
    """Run a daemon's lifespan; SIGTERM or SIGINT cancels it, so shutdown is cancellation, not polling.
    A lifespan that ends by itself (an essential loop failed, or returned) is logged and exits non-zero at
    once, so that a supervisor restarts the daemon rather than it limping on half-dead."""
    signalled = False

    async def main() -> None:
        nonlocal signalled
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()

        def stop() -> None:
            nonlocal signalled
            signalled = True
            task.cancel()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        await serve()

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        if signalled:
            return
        log.error("daemon_cancelled")
        sys.exit(1)
    except Exception:  # noqa: BLE001 - the last word of a dying daemon
        log.exception("daemon_failed")
        sys.exit(1)
    else:
        if not signalled:
            log.error("daemon_ended", reason="its lifespan returned")
            sys.exit(1)


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait for `event` at most `timeout` seconds; True if it was set. Unlike `asyncio.wait_for` on Python
    3.11, a cancellation that arrives as the wait ends is never swallowed (a TaskGroup's sibling failure
    must end every loop, or the daemon limps on half-dead)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await event.wait()
    return event.is_set()


DEAD_LETTER_MAX_DATA = 64 * 1024


async def park(js: JetStreamContext, source: str, msg: Msg, error: str, *, timeout: float) -> None:
    """Keep `msg` in the dead-letter stream with why it failed, and terminate it in its own stream. Parking is
    best effort (a few tries): a message that cannot even be parked is logged and terminated all the same."""
    letter = DeadLetter(source=source, subject=msg.subject, error=error[:2000], data=msg.data[:DEAD_LETTER_MAX_DATA],
                        size=len(msg.data), ts=time.time())
    for attempt in range(3):
        try:
            await js.publish(subjects.dead(source), encode(letter), timeout=timeout)
            break
        except TRANSIENT as exc:
            log.warning("park_failed", source=source, attempt=attempt, error=repr(exc))
            await asyncio.sleep(0.1 * 2 ** attempt)
    try:
        await msg.term()
    except TRANSIENT as exc:
        log.warning("term_failed", source=source, error=repr(exc))


async def consume(js: JetStreamContext, sub: JetStreamContext.PullSubscription, source: str, decoder: Decoder[T],
                  handle: Callable[[T], Awaitable[None]], *, batch: int, timeout: float, backoff: float) -> None:
    """Pull messages for ever: decode, handle in order, ack. A message that does not decode, or whose handler
    fails with anything but a transient NATS error, is that message's failure: logged with the message, parked
    in the dead-letter stream, and terminated; the loop goes on. A message whose ack is lost is delivered
    again, so `handle` must be idempotent."""
    while True:
        try:
            msgs = await sub.fetch(batch, timeout=timeout)
        except (FetchTimeoutError, asyncio.TimeoutError):
            continue
        except TRANSIENT as exc:
            log.debug("fetch_failed", error=repr(exc))
            await asyncio.sleep(backoff)
            continue
        for msg in msgs:
            try:
                item = decoder.decode(msg.data)
            except DecodeError as exc:
                log.warning("message_dropped", subject=msg.subject, size=len(msg.data), error=str(exc))
                await park(js, source, msg, str(exc), timeout=timeout)
                continue
            try:
                await handle(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - one message's failure must not end the daemon
                log.exception("message_parked", subject=msg.subject, message=_describe(item))
                await park(js, source, msg, f"{type(exc).__name__}: {exc}", timeout=timeout)
                continue
            try:
                await msg.ack()
            except TRANSIENT as exc:
                log.debug("ack_failed", error=repr(exc))


def _describe(item: object) -> str:
    """A message for a log line: its type and fields, bounded."""
    text = repr(item)
    return text if len(text) <= 500 else text[:500] + f"... ({len(text)} chars)"
