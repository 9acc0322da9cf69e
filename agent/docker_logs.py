"""A container's output as exact bytes, stdout and stderr apart, from Docker's multiplexed log stream.

aiodocker decodes logs to text and mixes the streams, so the frames are read here (through aiodocker's `_query`,
which keeps its connection, timeouts and errors): each is an 8-byte header (stream id, 3 zero bytes, big-endian
payload length) and the payload, one log message. Messages are asked for with their timestamps, which makes
each one identifiable, so `LogCursor` can find where it stopped in a later read and deliver only what is new:

- a followed stream that breaks is followed again from the start, skipping what was delivered;
- a follow can end before the last messages (Docker 20.10 does, now and then, when the container exits), so
  after the exit `catch_up` reads the log's last messages and delivers those after the last one delivered.

Docker stores a line longer than its 16 KiB copy buffer as pieces that share one timestamp. Engines before
API 1.42 (Docker 20.10 and older) then drop the newline that ends such a line when they read the `local` log
back; with `repair_split_lines` the cursor puts it back after the group's last piece. One case stays ambiguous:
output that ends inside such a line gets a newline it may not have had.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator

import aiodocker
import aiohttp
import structlog

from incl.agent.runtime import OutputSink
from incl.proto.messages import Stream

HEADER = 8
STREAMS = {1: Stream.STDOUT, 2: Stream.STDERR}
SYSTEM_ERROR = 3  # the engine's own trouble reading the log ("Error grabbing logs: ...")
HEAD_BYTES = 1024  # the start of stderr is kept: it holds the init's "exec failed" message
SPLIT = 16 * 1024  # Docker's log copy buffer: a longer line is stored as pieces of this size

log = structlog.get_logger()

Message = tuple[Stream, bytes, bytes]  # stream, timestamp, data
Key = tuple[Stream, bytes, int]  # stream, timestamp, rank among that stream's messages with that timestamp


class FrameParser:
    """Feed raw bytes of one response, get its complete `(stream, timestamp, data)` messages."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        messages: list[Message] = []
        pos, buf = 0, self._buf
        while len(buf) - pos >= HEADER:
            end = pos + HEADER + int.from_bytes(buf[pos + 4:pos + HEADER], "big")
            if end > len(buf):
                break
            stream = STREAMS.get(buf[pos])
            if stream is not None:
                stamp, _, line = bytes(buf[pos + HEADER:end]).partition(b" ")
                messages.append((stream, stamp, line))
            elif buf[pos] == SYSTEM_ERROR:
                log.warning("container_logs_error", error=bytes(buf[pos + HEADER:end]).decode(errors="replace"))
            pos = end
        del buf[:pos]
        return messages


class Ranker:
    """Gives each message of a read its `Key`; a read must start at the log's start or at a group's start."""

    def __init__(self) -> None:
        self._runs: dict[Stream, tuple[bytes, int]] = {}

    def key(self, stream: Stream, stamp: bytes) -> Key:
        last, rank = self._runs.get(stream, (b"", 0))
        rank = rank + 1 if last == stamp else 1
        self._runs[stream] = (stamp, rank)
        return stream, stamp, rank


class LogCursor:
    """What of a container's output the sink has had, and the reads that deliver the rest."""

    def __init__(self, sink: OutputSink, *, repair_split_lines: bool = False) -> None:
        self._sink = sink
        self._repair = repair_split_lines
        self._last: Key | None = None  # the last message delivered
        self._open: dict[Stream, bytes] = {}  # stream -> timestamp of the long line it is in the middle of
        self.stderr_head = b""

    async def follow(self, docker: aiodocker.Docker, container_id: str, *, connect_timeout: float) -> None:
        """Read from the start and on, delivering what comes after the last message delivered."""
        await self._read(docker, container_id, {"follow": "1"}, connect_timeout)

    async def catch_up(self, docker: aiodocker.Docker, container_id: str, *, window: int,
                       connect_timeout: float) -> None:
        """Once the container has ended: deliver the messages a follow missed, looking at the log's last
        `window` messages first and at all of it only if the last one delivered is not among them."""
        if self._last is not None:
            if await self._read(docker, container_id, {"tail": str(window)}, connect_timeout, window=window):
                return
            log.info("container_logs_reread", container=container_id[:12], window=window)
        await self._read(docker, container_id, {}, connect_timeout)

    async def _read(self, docker: aiodocker.Docker, container_id: str, params: dict[str, str],
                    connect_timeout: float, *, window: int | None = None) -> bool:
        """Deliver the messages after the last one delivered; False when this read cannot tell which those are:
        the last one is not in it, or the read is a `window` of the log's last messages that may start inside
        the last one's group of equal timestamps (then nothing is delivered)."""
        first: dict[Stream, bytes] = {}
        target, ranks, seen = self._last, Ranker(), 0
        held: list[tuple[Key, bytes]] | None = None  # kept back until it is sure the window is the whole log
        async with contextlib.aclosing(self._chunks(docker, container_id, params, connect_timeout)) as chunks:
            async for chunk in chunks:
                new = []
                for stream, stamp, line in chunk:
                    seen += 1
                    key = ranks.key(stream, stamp)
                    first.setdefault(stream, stamp)
                    if target is None:
                        new.append((key, line))
                    elif key == target:
                        target = None
                        if window is not None and first[stream] == stamp:
                            held = []
                if held is not None:
                    held.extend(new)
                else:
                    await self._deliver(new)
        if held is not None:
            if seen >= window:  # type: ignore[operator]
                return False
            await self._deliver(held)
        return target is None

    async def _chunks(self, docker: aiodocker.Docker, container_id: str, params: dict[str, str],
                      connect_timeout: float) -> AsyncGenerator[list[Message]]:
        query = {"stdout": "1", "stderr": "1", "timestamps": "1", **params}
        # A follow waits as long as the job is quiet; a plain read is never quiet for long unless stuck.
        stall = None if "follow" in params else connect_timeout
        timeout = aiohttp.ClientTimeout(total=None, sock_read=stall, sock_connect=connect_timeout)
        parser = FrameParser()
        async with docker._query(f"containers/{container_id}/logs", params=query, timeout=timeout) as response:
            try:
                async for data in response.content.iter_any():
                    yield parser.feed(data)
            finally:
                response.close()  # aiodocker leaves a stream it did not finish open; a follow may be cancelled

    async def _deliver(self, messages: list[tuple[Key, bytes]]) -> None:
        """To the sink, adjacent messages of one stream joined into one chunk."""
        if not messages:
            return
        self._last = messages[-1][0]
        chunks: list[tuple[Stream, bytearray]] = []
        for (stream, stamp, _), line in messages:
            if self._repair:
                line = self._restore_newline(stream, stamp, line)
            if chunks and chunks[-1][0] is stream:
                chunks[-1][1].extend(line)
            elif line:
                chunks.append((stream, bytearray(line)))
        for stream, data in chunks:
            if stream is Stream.STDERR and len(self.stderr_head) < HEAD_BYTES:
                self.stderr_head = (self.stderr_head + data)[:HEAD_BYTES]
            await self._sink(stream, bytes(data))

    def _restore_newline(self, stream: Stream, stamp: bytes, line: bytes) -> bytes:
        """The first piece of a long line's group that is not a full 16 KiB piece is its last: end it."""
        piece = len(line) == SPLIT and not line.endswith(b"\n")
        if self._open.get(stream) == stamp:
            if piece:
                return line
            del self._open[stream]
            return line + b"\n"
        if piece:
            self._open[stream] = stamp
        return line

