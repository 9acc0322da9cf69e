"""The `hpo:` section: the issue's example loads as written, and every bad input is refused with one line naming
its field (and nothing else is reached: the CLI submits nothing)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from incl.proto.errors import SpecInvalid
from incl.proto.hpo import Budget, CategoricalParam, FloatParam, Hpo, IntParam, Pruner, active_order
from incl.proto.spec import JobSpec, check_spec, load_spec

EXAMPLE: dict[str, Any] = {
    "metric": "val_loss", "direction": "minimize", "objective": "last", "trials": 200, "parallel": 8,
    "params": {
        "LR": {"type": "float", "low": 1.0e-5, "high": 0.1, "log": True},
        "BATCH": {"type": "int", "low": 16, "high": 256, "step": 16},
        "OPT": {"type": "categorical", "choices": ["adam", "sgd"]},
        "MOMENTUM": {"type": "float", "low": 0.8, "high": 0.99, "when": {"OPT": "sgd"}},
    },
    "sampler": "incl-tpe",
    "pruner": {"type": "asha", "min_step": 1, "reduction": 3},
    "budget": {"gpu_hours": 40, "wall": "12h"},
}  # fmt: skip


def test_the_issues_example_loads_typed() -> None:
    hpo = load_spec({"run": "python train.py", "hpo": EXAMPLE}).hpo
    assert hpo == Hpo(metric="val_loss", trials=200, parallel=8, sampler="incl-tpe",
                      pruner=Pruner(type="asha", min_step=1, reduction=3), budget=Budget(gpu_hours=40, wall=43200),
                      params={"LR": FloatParam(low=1e-5, high=0.1, log=True),
                              "BATCH": IntParam(low=16, high=256, step=16),
                              "OPT": CategoricalParam(choices=["adam", "sgd"]),
                              "MOMENTUM": FloatParam(low=0.8, high=0.99, when={"OPT": "sgd"})})  # fmt: skip
    assert msgspec.convert(msgspec.to_builtins(hpo), Hpo) == hpo  # the shape round-trips on the wire


def test_shorthands_pruner_name_and_list_of_choices() -> None:
    hpo = load_spec({"run": "x", "hpo": {"metric": "acc", "pruner": "median", "params": {"OPT": ["adam", "sgd"]}}}).hpo
    assert hpo is not None
    assert hpo.pruner == Pruner(type="median") and hpo.params["OPT"] == CategoricalParam(choices=["adam", "sgd"])


def test_parameters_are_suggested_after_those_they_depend_on() -> None:
    hpo = load_spec({"run": "x", "hpo": {"metric": "m", "params": {
        "MOMENTUM": {"type": "float", "low": 0.8, "high": 0.99, "when": {"OPT": "sgd"}},
        "NESTEROV": {"type": "categorical", "choices": [True, False], "when": {"OPT": "sgd"}},
        "OPT": ["adam", "sgd"], "LR": {"type": "float", "low": 0.1, "high": 1}}}}).hpo  # fmt: skip
    assert hpo is not None
    order = active_order(hpo.params)
    assert order.index("OPT") < order.index("MOMENTUM") and order.index("OPT") < order.index("NESTEROV")
    assert sorted(order) == sorted(hpo.params)


def _hpo(**changes: Any) -> dict[str, Any]:
    return {"metric": "m", "params": {"X": {"type": "float", "low": 0, "high": 1}}, **changes}


@pytest.mark.parametrize(
    ("hpo", "field", "words"),
    [
        (_hpo(params={"LR": {"type": "float", "low": 0.1, "high": 0.01}}), "hpo.params.LR", "below high"),
        (_hpo(params={"LR": {"type": "float", "low": 0, "high": 0.1, "log": True}}), "hpo.params.LR.low",
         "greater than 0 with log: true"),
        (_hpo(params={"LR": {"type": "float", "low": -1, "high": 0.1, "log": True}}), "hpo.params.LR.low",
         "greater than 0"),
        (_hpo(params={"B": {"type": "int", "low": 16, "high": 250, "step": 16}}), "hpo.params.B.step",
         "does not divide the range 16..250"),
        (_hpo(params={"D": {"type": "float", "low": 0, "high": 1, "step": 0.3}}), "hpo.params.D.step",
         "does not divide"),
        (_hpo(params={"B": {"type": "intt", "low": 1, "high": 2}}), "hpo.params.B.type", "did you mean 'int'?"),
        (_hpo(params={"B": {"low": 1, "high": 2}}), "hpo.params.B.type", "needs a type"),
        (_hpo(sampler="tpee"), "hpo.sampler", "must be one of tpe, incl-tpe, random, grid, cmaes, gp"),
        (_hpo(params={"M": {"type": "float", "low": 0, "high": 1, "when": {"OPTT": "sgd"}}, "OPT": ["adam"]}),
         "hpo.params.M.when.OPTT", "'OPTT' is not one of the parameters"),
        (_hpo(params={"M": {"type": "float", "low": 0, "high": 1, "when": {"OPT": "sgdd"}}, "OPT": ["adam", "sgd"]}),
         "hpo.params.M.when.OPT", "'sgdd' is not one of OPT's choices"),
        (_hpo(params={"M": {"type": "float", "low": 0, "high": 1, "when": {"L": 1}},
                      "L": {"type": "int", "low": 1, "high": 3}}), "hpo.params.M.when.L", "names categorical ones"),
        (_hpo(params={"A": {"type": "categorical", "choices": [1, 2], "when": {"B": 1}},
                      "B": {"type": "categorical", "choices": [1, 2], "when": {"A": 1}}}), "hpo.params.A.when",
         "cycle"),
        (_hpo(params={"1LR": {"type": "float", "low": 0, "high": 1}}), "hpo.params.1LR",
         "not a valid one"),
        (_hpo(params={"learning-rate": {"type": "float", "low": 0, "high": 1}}), "hpo.params.learning-rate",
         "environment variable"),
        (_hpo(params={"INCL_LR": {"type": "float", "low": 0, "high": 1}}), "hpo.params.INCL_LR", "INCL's own"),
        (_hpo(params={"EPOCHS": {"type": "int", "low": 1, "high": 9}}), "hpo.params.EPOCHS", "also set in env"),
        (_hpo(params={"TOKEN": {"type": "int", "low": 1, "high": 9}}), "hpo.params.TOKEN", "also set in secrets"),
        (_hpo(trials=0), "hpo.trials", "at least 1"),
        (_hpo(trials=-3), "hpo.trials", "at least 1"),
        (_hpo(trials=4, parallel=8), "hpo.parallel", "more than the 4 trials"),
        (_hpo(parallel=0), "hpo.parallel", "at least 1"),
        (_hpo(metric=" "), "hpo.metric", "must name a metric"),
        ({"params": {"X": {"type": "float", "low": 0, "high": 1}}}, "hpo.metric", "must name a metric"),
        (_hpo(params={}), "hpo.params", "at least one parameter"),
        (_hpo(params=["lr"]), "hpo.params", "expected `object`"),
        (_hpo(params={"lr": 0.1}), "hpo.params.lr", "distribution"),
        (_hpo(params={"O": {"type": "categorical", "choices": []}}), "hpo.params.O.choices", "at least one"),
        (_hpo(params={"O": ["a", "a"]}), "hpo.params.O.choices", "twice"),
        (_hpo(params={"N": {"type": "int", "low": 1.5, "high": 4}}), "hpo.params.N.low", "expected `int`"),
        (_hpo(params={"N": {"type": "int", "low": 1, "high": 4, "step": 0}}), "hpo.params.N.step", "greater than 0"),
        (_hpo(params={"N": {"type": "int", "low": 1, "high": 4, "hihg": 5}}), "hpo.params.N.hihg",
         "did you mean 'high'?"),
        (_hpo(params={"L": {"type": "float", "low": 1, "high": 2, "log": True, "step": 0.5}}), "hpo.params.L.step",
         "log"),
        (_hpo(direction="max"), "hpo.direction", "must be one of minimize, maximize, not 'max'"),
        (_hpo(objective="mean"), "hpo.objective", "must be one of last, best, min, max"),
        (_hpo(metirc="loss"), "hpo.metirc", "did you mean 'metric'?"),
        (_hpo(pruner="early"), "hpo.pruner.type", "must be one of none, median, asha, hyperband"),
        (_hpo(pruner={"type": "asha", "reduction": 1}), "hpo.pruner.reduction", "at least 2"),
        (_hpo(pruner={"type": "asha", "min_step": 0}), "hpo.pruner.min_step", "at least 1"),
        (_hpo(pruner={"type": "asha", "reductoin": 3}), "hpo.pruner.reductoin", "did you mean 'reduction'?"),
        (_hpo(budget={"wall": "soon"}), "hpo.budget.wall", "not a duration"),
        (_hpo(budget={"gpu_hours": 0}), "hpo.budget.gpu_hours", "above 0"),
        (_hpo(budget={"gpu_hour": 3}), "hpo.budget.gpu_hour", "did you mean 'gpu_hours'?"),
        (_hpo(sampler="grid"), "hpo.params.X", "sampler grid needs a step"),
        (_hpo(sampler="grid", params={"O": ["a", "b"], "X": {"type": "float", "low": 0, "high": 1, "step": 0.5,
                                                              "when": {"O": "a"}}}),
         "hpo.params.X.when", "no conditional"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_every_bad_input_is_one_line_naming_its_field(hpo: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(SpecInvalid) as info:
        load_spec({"run": "python train.py", "env": {"EPOCHS": "3"}, "secrets": {"TOKEN": "t"}, "hpo": hpo})
    assert info.value.field == field, str(info.value)
    assert words in info.value.message, str(info.value)
    assert "\n" not in str(info.value)


def test_a_decoded_spec_gets_the_same_checks() -> None:
    """What the controller runs on a spec off the wire: the types came through the decoder, the rest is checked."""
    spec = JobSpec(run="x", hpo=Hpo(metric="m", trials=2, parallel=3, params={"X": FloatParam(low=0, high=1)}))
    with pytest.raises(SpecInvalid) as info:
        check_spec(spec)
    assert info.value.field == "hpo.parallel"
