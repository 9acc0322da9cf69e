"""Collecting metric batches into series (incl.web.metrics.Collector): a batch taken a column at a time gives
the same series as point by point."""

from __future__ import annotations

import math

from incl.proto.messages import MetricBatch, MetricPoint
from incl.web.metrics import Collector


def batch(points: list[tuple[float, int | None, dict[str, float]]], rank: int = 0) -> MetricBatch:
    return MetricBatch(job_id="j", attempt=1, seq=0, rank=rank,
                       points=[MetricPoint(ts=ts, step=step, values=values) for ts, step, values in points])


def collected(batches: list[MetricBatch], by_time: bool = False) -> dict[str, tuple[list[float], list[float], bool]]:
    c = Collector(by_time)
    for b in batches:
        c.add(b)
    return {name: (list(s.x), list(s.y), s.ordered) for name, s in c.series().items()}


def test_same_metrics_in_every_point_are_taken_as_columns_with_order_kept() -> None:
    out = collected([batch([(1.0, 0, {"a": 1.0, "b": 2.0}), (2.0, 1, {"a": 3.0, "b": math.inf})]),
                     batch([(3.0, 2, {"a": 5.0, "b": 6.0})])])
    assert out["a"] == ([0.0, 1.0, 2.0], [1.0, 3.0, 5.0], True)
    assert out["b"][1] == [2.0, math.inf, 6.0]


def test_a_step_going_back_marks_the_series_unordered_within_and_across_batches() -> None:
    assert not collected([batch([(1.0, 5, {"a": 1.0}), (2.0, 3, {"a": 2.0})])])["a"][2]
    assert not collected([batch([(1.0, 5, {"a": 1.0})]), batch([(2.0, 3, {"a": 2.0})])])["a"][2]


def test_points_without_a_step_or_with_other_metrics_count_per_metric() -> None:
    out = collected([batch([(1.0, None, {"a": 1.0}), (2.0, None, {"a": 2.0, "b": 9.0}), (3.0, None, {"a": 3.0})])])
    assert out["a"][0] == [0.0, 1.0, 2.0] and out["b"][0] == [0.0]
    by_time = collected([batch([(1.0, None, {"a": 1.0}), (2.0, None, {"a": 2.0})])], by_time=True)
    assert by_time["a"][0] == [1.0, 2.0]


def test_ranks_are_series_of_their_own() -> None:
    out = collected([batch([(1.0, 0, {"a": 1.0})], rank=0), batch([(1.0, 0, {"a": 2.0})], rank=1)])
    assert out == {"a [rank 0]": ([0.0], [1.0], True), "a [rank 1]": ([0.0], [2.0], True)}


def test_points_with_as_many_metrics_but_other_names_are_taken_point_by_point() -> None:
    out = collected([batch([(1.0, 0, {"a": 1.0, "b": 2.0}), (2.0, 1, {"a": 3.0, "c": 4.0})])])
    assert out == {"a": ([0.0, 1.0], [1.0, 3.0], True), "b": ([0.0], [2.0], True), "c": ([1.0], [4.0], True)}
