"""Small, dependency-free statistics helpers shared by the benchmark scripts.

Pure functions only (no I/O, no globals) so both the peer side (run from the
isolated ``.bench-venv``) and our own side can import them:

    from bench.stats import percentile, summary      # from the repo root
    from stats import percentile, summary            # from inside bench/
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["mean", "median", "percentile", "rate", "summary"]


def _clean(values: Iterable[float]) -> list[float]:
    out = []
    for v in values:
        f = float(v)
        if math.isnan(f):
            raise ValueError("NaN in benchmark values")
        out.append(f)
    return out


def percentile(values: Iterable[float], q: float) -> float:
    """q-th percentile (0 <= q <= 100) with linear interpolation between
    closest ranks (the same definition as numpy's default ``"linear"``
    method). Raises ValueError on an empty input or q out of range."""
    if not 0.0 <= float(q) <= 100.0:
        raise ValueError(f"percentile q must be within [0, 100], got {q!r}")
    xs = sorted(_clean(values))
    if not xs:
        raise ValueError("percentile of an empty sequence")
    if len(xs) == 1:
        return xs[0]
    pos = (len(xs) - 1) * (float(q) / 100.0)
    lo = math.floor(pos)
    hi = math.ceil(pos)
    if lo == hi:
        return xs[int(pos)]
    frac = pos - lo
    return xs[lo] + (xs[hi] - xs[lo]) * frac


def median(values: Iterable[float]) -> float:
    return percentile(values, 50.0)


def mean(values: Iterable[float]) -> float:
    xs = _clean(values)
    if not xs:
        raise ValueError("mean of an empty sequence")
    return math.fsum(xs) / len(xs)


def summary(values: Sequence[float] | Iterable[float], ndigits: int | None = 3) -> dict:
    """Summary dict: n, p50, p90, p99, mean, min, max, stdev.

    ``ndigits`` rounds the floats (None = no rounding). An empty input gives
    ``{"n": 0}`` so a failed run still serialises."""
    xs = _clean(values)
    if not xs:
        return {"n": 0}
    m = math.fsum(xs) / len(xs)
    var = math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0
    out = {
        "n": len(xs),
        "p50": percentile(xs, 50),
        "p90": percentile(xs, 90),
        "p99": percentile(xs, 99),
        "mean": m,
        "min": min(xs),
        "max": max(xs),
        "stdev": math.sqrt(var),
    }
    if ndigits is not None:
        out = {k: (round(v, ndigits) if isinstance(v, float) else v) for k, v in out.items()}
    return out


def rate(count: float, seconds: float) -> float:
    """count / seconds, 0.0 when no time elapsed (avoids ZeroDivisionError)."""
    return float(count) / seconds if seconds > 0 else 0.0
