"""A study's trials, coded once: the observations TPE fits, kept across asks so that an ask stays cheap.

A finished trial never changes, so its coded parameters, its loss and its parameter set are computed the first
time it is seen and reused on every later ask; an ask then only codes the few trials that finished since, and the
trials still running. Distributions are merged across trials: a parameter whose distribution ever changes is left
out of the joint space (it is then sampled at random).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from incl.hpo._tpe_propose import Observations
from incl.hpo._tpe_space import Space, code_of

_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class Row:
    """One trial, coded: parameter codes, the set of its parameter names, its loss (+inf if pruned), its number."""

    codes: dict[str, float]
    names: frozenset[str]
    loss: float
    number: int


def row_of(trial: FrozenTrial, direction: StudyDirection) -> Row:
    codes = {name: code_of(trial.distributions[name], value) for name, value in trial.params.items()}
    loss = math.inf
    if trial.state == TrialState.COMPLETE and trial.value is not None:
        loss = -trial.value if direction == StudyDirection.MAXIMIZE else trial.value
        loss = loss if math.isfinite(loss) else math.inf
    return Row(codes, frozenset(codes), loss, trial.number)


@dataclass
class History:
    """The coded finished trials of one study, and the distributions they agree on."""

    rows: dict[int, Row] = field(default_factory=dict)
    distributions: dict[str, BaseDistribution | None] = field(default_factory=dict)
    _arrays: dict[Space, tuple[int, Observations]] = field(default_factory=dict)

    def update(self, trials: Sequence[FrozenTrial], direction: StudyDirection) -> None:
        """Code every finished trial not seen before (a finished trial stays finished: equal counts, no news)."""
        if len(trials) == len(self.rows):
            return
        for trial in trials:
            if trial.state in _FINISHED and trial.number not in self.rows:
                self.rows[trial.number] = row_of(trial, direction)
                merge(self.distributions, trial)

    def observations(self, space: Space) -> Observations:
        """`observations(rows, space)` over every row, extended from the last call's arrays by the new rows."""
        seen, known = self._arrays.get(space, (0, None))
        rows = list(self.rows.values())
        new = observations(rows[seen:], space)
        if known is not None:
            new = Observations(
                np.concatenate([known.num, new.num]),
                np.concatenate([known.cat, new.cat]),
                np.concatenate([known.loss, new.loss]),
                np.concatenate([known.number, new.number]),
            )
        self._arrays[space] = (len(rows), new)
        return new

    def n_complete(self) -> int:
        return sum(1 for r in self.rows.values() if math.isfinite(r.loss))


def merge(distributions: dict[str, BaseDistribution | None], trial: FrozenTrial) -> None:
    """Add a trial's distributions; a name seen with two different distributions becomes None."""
    for name, dist in trial.distributions.items():
        known = distributions.setdefault(name, dist)
        if known is not None and known != dist:
            distributions[name] = None


def observations(rows: Sequence[Row], space: Space) -> Observations:
    """The rows that hold every parameter of `space`, as coded arrays."""
    names = frozenset(space.names)
    held = [r for r in rows if names <= r.names]
    n, dn, dc = len(held), len(space.numeric), len(space.categorical)
    num = np.array([[r.codes[name] for name, _ in space.numeric] for r in held], dtype=float).reshape(n, dn)
    cat = np.array([[r.codes[name] for name, _ in space.categorical] for r in held], dtype=np.int64).reshape(n, dc)
    loss = np.array([r.loss for r in held], dtype=float)
    return Observations(num, cat, loss, np.array([r.number for r in held], dtype=np.int64))
