"""The local metric channel: a unix stream socket per job that `incl.log()` writes JSON lines to."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
from collections.abc import Awaitable, Callable

import structlog

from incl.proto import limits
from incl.proto.messages import MetricPoint

log = structlog.get_logger()

READ_CHUNK = 64 * 1024
MAX_ERRORS_REPORTED = 10  # per attempt, into the job's log


def parse_point(line: bytes) -> MetricPoint:
    """One SDK line -> MetricPoint; ValueError on anything malformed or over the limits."""
    if len(line) > limits.METRIC_LINE_MAX_BYTES:
        raise ValueError(f"a metric line of {len(line)} bytes, over the {limits.METRIC_LINE_MAX_BYTES} byte limit")
    try:
        raw = json.loads(line)
        values = {str(k): float(v) for k, v in raw["values"].items()}
        if len(values) > limits.METRIC_MAX_VALUES:
            raise ValueError(f"{len(values)} values in one point, over the limit of {limits.METRIC_MAX_VALUES}")
        if long := [k for k in values if len(k) > limits.METRIC_NAME_MAX_CHARS]:
            raise ValueError(f"metric name {long[0][:40]!r}... is {len(long[0])} characters, over the limit of "
                             f"{limits.METRIC_NAME_MAX_CHARS}")
        step = raw.get("step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise ValueError("step must be an int")
        ts = float(raw["ts"])
        if not math.isfinite(ts):
            raise ValueError("ts must be finite")
        return MetricPoint(ts=ts, step=step, values=values)
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise ValueError(str(exc)) from None


class MetricChannel:
    """Serves the job's metric socket. A malformed or oversized line is dropped and reported through
    `on_error` (into the job's own log); the connection and the other lines go on."""

    def __init__(self, path: str, sink: Callable[[MetricPoint], Awaitable[None]],
                 on_error: Callable[[str], Awaitable[None]] | None = None, owner: int | None = None) -> None:
        self.path = path
        self._owner = owner  # a job running as its own user: the socket and its folder are that user's alone
        self._sink = sink
        self._on_error = on_error
        self._errors = 0
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> MetricChannel:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._server = await asyncio.start_unix_server(self._serve, self.path, limit=READ_CHUNK)
        if self._owner is not None:
            folder = os.path.dirname(self.path)
            for path in (folder, self.path):
                os.chown(path, self._owner, self._owner)
            os.chmod(folder, 0o700)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Stop listening and read what connected writers already sent (the job has exited by now)."""
        assert self._server is not None
        self._server.close()
        if self._conns:
            await asyncio.wait(self._conns, timeout=2.0)
        for task in self._conns:
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    async def _dropped(self, error: str) -> None:
        self._errors += 1
        log.warning("metric_dropped", error=error)
        if self._on_error is not None and self._errors <= MAX_ERRORS_REPORTED:
            more = " (further metric errors are not reported)" if self._errors == MAX_ERRORS_REPORTED else ""
            await self._on_error(f"incl: metric point dropped: {error}{more}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        buf, skipping = b"", 0  # skipping: bytes of an over-long line being discarded
        try:
            while chunk := await reader.read(READ_CHUNK):
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if skipping:
                        await self._dropped(f"a metric line of {skipping + len(line)} bytes, over the "
                                            f"{limits.METRIC_LINE_MAX_BYTES} byte limit")
                        skipping = 0
                        continue
                    await self._line(line)
                if len(buf) > limits.METRIC_LINE_MAX_BYTES:  # never hold an endless line in memory
                    skipping += len(buf)
                    buf = b""
        except ConnectionError as exc:  # the job vanished
            log.warning("metric_channel_closed", error=repr(exc))
        finally:
            writer.close()
            self._conns.discard(task)

    async def _line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            point = parse_point(line)
        except ValueError as exc:
            await self._dropped(str(exc))
            return
        await self._sink(point)
