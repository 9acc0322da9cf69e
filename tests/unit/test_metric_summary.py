"""An attempt's metrics reduced as its agent logs them (incl.agent.metricsummary), and the whole-run chart the
web server draws from the summaries (incl.web.summary): the same picture as the chart of every point."""

from __future__ import annotations

import math
import random

import msgspec

from incl.agent.metricsummary import Summary
from incl.proto.codec import Decoder, encode
from incl.proto.messages import MetricBatch, MetricPoint, MetricSummary
from incl.web import summary
from incl.web.metrics import Collector, Series, chart


def points(n: int, seed: int = 1, stepped: bool = True) -> list[MetricPoint]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        v = 1 / (1 + i / 2000) + 0.05 * math.sin(i / 500) + rng.random() * 0.02
        if i in (n // 3, n // 3 + 1):
            v = math.nan
        if i == n // 2:
            v = 9.0  # a spike
        out.append(MetricPoint(ts=1000.0 + i / 10, step=i * 2 if stepped else None, values={"loss": v}))
    return out


def summarized(pts: list[MetricPoint], attempt: int = 1, buckets: int = 64) -> MetricSummary:
    s = Summary(buckets)
    for p in pts:
        s.add(p)
    made = MetricSummary(job_id="j", attempt=attempt, batches=3, series=s.series())
    return Decoder(MetricSummary).decode(encode(made))  # as the web server reads it


def collected(pts: list[MetricPoint]) -> Series:
    c = Collector()
    c.add(MetricBatch(job_id="j", attempt=1, seq=0, points=pts))
    return c.series()["loss"]


def test_a_short_series_is_kept_whole_and_charts_as_every_point() -> None:
    pts = points(100)
    got = summary.charts([summarized(pts)], by_time=False, points=2000)["loss"]
    every = chart(collected(pts), 2000, None, None)
    assert (got.x, got.y, got.points, got.total) == (every.x, every.y, 100, 100)


def test_a_long_series_keeps_its_extremes_spikes_and_gaps_in_a_bounded_size() -> None:
    pts = points(200_000)
    made = summarized(pts, buckets=64)
    kept = made.series[0]
    assert kept.points == 200_000 and 64 <= len(kept.index) <= 3 * 129  # 64 to 128 buckets (+ the open one)
    assert kept.index == sorted(kept.index)
    whole = collected(pts)
    xs, ys = whole.x.tolist(), list(whole.y)
    for i, x, y in zip(kept.index, kept.steps, kept.values, strict=True):  # each kept point is a real one
        assert xs[i] == x and (ys[i] == y or (math.isnan(y) and math.isnan(ys[i])))
    got = summary.charts([made], by_time=False, points=300)["loss"]
    finite = [y for y in ys if math.isfinite(y)]
    assert min(finite) in got.y and 9.0 in got.y and "NaN" in got.y
    assert got.points == got.total == 200_000 and got.downsampled and len(got.x) <= 300
    assert got.x == sorted(got.x) and got.x[0] <= xs[1_000] and got.x[-1] >= xs[-1_000]  # the whole run


def test_buckets_merge_as_they_fill_so_the_picture_is_even_across_the_run() -> None:
    pts = points(10_000)
    kept = summarized(pts, buckets=16).series[0]
    # buckets of equal width: the kept points spread over the whole run, none of it left out
    quarters = [sum(1 for i in kept.index if q * 2500 <= i < (q + 1) * 2500) for q in range(4)]
    assert min(quarters) >= 8, quarters


def test_attempts_follow_each_other_and_step_less_points_are_numbered_on() -> None:
    first, second = points(50, stepped=False), points(70, seed=2, stepped=False)
    got = summary.charts([summarized(first), summarized(second, attempt=2)], by_time=False, points=2000)["loss"]
    assert got.x == [float(i) for i in range(120)] and got.total == 120
    by_time = summary.charts([summarized(first), summarized(second, attempt=2)], by_time=True, points=2000)["loss"]
    assert by_time.x[:50] == [p.ts for p in first]


def test_a_summary_fits_a_message_by_merging_buckets() -> None:
    s = Summary(512)
    for p in points(100_000):
        s.add(p)
    sizes = [len(encode(s.series(at_most))) for at_most in (None, 512, 256, 64)]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0] / 8


def test_a_summary_that_is_not_as_an_agent_writes_it_is_not_drawn() -> None:
    good = summarized(points(300)).series[0]
    assert summary.whole(good)
    for bad in [msgspec.structs.replace(good, values=good.values[:-1]),  # a column short
                msgspec.structs.replace(good, points=len(good.index) - 1),  # more kept than logged
                msgspec.structs.replace(good, index=list(reversed(good.index))),  # out of order
                msgspec.structs.replace(good, index=[i + good.points for i in good.index])]:  # past the end
        assert not summary.whole(bad)
