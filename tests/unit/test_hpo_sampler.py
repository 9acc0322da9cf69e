"""InclTPESampler as a user of plain Optuna sees it: valid, reproducible suggestions that beat random search."""

from __future__ import annotations

import math
import statistics
import time

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from incl.hpo import InclTPESampler

optuna.logging.set_verbosity(optuna.logging.ERROR)


def mixed(trial: optuna.Trial) -> float:
    """Every kind of parameter Optuna has, with a known minimum of 0."""
    x = trial.suggest_float("x", -3.0, 3.0)
    lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    q = trial.suggest_float("q", 0.0, 1.0, step=0.25)
    n = trial.suggest_int("n", 1, 9)
    s = trial.suggest_int("s", 0, 20, step=5)
    w = trial.suggest_int("w", 8, 1024, log=True)
    c = trial.suggest_categorical("c", ["a", "b", None, 3])
    return x**2 + (math.log10(lr) + 3) ** 2 + q + (n - 5) ** 2 + s / 20 + abs(math.log2(w) - 6) + (c != "a")


def values(seed: int, n_trials: int = 30) -> list[dict[str, object]]:
    study = optuna.create_study(sampler=InclTPESampler(seed=seed, n_startup_trials=5))
    study.optimize(mixed, n_trials=n_trials)
    return [t.params for t in study.trials]


def test_same_seed_same_suggestions() -> None:
    """A fixed seed reproduces the whole sequence; another seed does not."""
    assert values(1) == values(1)
    assert values(1) != values(2)


def test_every_value_lies_in_its_distribution() -> None:
    """Floats, log floats, stepped floats, ints (stepped, log) and categoricals stay in range and on their grid."""
    study = optuna.create_study(sampler=InclTPESampler(seed=0, n_startup_trials=5))
    study.optimize(mixed, n_trials=60)
    for trial in study.trials:
        assert trial.state == TrialState.COMPLETE
        for name, value in trial.params.items():
            dist = trial.distributions[name]
            assert dist._contains(dist.to_internal_repr(value)), (name, value)
        p = trial.params
        assert isinstance(p["n"], int) and isinstance(p["s"], int) and p["s"] % 5 == 0
        assert p["q"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert 8 <= p["w"] <= 1024 and 1e-5 <= p["lr"] <= 1e-1


def test_conditional_parameters_are_sampled_per_branch() -> None:
    """Branch parameters absent from most trials never crash, and each branch's optimum is found."""

    def objective(trial: optuna.Trial) -> float:
        model = trial.suggest_categorical("model", ["svm", "tree"])
        if model == "svm":
            return (math.log10(trial.suggest_float("C", 1e-3, 1e3, log=True)) - 1) ** 2
        depth = trial.suggest_int("depth", 1, 30)
        if depth > 10:
            return 1 + abs(trial.suggest_float("leaf", 0.0, 1.0) - 0.3)
        return 1 + (depth - 6) ** 2

    study = optuna.create_study(sampler=InclTPESampler(seed=0))
    study.optimize(objective, n_trials=80)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert study.best_params["model"] == "svm"
    assert study.best_value < 0.05
    assert any("leaf" in t.params for t in study.trials)


def test_trials_in_flight_get_distinct_points() -> None:
    """Eight trials asked before any is told, after a model exists, are eight different points."""
    study = optuna.create_study(sampler=InclTPESampler(seed=0, n_startup_trials=5))
    study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2 + t.suggest_float("y", -1, 1) ** 2, n_trials=20)
    asked = [study.ask() for _ in range(8)]
    points = {(t.suggest_float("x", -1, 1), t.suggest_float("y", -1, 1)) for t in asked}
    assert len(points) == 8
    xs = np.array(sorted(points))
    gaps = np.sqrt(((xs[:, None, :] - xs[None, :, :]) ** 2).sum(axis=2)) + np.eye(8)
    assert gaps.min() > 1e-3


def test_failed_and_pruned_trials_are_survived() -> None:
    """FAIL trials are ignored and PRUNED ones count as bad; the study goes on and finds the optimum."""

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5, 5)
        if trial.number % 5 == 1:
            raise optuna.TrialPruned()
        if trial.number % 7 == 3:
            raise RuntimeError("the training job crashed")
        return (x - 1) ** 2

    study = optuna.create_study(sampler=InclTPESampler(seed=0))
    study.optimize(objective, n_trials=60, catch=(RuntimeError,))
    states = {t.state for t in study.trials}
    assert {TrialState.FAIL, TrialState.PRUNED, TrialState.COMPLETE} <= states
    assert study.best_value < 0.05


def test_enqueued_parameters_and_startup_count_are_respected() -> None:
    """`enqueue_trial` values are used as given; with n_startup_trials=0 the model starts at once."""
    study = optuna.create_study(sampler=InclTPESampler(seed=0, n_startup_trials=0))
    study.enqueue_trial({"x": 0.123, "c": "b"})
    study.optimize(lambda t: t.suggest_float("x", 0, 1) + (t.suggest_categorical("c", ["a", "b"]) == "a"), 20)
    assert study.trials[0].params == {"x": 0.123, "c": "b"}


def test_a_changed_distribution_and_maximize_direction_work() -> None:
    """A parameter whose range changes mid-study, in a maximized study, is sampled inside its current range."""
    study = optuna.create_study(direction="maximize", sampler=InclTPESampler(seed=0, n_startup_trials=3))
    study.optimize(lambda t: -((t.suggest_float("x", 0, 1) - 0.7) ** 2), n_trials=15)
    study.optimize(lambda t: t.suggest_float("x", 2, 3), n_trials=5)
    assert all(2 <= t.params["x"] <= 3 for t in study.trials[15:])
    assert study.best_value == pytest.approx(max(t.params["x"] for t in study.trials[15:]))


def best_of(sampler: optuna.samplers.BaseSampler) -> float:
    def quadratic(trial: optuna.Trial) -> float:
        return sum((trial.suggest_float(f"x{i}", -5, 5) - 1.5) ** 2 for i in range(4))

    study = optuna.create_study(sampler=sampler)
    study.optimize(quadratic, n_trials=80)
    return study.best_value


def test_beats_random_search_on_a_quadratic() -> None:
    """On a 4-D quadratic, 80 trials, the median best over 3 seeds is under a tenth of random search's."""
    mine = statistics.median(best_of(InclTPESampler(seed=s)) for s in range(3))
    theirs = statistics.median(best_of(optuna.samplers.RandomSampler(seed=s)) for s in range(3))
    assert mine < 0.1 * theirs


def test_ask_and_tell_stay_fast_at_a_few_hundred_trials() -> None:
    """ask + suggest + tell at 300 finished trials, 6-D mixed space: p50 well under 50 ms on a noisy machine."""
    dists: dict[str, optuna.distributions.BaseDistribution] = {
        "a": optuna.distributions.FloatDistribution(0, 1),
        "b": optuna.distributions.FloatDistribution(1e-4, 1, log=True),
        "c": optuna.distributions.FloatDistribution(-1, 1),
        "n": optuna.distributions.IntDistribution(1, 10),
        "k": optuna.distributions.CategoricalDistribution(["x", "y", "z"]),
        "m": optuna.distributions.CategoricalDistribution([True, False]),
    }
    rng = np.random.default_rng(0)
    study = optuna.create_study(sampler=InclTPESampler(seed=0))
    for _ in range(300):
        params = {"a": rng.random(), "b": 10 ** -rng.uniform(0, 4), "c": rng.uniform(-1, 1)}
        params |= {"n": 3, "k": "x", "m": True}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=float(rng.random())))
    times = []
    for _ in range(20):
        start = time.perf_counter()
        trial = study.ask(dists)
        study.tell(trial, float(trial.params["a"]))
        times.append(time.perf_counter() - start)
    assert statistics.median(times) < 0.05


def test_multi_objective_falls_back_to_random() -> None:
    """A two-objective study runs (every parameter at random) instead of failing."""
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=InclTPESampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), 1 - t.suggest_float("y", 0, 1)), n_trials=15)
    assert len(study.trials) == 15


def test_density_matches_optunas_parzen_estimator() -> None:
    """The fitted density equals Optuna's (ints scored by cell mass, its prior, its age weights) up to a constant."""
    from optuna.samplers._tpe.parzen_estimator import _ParzenEstimator, _ParzenEstimatorParameters
    from optuna.samplers._tpe.sampler import default_weights

    from incl.hpo._tpe_kde import Parzen
    from incl.hpo._tpe_propose import weights
    from incl.hpo._tpe_space import Space, code_of

    dists: dict[str, optuna.distributions.BaseDistribution] = {
        "x": optuna.distributions.FloatDistribution(-5, 5),
        "lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True),
        "n": optuna.distributions.IntDistribution(0, 5),
        "w": optuna.distributions.IntDistribution(1, 64, log=True),
        "c": optuna.distributions.CategoricalDistribution(["a", "b", "c"]),
    }
    rng = np.random.default_rng(0)
    n = 40
    obs = {
        "x": rng.uniform(-5, 5, n),
        "lr": np.exp(rng.uniform(math.log(1e-5), math.log(1e-1), n)),
        "n": rng.integers(0, 6, n).astype(float),
        "w": rng.integers(1, 65, n).astype(float),
        "c": rng.integers(0, 3, n).astype(float),
    }
    theirs = _ParzenEstimator(obs, dists, _ParzenEstimatorParameters(1.0, True, False, default_weights, True))
    space = Space.of(dists)
    num = np.array([[code_of(dists[name], obs[name][i]) for name, _ in space.numeric] for i in range(n)])
    mine = Parzen.fit(num, obs["c"].astype(np.int64)[:, None], space.n_choices, weights(np.arange(n)))
    drawn, cat = mine.sample(np.random.default_rng(1), 200)
    centre, left, right = space.snap(drawn)
    points = [space.decode(centre[i], cat[i]) for i in range(200)]
    internal = {name: np.array([dists[name].to_internal_repr(p[name]) for p in points]) for name in dists}
    gap = mine.log_pdf(centre, cat, (left, right)) - theirs.log_pdf(internal)
    assert np.ptp(gap) < 1e-4  # the constant: densities in unit codes rather than in the parameters' units
