"""Retry with backoff for INCL's daemons (not part of the job-side SDK): tenacity, set up once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from nats import errors as nats_errors
from nats.js import errors as js_errors
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from incl.bus import probe

T = TypeVar("T")

log = structlog.get_logger()

# What a restarting or unreachable NATS server looks like from a client.
TRANSIENT: tuple[type[BaseException], ...] = (
    nats_errors.TimeoutError,
    nats_errors.ConnectionClosedError,
    nats_errors.ConnectionReconnectingError,
    nats_errors.NoRespondersError,
    nats_errors.OutboundBufferLimitError,
    nats_errors.StaleConnectionError,
    js_errors.ServiceUnavailableError,
    js_errors.ServerError,
    js_errors.NoStreamResponseError,
    asyncio.TimeoutError,
    ConnectionError,
)


def _log_retry(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        probe.retried(what)
        level = log.warning if state.attempt_number in (1, 5) or state.attempt_number % 20 == 0 else log.debug
        level("retrying", what=what, attempt=state.attempt_number, error=repr(exc))

    return before_sleep


async def forever(what: str, fn: Callable[[], Awaitable[T]], *, initial: float, maximum: float) -> T:
    """Call `fn` until it succeeds, backing off on transient NATS failures; other errors propagate."""
    try:  # the common case, without building tenacity's machinery on a hot path
        return await fn()
    except TRANSIENT as exc:
        probe.retried(what)
        log.debug("retrying", what=what, attempt=0, error=repr(exc))
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(TRANSIENT),
        wait=wait_random_exponential(multiplier=initial, max=maximum),
        before_sleep=_log_retry(what),
        reraise=True,
    ):
        with attempt:
            return await fn()
    raise AssertionError("unreachable")
