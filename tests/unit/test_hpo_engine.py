"""The study's Optuna side (incl.hpo.engine, space, objective) and the pure parts of driving it (trial specs, GPU
budgets), on Optuna's in-memory storage: no bus needed to check what reaches a trial and what Optuna is told."""

from __future__ import annotations

import json
import math

import optuna
import pytest

from incl.controller.study_run import budget_spent, gpu_hours, trial_spec
from incl.hpo.engine import StudyEngine, job_of, reason_of
from incl.hpo.factory import grid_of, grid_size, make_pruner, make_sampler, missing_dependency
from incl.hpo.objective import NoValue, trial_value
from incl.hpo.space import env_value, params_json, trial_env
from incl.proto.hpo import Hpo, Pruner
from incl.proto.messages import Attempt, Job, JobState
from incl.proto.spec import load_spec
from incl.proto.studies import Study, StudyState

SPACE = {"LR": {"type": "float", "low": 1e-5, "high": 0.1, "log": True},
         "BATCH": {"type": "int", "low": 16, "high": 256, "step": 16},
         "OPT": ["adam", "sgd"],
         "MOMENTUM": {"type": "float", "low": 0.8, "high": 0.99, "when": {"OPT": "sgd"}}}


def hpo(**changes: object) -> Hpo:
    spec = load_spec({"run": "x", "hpo": {"metric": "loss", "trials": 20, "params": SPACE, **changes}})
    assert spec.hpo is not None
    return spec.hpo


def test_each_trial_gets_its_active_params_in_range_and_inactive_ones_absent() -> None:
    engine = StudyEngine(optuna.storages.InMemoryStorage(), "s-1", hpo(sampler="random"), seed=4)
    tickets = [engine.ask() for _ in range(20)]
    assert [t.number for t in tickets] == list(range(20))
    for t in tickets:
        assert 1e-5 <= t.params["LR"] <= 0.1 and t.params["BATCH"] in range(16, 257, 16)
        assert ("MOMENTUM" in t.params) == (t.params["OPT"] == "sgd")
        if "MOMENTUM" in t.params:
            assert 0.8 <= t.params["MOMENTUM"] <= 0.99  # type: ignore[operator]
    assert {t.params["OPT"] for t in tickets} == {"adam", "sgd"}


def test_resuming_a_trial_gives_back_the_values_it_had() -> None:
    """The controller died between the ask and the submit: the trial is suggested again, unchanged."""
    storage = optuna.storages.InMemoryStorage()
    first = StudyEngine(storage, "s-1", hpo(), seed=1).ask()
    again = StudyEngine(storage, "s-1", hpo(), seed=99).resume(first.number)  # a new controller, a new engine
    assert again == first


def test_env_values_read_back_exactly() -> None:
    for value in (0.1, 1e-5, 0.30000000000000004, 123456789.123456789, 2.5e-300):
        assert float(env_value(value)) == value
    assert env_value(True) == "true" and env_value(None) == "" and env_value(16) == "16" and env_value("sgd") == "sgd"
    values = {"LR": 0.0031, "OPT": "sgd", "BATCH": 32}
    assert trial_env(values) == {"LR": "0.0031", "OPT": "sgd", "BATCH": "32"}
    assert json.loads(params_json(values)) == values


def test_report_prune_fail_and_complete_reach_optuna_with_reasons() -> None:
    storage = optuna.storages.InMemoryStorage()
    engine = StudyEngine(storage, "s-1", hpo(pruner={"type": "median", "startup_trials": 1, "min_step": 0}), seed=0)
    good, bad, failed = engine.ask(), engine.ask(), engine.ask()
    engine.set_job(good.number, "j-good")
    assert engine.report(good.number, [(0, 1.0), (1, 0.5), (1, 0.5), (2, float("nan"))]) is False
    engine.complete(good.number, 0.5)
    assert engine.report(bad.number, [(0, 9.0), (1, 9.0)]) is True  # worse than the median at these steps
    engine.prune(bad.number, "pruned at step 1 by the median pruner")
    engine.fail(failed.number, "job j-x failed: exit code 1")
    trials = {t.number: t for t in StudyEngine(storage, "s-1", hpo(), seed=0).trials()}
    assert trials[good.number].intermediate_values == {0: 1.0, 1: 0.5}  # repeated step and NaN skipped
    assert job_of(trials[good.number]) == "j-good" and trials[good.number].value == 0.5
    assert trials[bad.number].state.name == "PRUNED" and reason_of(trials[bad.number]) == \
        "pruned at step 1 by the median pruner"
    assert trials[failed.number].state.name == "FAIL" and "exit code 1" in (reason_of(trials[failed.number]) or "")
    assert engine.report(bad.number, [(5, 0.1)]) is False  # a finished trial's late points change nothing


@pytest.mark.parametrize(("objective", "direction", "expected"),
                         [("last", "minimize", 3.0), ("best", "minimize", 1.0), ("best", "maximize", 5.0),
                          ("min", "maximize", 1.0), ("max", "minimize", 5.0)])
def test_the_objective_turns_the_series_into_the_value(objective: str, direction: str, expected: float) -> None:
    assert trial_value([2.0, 5.0, 1.0, float("nan"), 3.0], "loss", objective, direction) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("series", "words"), [([], "never logged"), ([1.0, float("nan")], "NaN"),
                                               ([1.0, float("inf")], "+inf"), ([-math.inf], "-inf")])
def test_no_value_is_a_failure_with_the_reason_never_a_silent_zero(series: list[float], words: str) -> None:
    with pytest.raises(NoValue, match=words.replace("+", r"\+")):
        trial_value(series, "loss", "last", "minimize")
    with pytest.raises(NoValue):
        trial_value([math.nan, math.inf], "loss", "min", "minimize")


def test_grid_covers_every_point_and_every_sampler_and_pruner_builds() -> None:
    grid = hpo(sampler="grid", params={"A": {"type": "float", "low": 0, "high": 1, "step": 0.25},
                                       "B": {"type": "int", "low": 1, "high": 3}, "C": [True, False]})
    assert grid_of(grid.params) == {"A": [0, 0.25, 0.5, 0.75, 1], "B": [1, 2, 3], "C": [True, False]}
    assert grid_size(grid.params) == 30
    for name in ("tpe", "incl-tpe", "random", "cmaes"):
        assert isinstance(make_sampler(hpo(sampler=name), seed=0), optuna.samplers.BaseSampler)
    for kind in ("none", "median", "asha", "hyperband"):
        assert isinstance(make_pruner(Pruner(type=kind)), optuna.pruners.BasePruner)  # type: ignore[arg-type]
    assert missing_dependency("tpe") is None and missing_dependency("cmaes") is None


def _study(**hpo_changes: object) -> Study:
    spec = load_spec({"run": "python train.py", "name": "sweep", "env": {"EPOCHS": "3"},
                      "resources": {"gpus": 2, "cpus": 1},
                      "hpo": {"metric": "loss", "params": SPACE, **hpo_changes}})
    return Study(id="s-1", spec=spec, user="ann", state=StudyState.RUNNING, created_at=1000.0, updated_at=1000.0,
                 seed=1)


def test_a_trial_runs_the_studys_spec_with_its_params_and_without_hpo() -> None:
    from incl.hpo.engine import Ticket
    spec = trial_spec(_study(), Ticket(7, {"LR": 0.001, "OPT": "adam", "BATCH": 32}))
    assert spec.hpo is None and spec.name == "sweep-t7" and spec.run == "python train.py"
    assert spec.env == {"EPOCHS": "3", "LR": "0.001", "OPT": "adam", "BATCH": "32"}


def _job(started: float, ended: float | None, gpus: int = 2) -> Job:
    spec = load_spec({"run": "x", "resources": {"gpus": gpus}})
    att = Attempt(number=1, agent_id="a", state=JobState.RUNNING, assigned_at=started, started_at=started,
                  ended_at=ended)
    return Job(id="j", spec=spec, user="ann", state=JobState.RUNNING, submitted_at=started, updated_at=started,
               attempts=[att])


def test_gpu_hours_and_the_budget() -> None:
    jobs = [_job(0.0, 3600.0), _job(0.0, None)]  # 2 GPUs for an hour, 2 GPUs still running
    assert gpu_hours(jobs, now=1800.0) == pytest.approx(2 * 1 + 2 * 0.5)
    study = _study(budget={"gpu_hours": 4, "wall": "2h"})
    assert budget_spent(study, jobs, now=1800.0) is None
    assert "GPU-hours" in (budget_spent(study, jobs, now=3600.0 + 1) or "")
    assert "wall-clock" in (budget_spent(study, [], now=1000.0 + 7200) or "")
