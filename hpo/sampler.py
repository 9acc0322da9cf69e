"""`InclTPESampler`: a multivariate TPE for many trials in flight, as an ordinary Optuna sampler.

    import optuna
    from incl.hpo import InclTPESampler

    study = optuna.create_study(sampler=InclTPESampler(seed=0))

The model is Optuna's multivariate TPE (the same split, age weights, prior kernel, bandwidths, and ints scored
by the mass on their grid cell; `test_density_matches_optunas_parzen_estimator` pins it), in numpy, with:

- Coded observations cached between asks (`_tpe_history`), so an ask at 1,000 trials costs a few ms.
- Conditional (define-by-run) parameters split into groups that occur in the same trials, and each group
  modelled jointly from the trials that hold it (`_tpe_space.groups`).
- Switches measured against Optuna's choices (docs/hpo-sampler.md): trials in flight as a constant liar (default,
  Optuna's), repelling candidates (`pending="repel"`) or as fantasies (`"fantasy"`); uniform startup points
  (default) or space-filling ones (`startup="maximin"`); more candidates late (`late_candidates`).

Single-objective only; for a multi-objective study every parameter is sampled at random. Failed trials are
ignored, pruned ones count as bad observations, enqueued parameters are used as given (Optuna's `enqueue_trial`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from incl.hpo._tpe_history import History, Row, merge, observations, row_of
from incl.hpo._tpe_propose import Pending, propose
from incl.hpo._tpe_space import Space, groups

Startup = Literal["random", "maximin"]

__all__ = ["InclTPESampler"]

_LATE = 50  # finished trials after which `late_candidates` replaces `n_candidates`


class InclTPESampler(BaseSampler):
    """INCL's TPE sampler.

    Args:
        seed: seeds every random choice; the same seed and the same trial order give the same suggestions.
        n_startup_trials: finished trials before the model is used; until then points are space-filling.
        n_candidates: candidates drawn from the good density per ask; the best by l/g is suggested.
        pending: how trials in flight are treated: Optuna's "liar" (default), "repel" or "fantasy".
        startup: "random" (default) or "maximin" points before the model is used.
        repel_radius: with `pending="repel"`, the repulsion's reach in units of the good density's bandwidth.
        late_candidates: if set, the candidate count once 50 trials have finished (more exploitation late).
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        n_startup_trials: int = 10,
        n_candidates: int = 24,
        pending: Pending = "liar",
        startup: Startup = "random",
        repel_radius: float = 0.3,
        late_candidates: int | None = None,
    ) -> None:
        if n_startup_trials < 0 or n_candidates < 1:
            raise ValueError("n_startup_trials must be >= 0 and n_candidates >= 1")
        self._rng = np.random.default_rng(seed)
        self._random = RandomSampler(seed=seed)
        self._n_startup = n_startup_trials
        self._n_candidates = n_candidates
        self._pending: Pending = pending
        self._startup: Startup = startup
        self._radius = repel_radius
        self._late = late_candidates
        self._histories: dict[str, History] = {}

    def reseed_rng(self) -> None:
        self._rng = np.random.default_rng()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if study._is_multi_objective():
            return {}
        history = self._history(study)
        distributions = dict(history.distributions)
        for other in _running(study, trial):
            merge(distributions, other)
        return {name: dist for name, dist in distributions.items() if dist is not None}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        history = self._history(study)
        direction = study.direction
        finished = list(history.rows.values())
        pending = [row_of(t, direction) for t in _running(study, trial)]
        if history.n_complete() < self._n_startup:
            return self._spread(Space.of(search_space), finished + pending)
        params: dict[str, Any] = {}
        for names in groups((r.names for r in finished), search_space):
            space = Space.of({n: search_space[n] for n in names})
            params.update(self._sample_group(space, history, pending))
        return params

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def _history(self, study: Study) -> History:
        history = self._histories.setdefault(study.study_name, History())
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        history.update(finished, study.direction)
        return history

    def _sample_group(self, space: Space, history: History, pending: list[Row]) -> dict[str, Any]:
        obs = history.observations(space)
        if int(np.isfinite(obs.loss).sum()) < 2:
            return self._spread(space, list(history.rows.values()) + pending)
        num, cat = propose(
            obs,
            observations(pending, space),
            space,
            self._rng,
            n_candidates=self._late if self._late and history.n_complete() >= _LATE else self._n_candidates,
            mode=self._pending,
            radius=self._radius,
        )
        return space.decode(num, cat)

    def _spread(self, space: Space, asked: Sequence[Row]) -> dict[str, Any]:
        """A startup point: uniform, or the farthest of 64 uniform points from every point already asked."""
        n_draws = 64 if self._startup == "maximin" else 1
        num = self._rng.random((n_draws, len(space.numeric)))
        cat = np.floor(self._rng.random((n_draws, len(space.categorical))) * space.n_choices).astype(np.int64)
        seen = observations(asked, space)
        best = 0
        if n_draws > 1 and len(seen.loss) > 0:
            d2 = ((num[:, None, :] - seen.num[None, :, :]) ** 2).sum(axis=2)
            d2 = d2 + (cat[:, None, :] != seen.cat[None, :, :]).sum(axis=2) / 4.0
            best = int(np.argmax(d2.min(axis=1)))
        return space.decode(num[best], cat[best])


def _running(study: Study, trial: FrozenTrial) -> list[FrozenTrial]:
    """The other trials in flight: asked, not yet told."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return [t for t in running if t.number != trial.number]
