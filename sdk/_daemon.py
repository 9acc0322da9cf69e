"""What INCL's two daemons share (not part of the job-side SDK): config loading, the signal-bound main,
and the durable work-queue consumer loop."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import structlog
import yaml
from nats.js.client import JetStreamContext
from nats.js.errors import FetchTimeoutError

from incl._retry import TRANSIENT
from incl.proto.codec import Decoder
from incl.proto.errors import DecodeError

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
    """Run a daemon's lifespan; SIGTERM or SIGINT cancels it, so shutdown is cancellation, not polling."""

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await serve()
        except asyncio.CancelledError:
            pass

    asyncio.run(main())


async def consume(sub: JetStreamContext.PullSubscription, decoder: Decoder[T],
                  handle: Callable[[T], Awaitable[None]], *, batch: int, timeout: float, backoff: float) -> None:
    """Pull messages for ever: decode, handle in order, ack. An undecodable message is logged and dropped;
    a message whose ack is lost is delivered again, so `handle` must be idempotent."""
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
                log.warning("message_dropped", subject=msg.subject, error=str(exc))
            else:
                await handle(item)
            try:
                await msg.ack()
            except TRANSIENT as exc:
                log.debug("ack_failed", error=repr(exc))
