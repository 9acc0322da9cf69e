"""Which S3 failures are worth another try, and the tenacity loop that tries again, then gives a clear error.

botocore's own retries are switched off (see s3api.py) so that there is one retry policy, ours, with its
attempts and backoff in StoreConfig.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_random_exponential

from incl.artifacts.config import StoreConfig
from incl.artifacts.errors import StoreError, StoreUnavailable

T = TypeVar("T")

log = structlog.get_logger()

THROTTLED = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottled",
    "RequestThrottledException", "TooManyRequestsException", "RequestLimitExceeded", "BandwidthLimitExceeded",
    "ProvisionedThroughputExceededException", "ServiceUnavailable", "InternalError", "RequestTimeout",
    "RequestTimeoutException", "PriorRequestNotComplete", "EC2ThrottledException",
})
NETWORK: tuple[type[BaseException], ...] = (
    HTTPClientError, BotoConnectionError, asyncio.TimeoutError, builtins.ConnectionError,
)


def error_code(exc: ClientError) -> tuple[str, int]:
    err = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(err.get("Code", "")), int(status or 0)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ClientError):
        code, status = error_code(exc)
        return code in THROTTLED or status >= 500 or status == 429
    # Imported here: it costs 0.3 s at start-up and is loaded anyway once a client exists to fail.
    import aiohttp  # noqa: PLC0415 - see above

    return isinstance(exc, (*NETWORK, aiohttp.ClientError))


def _log_retry(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        log.info("store_retry", what=what, attempt=state.attempt_number, error=repr(exc))

    return before_sleep


async def retrying(what: str, fn: Callable[[], Awaitable[T]], cfg: StoreConfig) -> T:
    """`fn()` until it succeeds or fails for good; StoreUnavailable once `cfg.retries` attempts have failed."""
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(cfg.retries),
            wait=wait_random_exponential(multiplier=cfg.retry_initial, max=cfg.retry_max),  # AWS's full jitter
            before_sleep=_log_retry(what),
            reraise=True,
        ):
            with attempt:
                return await fn()
    except Exception as exc:
        if is_transient(exc):
            raise StoreUnavailable(f"{what} failed {cfg.retries} times; last error: {_describe(exc)}",
                                   path=what) from exc
        if isinstance(exc, (ClientError, BotoCoreError)):  # access denied, no such bucket, no credentials...
            raise StoreError(f"{what} failed: {_describe(exc)}", path=what) from exc
        raise  # ours (NotFound, FileChanged, IntegrityError...) as they are
    raise AssertionError("unreachable")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        code, status = error_code(exc)
        return f"HTTP {status}" if code in ("", str(status)) else f"HTTP {status} {code}"
    return f"{type(exc).__name__}: {exc}"
