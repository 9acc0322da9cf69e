"""The local metric channel: a unix stream socket per job that `incl.log()` writes JSON lines to."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
from collections.abc import Awaitable, Callable

import structlog

from incl.proto.messages import MetricPoint

log = structlog.get_logger()

MAX_LINE = 1 << 20


def parse_point(line: bytes) -> MetricPoint:
    """One SDK line -> MetricPoint; ValueError on anything malformed."""
    try:
        raw = json.loads(line)
        values = {str(k): float(v) for k, v in raw["values"].items()}
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
    def __init__(self, path: str, sink: Callable[[MetricPoint], Awaitable[None]]) -> None:
        self.path = path
        self._sink = sink
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> MetricChannel:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._server = await asyncio.start_unix_server(self._serve, self.path, limit=MAX_LINE)
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

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            while line := await reader.readline():
                try:
                    point = parse_point(line)
                except ValueError as exc:
                    log.warning("metric_dropped", error=str(exc))
                    continue
                await self._sink(point)
        except (ValueError, ConnectionError) as exc:  # a line over MAX_LINE, or the job vanished
            log.warning("metric_channel_closed", error=repr(exc))
        finally:
            writer.close()
            self._conns.discard(task)
