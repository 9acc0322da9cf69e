"""An attempt's metrics reduced as it logs them (pure), for the summary its agent writes after the last batch
(`MetricSummary`): per metric, buckets of consecutive points keeping the lowest, the highest and the first NaN or
infinity, as the web server's reduction does (`incl.web.metrics.downsample`).

The buckets double in width whenever there are `2 * buckets` of them (two neighbours merge: the lower of the two
lows, the higher of the two highs, the earlier odd point), so a metric costs a bounded few thousand numbers
however long it runs, each point costs a few comparisons, and the kept points draw the same picture as the full
series at a chart's width (a chart of `buckets` pixel columns or fewer).
"""

from __future__ import annotations

import math

from incl.proto.messages import MetricPoint, SeriesSummary

BUCKETS = 512  # at least this many buckets per metric once it has that many points (at most twice as many)

Kept = tuple[int, float, int | None, float]  # (index, ts, step, value)


class _Series:
    __slots__ = ("buckets", "count", "hi", "lo", "odd", "points", "width")

    def __init__(self) -> None:
        self.points = 0
        self.width = 1  # points per bucket
        self.buckets: list[tuple[Kept | None, Kept | None, Kept | None]] = []  # closed ones: (lo, hi, odd)
        self.count = 0  # points in the open bucket
        self.lo: Kept | None = None
        self.hi: Kept | None = None
        self.odd: Kept | None = None

    def add(self, ts: float, step: int | None, value: float, limit: int) -> None:
        p = (self.points, ts, step, value)
        self.points += 1
        if not math.isfinite(value):
            if self.odd is None:
                self.odd = p
        else:
            if self.lo is None or value < self.lo[3]:
                self.lo = p
            if self.hi is None or value > self.hi[3]:
                self.hi = p
        self.count += 1
        if self.count == self.width:
            self.buckets.append((self.lo, self.hi, self.odd))
            self.count, self.lo, self.hi, self.odd = 0, None, None, None
            if len(self.buckets) == 2 * limit:
                self.buckets = [_merge(self.buckets[i], self.buckets[i + 1]) for i in range(0, 2 * limit, 2)]
                self.width *= 2

    def kept(self, at_most: int) -> list[Kept]:
        """The kept points of at most `at_most` buckets (neighbours merged until there are so few)."""
        buckets = [*self.buckets, (self.lo, self.hi, self.odd)]
        while len(buckets) > at_most:
            buckets = [_merge(*buckets[i:i + 2]) if i + 1 < len(buckets) else buckets[i]
                       for i in range(0, len(buckets), 2)]
        out: list[Kept] = []
        for bucket in buckets:
            out.extend(sorted({p for p in bucket if p is not None}))
        return out


def _merge(a: tuple[Kept | None, Kept | None, Kept | None],
           b: tuple[Kept | None, Kept | None, Kept | None]) -> tuple[Kept | None, Kept | None, Kept | None]:
    lo = a[0] if b[0] is None or (a[0] is not None and a[0][3] <= b[0][3]) else b[0]
    hi = a[1] if b[1] is None or (a[1] is not None and a[1][3] >= b[1][3]) else b[1]
    return lo, hi, a[2] if a[2] is not None else b[2]


class Summary:
    """Points in, as the job logs them; `series()` out: what `MetricSummary.series` carries."""

    def __init__(self, buckets: int = BUCKETS) -> None:
        self._limit = buckets
        self._series: dict[str, _Series] = {}

    def add(self, point: MetricPoint) -> None:
        for name, value in point.values.items():
            s = self._series.get(name)
            if s is None:
                s = self._series[name] = _Series()
            s.add(point.ts, point.step, value, self._limit)

    def __bool__(self) -> bool:
        return bool(self._series)

    def series(self, at_most: int | None = None) -> list[SeriesSummary]:
        """Each metric's kept points, from at most `at_most` buckets each (default: all of them, up to twice
        `buckets`): fewer when the summary must fit in a message."""
        out = []
        for name, s in self._series.items():
            kept = s.kept(at_most or 2 * self._limit + 1)
            out.append(SeriesSummary(name=name, points=s.points, index=[k[0] for k in kept], ts=[k[1] for k in kept],
                                     steps=[k[2] for k in kept], values=[k[3] for k in kept]))
        return out
