"""Collecting metric batches into series (incl.web.metrics.Collector): a batch taken a column at a time gives
the same series as point by point, whether it came as a list of points or as columns (what agents write)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from incl.proto.codec import Decoder, encode
from incl.proto.messages import MetricBatch, MetricColumns, MetricPoint
from incl.web.metrics import Collector

Rows = list[tuple[float, int | None, dict[str, float]]]
Make = Callable[..., MetricBatch]


def make(points: Rows, rank: int = 0, columns: bool = False) -> MetricBatch:
    pts = [MetricPoint(ts=ts, step=step, values=values) for ts, step, values in points]
    b = MetricBatch(job_id="j", attempt=1, seq=0, rank=rank, points=MetricColumns.of(pts) if columns else pts)
    return Decoder(MetricBatch).decode(encode(b))  # as a reader gets it off the stream


@pytest.fixture(params=["points", "columns"])
def batch(request: pytest.FixtureRequest) -> Make:
    return lambda points, rank=0: make(points, rank, columns=request.param == "columns")


def collected(batches: list[MetricBatch], by_time: bool = False) -> dict[str, tuple[list[float], list[float], bool]]:
    c = Collector(by_time)
    for b in batches:
        c.add(b)
    return {name: (list(s.x), list(s.y), s.ordered) for name, s in c.series().items()}


def test_same_metrics_in_every_point_are_taken_as_columns_with_order_kept(batch: Make) -> None:
    out = collected([batch([(1.0, 0, {"a": 1.0, "b": 2.0}), (2.0, 1, {"a": 3.0, "b": math.inf})]),
                     batch([(3.0, 2, {"a": 5.0, "b": 6.0})])])
    assert out["a"] == ([0.0, 1.0, 2.0], [1.0, 3.0, 5.0], True)
    assert out["b"][1] == [2.0, math.inf, 6.0]


def test_a_step_going_back_marks_the_series_unordered_within_and_across_batches(batch: Make) -> None:
    assert not collected([batch([(1.0, 5, {"a": 1.0}), (2.0, 3, {"a": 2.0})])])["a"][2]
    assert not collected([batch([(1.0, 5, {"a": 1.0})]), batch([(2.0, 3, {"a": 2.0})])])["a"][2]


def test_points_without_a_step_or_with_other_metrics_count_per_metric(batch: Make) -> None:
    out = collected([batch([(1.0, None, {"a": 1.0}), (2.0, None, {"a": 2.0, "b": 9.0}), (3.0, None, {"a": 3.0})])])
    assert out["a"][0] == [0.0, 1.0, 2.0] and out["b"][0] == [0.0]
    by_time = collected([batch([(1.0, None, {"a": 1.0}), (2.0, None, {"a": 2.0})])], by_time=True)
    assert by_time["a"][0] == [1.0, 2.0]


def test_ranks_are_series_of_their_own(batch: Make) -> None:
    out = collected([batch([(1.0, 0, {"a": 1.0})], rank=0), batch([(1.0, 0, {"a": 2.0})], rank=1)])
    assert out == {"a [rank 0]": ([0.0], [1.0], True), "a [rank 1]": ([0.0], [2.0], True)}


def test_points_with_as_many_metrics_but_other_names_are_taken_point_by_point(batch: Make) -> None:
    out = collected([batch([(1.0, 0, {"a": 1.0, "b": 2.0}), (2.0, 1, {"a": 3.0, "c": 4.0})])])
    assert out == {"a": ([0.0, 1.0], [1.0, 3.0], True), "b": ([0.0], [2.0], True), "c": ([1.0], [4.0], True)}


def test_columns_read_as_the_points_they_hold_and_collect_the_same() -> None:
    rng = random.Random(7)
    rows: Rows = []
    for i in range(500):  # runs broken by other names and by points without a step
        names = rng.choice([["loss"], ["loss", "acc"], ["lr"]])
        rows.append((float(i), rng.choice([i, i, i, None, i - 3]), {n: rng.random() for n in names}))
    plain, cols = make(rows), make(rows, columns=True)
    assert isinstance(cols.points, MetricColumns) and len(cols.points) == 500
    assert cols.points == plain.points and list(cols.points) == plain.points
    assert cols.points[-1] == plain.points[-1] and cols.points[123] == plain.points[123]
    for by_time in (False, True):
        assert collected([plain, plain], by_time) == collected([cols, cols], by_time)


def test_columns_are_smaller_on_the_wire() -> None:
    rows: Rows = [(1.7e9 + i, i, {"loss": 1 / (i + 1)}) for i in range(1000)]
    pts = [MetricPoint(ts=ts, step=step, values=v) for ts, step, v in rows]
    as_points = encode(MetricBatch(job_id="j", attempt=1, seq=0, points=pts))
    as_columns = encode(MetricBatch(job_id="j", attempt=1, seq=0, points=MetricColumns.of(pts)))
    assert len(as_columns) < 0.8 * len(as_points)
