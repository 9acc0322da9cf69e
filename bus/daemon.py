"""What INCL's daemons share: config loading, the signal-bound lifespan, waits that never swallow a
cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import structlog
import yaml

from incl.bus.connection import AuthFailed, TlsFailed

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
    except (AuthFailed, TlsFailed) as exc:  # refused, or the server's certificate did not verify: one line, no
        # traceback (retrying cannot help)
        log.error("daemon_refused", error=str(exc))
        sys.exit(1)
    except Exception:  # the last word of a dying daemon
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
