"""Jobs' collected metric points, kept between requests so that a chart's second load and every zoom cost only the
reduction, not a read of the whole metric stream again.

An entry is one job's series in one x (step or time), keyed by the job's id and x, and says what data it holds:
the output keys of the attempts it read and the stream sequence of the last batch it read. A request for a
running job reads only the batches after that; once an entry was read to the end of an ended job's stream, it is
served as it is, without reading NATS. An attempt list that no longer starts with the one read (which the
controller never does) starts the entry over.

The cache holds no rights of its own: the handler reads the job's record through the asking person's client
first (a person who may not read the job is refused there, whatever is cached), and the new batches through the
same client.

Bounded by the points held in all entries (`max_points`); the least recently used entries go first, and an entry
larger than the whole bound is served once and not kept.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field

import structlog

from incl.proto.messages import TERMINAL, Job, MetricBatch
from incl.web.metrics import Chart, Collector, chart

log = structlog.get_logger()

# (attempt index, stream sequence) -> the batches after it, each with its own (attempt, sequence)
Reader = Callable[[Job, int, int], AsyncGenerator[tuple[int, int, MetricBatch], None]]


@dataclass
class Entry:
    """One job's collected points in one x, and where its read stands."""
    keys: tuple[str, ...]  # the output keys of the attempts read from
    collector: Collector
    attempt: int = 0  # the attempt index the last batch read came from
    seq: int = 0  # that batch's stream sequence (0: none read)
    final: bool = False  # read to the end after the job had ended: it cannot change
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # The last whole-range answer (`points` per metric), until new batches come: a reload costs no reduction.
    whole: tuple[int, dict[str, Chart]] | None = None

    @property
    def points(self) -> int:
        kept = sum(len(c.x) for c in self.whole[1].values()) if self.whole else 0
        return self.collector.points + kept

    def charts(self, points: int, lo: float | None, hi: float | None) -> dict[str, Chart]:
        """Each metric's chart of the range (reduced to `points`)."""
        if lo is None and hi is None and self.whole is not None and self.whole[0] == points:
            return self.whole[1]
        out = {name: chart(s, points, lo, hi) for name, s in self.collector.series().items()}
        if lo is None and hi is None:
            self.whole = (points, out)
        return out


class PointCache:
    """Entries by (job id, x by time), least recently used first; at most `max_points` points in all."""

    def __init__(self, max_points: int) -> None:
        self.max_points = max_points
        self._entries: OrderedDict[tuple[str, bool], Entry] = OrderedDict()
        self._filling: set[asyncio.Task[None]] = set()

    @property
    def points(self) -> int:
        return sum(e.points for e in self._entries.values())

    def final(self, job_id: str, by_time: bool) -> bool:
        """Whether the job's points are held, read to the end of an ended job."""
        entry = self._entries.get((job_id, by_time))
        return entry is not None and entry.final

    def fill(self, job: Job, by_time: bool, read: Reader) -> None:
        """Read the job's points into the cache in the background (after a chart was answered from summaries: for
        the zooms that follow); a failure is logged, nothing else."""
        async def go() -> None:
            try:
                async with self.series(job, by_time, read):
                    pass
            except Exception as exc:  # noqa: BLE001 - the next request reads them itself
                log.warning("web_points_fill_failed", job_id=job.id, error=repr(exc))

        task = asyncio.create_task(go())
        self._filling.add(task)
        task.add_done_callback(self._filling.discard)

    async def close(self) -> None:
        for task in list(self._filling):
            task.cancel()
        await asyncio.gather(*self._filling, return_exceptions=True)

    def __len__(self) -> int:
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def series(self, job: Job, by_time: bool, read: Reader) -> AsyncIterator[Entry]:
        """The job's collected points (`.collector`, `.charts()`), brought up to date with `read` unless they are
        final; held (no other request changes them) until the block ends."""
        key = (job.id, by_time)
        keys = tuple(a.output_key for a in job.attempts)
        entry = self._entries.get(key)
        if entry is None or keys[:len(entry.keys)] != entry.keys:
            entry = self._entries[key] = Entry(keys=keys, collector=Collector(by_time))
        async with entry.lock:
            if self._entries.get(key) is not entry:  # evicted or replaced while waiting: read our own
                entry = Entry(keys=keys, collector=Collector(by_time))
            if not entry.final:
                ended = job.state in TERMINAL  # as read before the stream: all it wrote is there by now
                async with contextlib.aclosing(read(job, entry.attempt, entry.seq)) as batches:
                    async for attempt, seq, batch in batches:
                        entry.collector.add(batch)
                        entry.attempt, entry.seq = attempt, seq
                        entry.whole = None
                entry.keys = keys
                entry.final = ended
            self._entries[key] = entry
            self._entries.move_to_end(key)
            self._evict(keep=key)
            yield entry

    def _evict(self, keep: tuple[str, bool]) -> None:
        total = self.points
        for key in list(self._entries):
            if total <= self.max_points:
                return
            if key == keep and len(self._entries) > 1:
                continue
            total -= self._entries.pop(key).points
