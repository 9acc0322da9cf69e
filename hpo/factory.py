"""The sampler and pruner a study's spec names, built as Optuna objects."""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Sequence
from typing import Any

import optuna

from incl.proto.hpo import FloatParam, Hpo, IntParam, Param, Pruner


def missing_dependency(sampler: str) -> str | None:
    """Why this host cannot run `sampler`, or None (checked at submit: a study is refused, not left waiting)."""
    needs = {"gp": ("torch", "PyTorch (pip install torch)"), "cmaes": ("cmaes", "the cmaes package")}
    if sampler in needs and importlib.util.find_spec(needs[sampler][0]) is None:
        return f"sampler {sampler} needs {needs[sampler][1]} on the controller"
    return None


def grid_of(params: dict[str, Param]) -> dict[str, list[Any]]:
    """Every value of each parameter (the spec's check made sure each has finitely many)."""
    grid: dict[str, list[Any]] = {}
    for name, p in params.items():
        if isinstance(p, IntParam):
            grid[name] = list(range(p.low, p.high + 1, p.step))
        elif isinstance(p, FloatParam):
            assert p.step is not None
            n = round((p.high - p.low) / p.step)
            grid[name] = [p.low + i * p.step for i in range(n)] + [p.high]
        else:
            grid[name] = list(p.choices)
    return grid


def grid_size(params: dict[str, Param]) -> int:
    size = 1
    for values in grid_of(params).values():
        size *= len(values)
    return size


class _Grid(optuna.samplers.GridSampler):
    """Optuna's grid sampler calls `study.stop()` once the grid is used up, which only works inside
    `study.optimize`. INCL asks as many trials as the grid has points (`StudyRun.total`), with no optimize loop
    to stop."""

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, state: optuna.trial.TrialState,
                    values: Sequence[float] | None) -> None:
        pass


def make_sampler(hpo: Hpo, seed: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():  # Optuna marks some samplers' options experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        match hpo.sampler:
            case "tpe":
                return optuna.samplers.TPESampler(seed=seed)
            case "incl-tpe":
                from incl.hpo.sampler import InclTPESampler  # noqa: PLC0415 - its own module, loaded when named
                return InclTPESampler(seed=seed)
            case "random":
                return optuna.samplers.RandomSampler(seed=seed)
            case "grid":
                return _Grid(grid_of(hpo.params), seed=seed)
            case "cmaes":
                return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
            case "gp":
                return optuna.samplers.GPSampler(seed=seed)
    raise ValueError(f"unknown sampler {hpo.sampler!r}")


def make_pruner(pruner: Pruner) -> optuna.pruners.BasePruner:
    match pruner.type:
        case "none":
            return optuna.pruners.NopPruner()
        case "median":
            return optuna.pruners.MedianPruner(n_startup_trials=pruner.startup_trials, n_warmup_steps=pruner.min_step)
        case "asha":
            return optuna.pruners.SuccessiveHalvingPruner(min_resource=pruner.min_step,
                                                          reduction_factor=pruner.reduction)
        case "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=pruner.min_step, reduction_factor=pruner.reduction,
                                                  max_resource=pruner.max_step or "auto")
    raise ValueError(f"unknown pruner {pruner.type!r}")
