"""The unit-cube coding of a search space, and its split into groups of parameters that occur together.

Every numeric parameter maps to [0, 1]: log-scaled ones through their logarithm, stepped ones (every int, and
floats with a `step`) over a range widened by half a step on each side, so that each grid point owns an equal
share of the interval. A categorical parameter keeps its choice index. `Space` turns Optuna values into these
codes and back; `groups` splits a define-by-run space into the sets of parameters that always appear together.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

Numeric = FloatDistribution | IntDistribution


def _bounds(dist: Numeric) -> tuple[float, float]:
    """The interval, in the (possibly log) coded scale, that maps onto [0, 1]."""
    low, high = float(dist.low), float(dist.high)
    step = dist.step
    if step is not None:
        low, high = low - step / 2, high + step / 2
    if dist.log:
        low, high = math.log(low if low > 0 else float(dist.low)), math.log(high)
    return low, high


def _to_unit(dist: Numeric, value: float) -> float:
    low, high = _bounds(dist)
    if high <= low:
        return 0.5
    x = math.log(value) if dist.log else float(value)
    return min(1.0, max(0.0, (x - low) / (high - low)))


def _codes(dist: Numeric, values: np.ndarray) -> np.ndarray:
    """`_to_unit` over an array of values."""
    low, high = _bounds(dist)
    if high <= low:
        return np.full(values.shape, 0.5)
    x = np.log(values) if dist.log else values
    return np.asarray(np.clip((x - low) / (high - low), 0.0, 1.0))


def _from_unit(dist: Numeric, u: float) -> float:
    low, high = _bounds(dist)
    x = low + u * (high - low)
    if dist.log:
        x = math.exp(x)
    if dist.step is not None:
        x = float(dist.low) + round((x - float(dist.low)) / dist.step) * dist.step
    return min(float(dist.high), max(float(dist.low), x))


@dataclass(frozen=True)
class Space:
    """An ordered set of distributions, numeric parameters first, with their unit coding."""

    numeric: tuple[tuple[str, Numeric], ...]
    categorical: tuple[tuple[str, CategoricalDistribution], ...]

    @classmethod
    def of(cls, distributions: Mapping[str, BaseDistribution]) -> Space:
        names = sorted(distributions)
        return cls(
            numeric=tuple((n, d) for n in names if isinstance(d := distributions[n], Numeric)),
            categorical=tuple((n, d) for n in names if isinstance(d := distributions[n], CategoricalDistribution)),
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.numeric) + tuple(n for n, _ in self.categorical)

    @property
    def n_choices(self) -> np.ndarray:
        return np.array([len(d.choices) for _, d in self.categorical], dtype=np.int64)

    def encode(self, codes: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
        """One point's numeric unit codes and category indices, from a trial's per-parameter codes."""
        num = np.array([codes[n] for n, _ in self.numeric], dtype=float)
        cat = np.array([codes[n] for n, _ in self.categorical], dtype=np.int64)
        return num, cat

    def snap(self, num: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Points' numeric codes (m, dn) moved onto their grid values, and each grid cell's edges (left, right).

        A continuous dimension keeps its codes, and its cell edges equal the code (an empty cell).
        """
        centre, left, right = num.copy(), num.copy(), num.copy()
        for j, (_, dist) in enumerate(self.numeric):
            step = dist.step
            if step is None:
                continue
            lo, hi = _bounds(dist)
            x = lo + num[:, j] * (hi - lo)
            x = np.exp(x) if dist.log else x
            n_values = round((float(dist.high) - float(dist.low)) / step) + 1
            index = np.clip(np.round((x - float(dist.low)) / step), 0, n_values - 1)
            value = float(dist.low) + index * step
            centre[:, j], left[:, j], right[:, j] = (
                _codes(dist, value),
                _codes(dist, value - step / 2),
                _codes(dist, value + step / 2),
            )
        return centre, left, right

    def decode(self, num: np.ndarray, cat: np.ndarray) -> dict[str, Any]:
        """Optuna parameter values of one point."""
        params: dict[str, Any] = {}
        for (name, dist), u in zip(self.numeric, num, strict=True):
            value = _from_unit(dist, float(u))
            params[name] = round(value) if isinstance(dist, IntDistribution) else value
        for (name, cdist), i in zip(self.categorical, cat, strict=True):
            params[name] = cdist.choices[int(i)]
        return params


def code_of(dist: BaseDistribution, value: Any) -> float:
    """A parameter value's code: its unit-interval position, or its choice index for a categorical."""
    if isinstance(dist, CategoricalDistribution):
        return float(dist.to_internal_repr(value))
    assert isinstance(dist, Numeric)
    return _to_unit(dist, float(value))


def groups(signatures: Iterable[frozenset[str]], names: Iterable[str]) -> list[list[str]]:
    """Split `names` into groups of parameters that appear in exactly the same trials.

    `signatures` are the parameter-name sets of the observed trials. Two parameters share a group when every
    trial has either both or neither, so a group is sampled jointly from the trials that hold all of it, and a
    conditional branch never borrows observations from a trial in which it was absent.
    """
    distinct = list(set(signatures))
    by_membership: dict[tuple[bool, ...], list[str]] = {}
    for name in sorted(names):
        key = tuple(name in s for s in distinct)
        by_membership.setdefault(key, []).append(name)
    return list(by_membership.values())
