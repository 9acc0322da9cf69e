"""How a metric's series becomes a trial's value (`hpo.objective`), refusing what Optuna must never be told."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal


class NoValue(Exception):
    """The trial has no usable value: it FAILs with this reason (never a silent 0)."""


def trial_value(series: Sequence[float], metric: str, objective: Literal["last", "best", "min", "max"],
                direction: Literal["minimize", "maximize"]) -> float:
    if not series:
        raise NoValue(f"the metric {metric!r} was never logged (the job must call incl.log({metric}=...))")
    if objective == "best":
        objective = "min" if direction == "minimize" else "max"
    if objective == "last":
        value = series[-1]
    else:
        finite = [v for v in series if math.isfinite(v)]
        if not finite:
            raise NoValue(f"every value of {metric!r} was NaN or infinite ({len(series)} logged)")
        value = min(finite) if objective == "min" else max(finite)
    if math.isnan(value):
        raise NoValue(f"the last value of {metric!r} was NaN")
    if math.isinf(value):
        raise NoValue(f"the last value of {metric!r} was {'+' if value > 0 else '-'}inf")
    return value
