"""The web server's cache of jobs' collected metric points (incl.web.pointcache): what it reads, keeps and drops."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from incl.proto.messages import Attempt, Job, JobState, MetricBatch, MetricPoint
from incl.proto.spec import load_spec
from incl.web.pointcache import PointCache


def job(job_id: str, state: JobState, attempts: int = 1) -> Job:
    return Job(id=job_id, spec=load_spec({"run": "python train.py"}), user="ann", state=state, submitted_at=0.0,
               updated_at=0.0, attempts=[Attempt(number=n + 1, agent_id="a", state=state, assigned_at=0.0,
                                                 output_key=f"k{n}") for n in range(attempts)])


class Stream:
    """Batches per attempt at sequences 10, 20, 30, ... (a stream shared with other jobs); counts its reads."""

    def __init__(self) -> None:
        self.attempts: list[list[MetricBatch]] = []
        self.reads: list[tuple[int, int]] = []

    def write(self, attempt: int, points: int, start: int = 0) -> None:
        while len(self.attempts) <= attempt:
            self.attempts.append([])
        pts = [MetricPoint(ts=float(i), step=i, values={"loss": float(i)}) for i in range(start, start + points)]
        self.attempts[attempt].append(MetricBatch(job_id="j", attempt=attempt + 1, seq=0, points=pts))

    async def read(self, job: Job, attempt: int, seq: int) -> AsyncGenerator[tuple[int, int, MetricBatch], None]:
        self.reads.append((attempt, seq))
        for n in range(attempt, len(job.attempts)):
            for k, batch in enumerate(self.attempts[n] if n < len(self.attempts) else []):
                at = 10 * (k + 1)
                if n > attempt or at > seq:
                    yield n, at, batch


async def points(cache: PointCache, record: Job, stream: Stream) -> list[float]:
    async with cache.series(record, False, stream.read) as held:
        return list(held.collector.series()["loss"].y) if held.collector.series() else []


async def test_an_ended_job_is_read_once_then_served_without_a_read() -> None:
    stream, cache = Stream(), PointCache(1000)
    stream.write(0, 5)
    record = job("j1", JobState.SUCCEEDED)
    assert await points(cache, record, stream) == [0, 1, 2, 3, 4]
    assert await points(cache, record, stream) == [0, 1, 2, 3, 4]
    assert stream.reads == [(0, 0)]


async def test_a_running_job_reads_only_the_batches_after_those_it_has() -> None:
    stream, cache = Stream(), PointCache(1000)
    stream.write(0, 3)
    running = job("j1", JobState.RUNNING)
    assert await points(cache, running, stream) == [0, 1, 2]
    stream.write(0, 2, start=3)
    assert await points(cache, running, stream) == [0, 1, 2, 3, 4]
    assert stream.reads == [(0, 0), (0, 10)]
    # a second attempt began, then the job ended: the rest of the first, then the second from its start
    stream.write(1, 2, start=5)
    ended = job("j1", JobState.SUCCEEDED, attempts=2)
    assert await points(cache, ended, stream) == [0, 1, 2, 3, 4, 5, 6]
    assert stream.reads[-1] == (0, 20)
    assert await points(cache, ended, stream) == [0, 1, 2, 3, 4, 5, 6]
    assert len(stream.reads) == 3  # final: not read again


async def test_the_batch_count_is_that_of_all_batches_read() -> None:
    """The page opens its live stream after this many batches: a resumed read must count the earlier ones."""
    stream, cache = Stream(), PointCache(1000)
    stream.write(0, 3)
    running = job("j1", JobState.RUNNING)
    await points(cache, running, stream)
    stream.write(0, 3, start=3)
    async with cache.series(running, False, stream.read) as held:
        assert held.collector.batches == 2


async def test_the_bound_drops_the_least_recently_used_job() -> None:
    stream, cache = Stream(), PointCache(10)
    stream.write(0, 4)
    a, b, c = (job(i, JobState.SUCCEEDED) for i in ("a", "b", "c"))
    await points(cache, a, stream)
    await points(cache, b, stream)
    await points(cache, a, stream)  # a is now the most recent
    await points(cache, c, stream)  # 12 points > 10: b goes
    assert cache.points == 8 and len(cache) == 2
    reads = len(stream.reads)
    await points(cache, a, stream)
    assert len(stream.reads) == reads  # still cached
    await points(cache, b, stream)
    assert len(stream.reads) == reads + 1  # read again


async def test_a_job_larger_than_the_bound_is_served_but_not_kept() -> None:
    stream, cache = Stream(), PointCache(3)
    stream.write(0, 5)
    record = job("big", JobState.SUCCEEDED)
    assert await points(cache, record, stream) == [0, 1, 2, 3, 4]
    assert cache.points == 0 and len(cache) == 0
    assert await points(cache, record, stream) == [0, 1, 2, 3, 4]
    assert len(stream.reads) == 2


async def test_step_and_time_are_kept_apart() -> None:
    stream, cache = Stream(), PointCache(1000)
    stream.write(0, 2)
    record = job("j1", JobState.SUCCEEDED)
    async with cache.series(record, True, stream.read) as by_time:
        assert list(by_time.collector.series()["loss"].x) == [0.0, 1.0]
    await points(cache, record, stream)
    assert len(stream.reads) == 2 and len(cache) == 2


async def test_a_read_that_fails_midway_keeps_what_it_read_and_goes_on_from_there() -> None:
    stream, cache = Stream(), PointCache(1000)
    stream.write(0, 2)
    stream.write(0, 2, start=2)
    running = job("j1", JobState.RUNNING)

    async def failing(record: Job, attempt: int, seq: int) -> AsyncGenerator[tuple[int, int, MetricBatch], None]:
        async for item in stream.read(record, attempt, seq):
            yield item
            raise TimeoutError

    try:
        async with cache.series(running, False, failing):
            pass
    except TimeoutError:
        pass
    assert await points(cache, running, stream) == [0, 1, 2, 3]
    assert stream.reads[-1] == (0, 10)


async def test_the_whole_range_reduced_is_kept_until_new_points_come() -> None:
    stream, cache = Stream(), PointCache(1000)
    stream.write(0, 30)
    running = job("j1", JobState.RUNNING)
    async with cache.series(running, False, stream.read) as held:
        first = held.charts(9, None, None)
        assert first["loss"].downsampled and held.charts(9, None, None) is first
        assert held.charts(9, 3.0, 5.0)["loss"].x == [3.0, 4.0, 5.0]
        assert held.points == 30 + len(first["loss"].x)  # counted against the bound
    stream.write(0, 10, start=30)
    async with cache.series(running, False, stream.read) as held:
        assert held.charts(9, None, None)["loss"].total == 40
