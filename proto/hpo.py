"""The `hpo:` section of a job spec: a study whose trials are INCL jobs (Optuna's names throughout).

    hpo:
      metric: val_loss            # a name the job logs with incl.log
      direction: minimize         # or maximize
      objective: last             # last | best | min | max: how the metric's series becomes the trial's value
      trials: 200                 # trials started (Optuna's n_trials)
      parallel: 8                 # trials in flight at once
      params:
        LR:       {type: float, low: 1.0e-5, high: 0.1, log: true}
        OPT:      {type: categorical, choices: [adam, sgd]}
        MOMENTUM: {type: float, low: 0.8, high: 0.99, when: {OPT: sgd}}   # only when OPT is sgd
      sampler: tpe                # tpe | incl-tpe | random | grid | cmaes | gp
      pruner: {type: asha, min_step: 1, reduction: 3}                   # or median, hyperband, none
      budget: {gpu_hours: 40, wall: 12h}                                # stop starting trials past either

Each parameter reaches its trial as an environment variable of exactly that name, so a name must be one, and
must not clash with the job's own `env:` or `secrets:`. The checks here are the ones that need only the spec;
the controller adds what needs the cluster (a sampler's optional dependency).
"""

from __future__ import annotations

import math
import re
from typing import Literal

import msgspec

from incl.proto.errors import SpecInvalid

_MAX_INT = 2**53
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_PREFIX = "INCL_"  # INCL's own variables (INCL_STUDY_ID, INCL_TRIAL_NUMBER, INCL_JOB_ID...)

Choice = str | int | float | bool | None


class _Spec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    pass


class FloatParam(_Spec, tag="float", tag_field="type", frozen=True):
    low: float
    high: float
    log: bool = False
    step: float | None = None
    when: dict[str, Choice] | None = None  # active only when each named categorical parameter has that value


class IntParam(_Spec, tag="int", tag_field="type", frozen=True):
    low: int
    high: int
    log: bool = False
    step: int = 1
    when: dict[str, Choice] | None = None


class CategoricalParam(_Spec, tag="categorical", tag_field="type", frozen=True):
    choices: list[Choice]
    when: dict[str, Choice] | None = None


Param = FloatParam | IntParam | CategoricalParam
PARAM_TYPES: dict[str, type[Param]] = {"float": FloatParam, "int": IntParam, "categorical": CategoricalParam}

Sampler = Literal["tpe", "incl-tpe", "random", "grid", "cmaes", "gp"]
SAMPLERS: tuple[str, ...] = ("tpe", "incl-tpe", "random", "grid", "cmaes", "gp")


class Pruner(_Spec, frozen=True):
    """`pruner: asha` is `{type: asha}`. `min_step`: the first step a trial may be pruned at (ASHA's and
    Hyperband's min resource, the median pruner's warm-up); `reduction`: ASHA's and Hyperband's factor;
    `startup_trials`: trials the median pruner lets finish before it prunes any."""

    type: Literal["none", "median", "asha", "hyperband"] = "none"
    min_step: int = 1
    reduction: int = 3
    startup_trials: int = 5
    max_step: int | None = None  # Hyperband's max resource (None: the largest step seen)


class Budget(_Spec, frozen=True):
    gpu_hours: float | None = None  # GPU-hours all the study's trials may use (GPUs × nodes × hours run)
    wall: float | None = None  # seconds since the study started ("12h" is accepted at load)


class Hpo(_Spec, frozen=True):
    metric: str | None = None
    direction: Literal["minimize", "maximize"] = "minimize"
    objective: Literal["last", "best", "min", "max"] = "last"
    trials: int = 10
    parallel: int = 1
    sampler: Sampler = "tpe"
    pruner: Pruner = Pruner()
    budget: Budget = Budget()
    seed: int | None = None  # the sampler's seed (None: drawn at the study's start, and kept)
    params: dict[str, Param] = {}  # name -> distribution; a list is shorthand for {type: categorical, choices}


def check_hpo(hpo: Hpo, taken: dict[str, str]) -> None:
    """The checks beyond types. `taken`: names the job already sets -> where (`env`, `secrets`)."""
    if hpo.metric is None or not hpo.metric.strip():
        raise SpecInvalid("must name a metric the job logs with incl.log", field="hpo.metric")
    for key in ("trials", "parallel"):
        if not 1 <= getattr(hpo, key) <= _MAX_INT:
            raise SpecInvalid(f"must be at least 1 (and at most {_MAX_INT})", field=f"hpo.{key}")
    if hpo.parallel > hpo.trials:
        raise SpecInvalid(f"{hpo.parallel} trials in flight is more than the {hpo.trials} trials of the study",
                          field="hpo.parallel")
    if not hpo.params:
        raise SpecInvalid("needs at least one parameter to search", field="hpo.params")
    for name, dist in hpo.params.items():
        here = f"hpo.params.{name}"
        _check_name(name, here, taken)
        _check_param(dist, here)
        _check_when(name, dist, hpo.params, here)
    _check_acyclic(hpo.params)
    if hpo.sampler == "grid":
        _check_grid(hpo.params)
    _check_pruner(hpo.pruner)
    _check_budget(hpo.budget)


def _check_name(name: str, here: str, taken: dict[str, str]) -> None:
    if not _ENV_NAME.match(name):
        raise SpecInvalid("reaches the trial as an environment variable of that name, and is not a valid one "
                          "(letters, digits and _, not starting with a digit)", field=here)
    if name.startswith(RESERVED_PREFIX):
        raise SpecInvalid(f"names starting with {RESERVED_PREFIX} are INCL's own variables", field=here)
    if name in taken:
        raise SpecInvalid(f"is also set in {taken[name]}: (a parameter reaches the trial as the environment "
                          "variable of its name)", field=here)


def _check_param(dist: Param, here: str) -> None:
    if isinstance(dist, CategoricalParam):
        if not dist.choices:
            raise SpecInvalid("needs at least one choice", field=f"{here}.choices")
        if len(set(map(repr, dist.choices))) != len(dist.choices):
            raise SpecInvalid("lists a choice twice", field=f"{here}.choices")
        return
    if not (math.isfinite(dist.low) and math.isfinite(dist.high)) or max(abs(dist.low), abs(dist.high)) > _MAX_INT:
        raise SpecInvalid("low and high must be finite numbers", field=here)
    if dist.low > dist.high or (isinstance(dist, FloatParam) and dist.low == dist.high):
        raise SpecInvalid(f"low ({dist.low:g}) must be below high ({dist.high:g})", field=here)
    if dist.log and dist.low <= 0:
        raise SpecInvalid(f"must be greater than 0 with log: true (got {dist.low:g})", field=f"{here}.low")
    if dist.log and (dist.step is not None if isinstance(dist, FloatParam) else dist.step != 1):
        raise SpecInvalid("cannot be combined with log: true", field=f"{here}.step")
    if dist.step is None:
        return
    if not (math.isfinite(dist.step) and dist.step > 0):
        raise SpecInvalid("must be greater than 0", field=f"{here}.step")
    span = dist.high - dist.low
    if isinstance(dist, IntParam):
        divides = span % dist.step == 0
    else:
        n = span / dist.step
        divides = abs(n - round(n)) <= 1e-8 * max(1.0, n)
    if not divides:
        raise SpecInvalid(f"{dist.step:g} does not divide the range {dist.low:g}..{dist.high:g} (high - low = "
                          f"{span:g}): the last value would not be reachable", field=f"{here}.step")


def _check_when(name: str, dist: Param, params: dict[str, Param], here: str) -> None:
    for parent, value in (dist.when or {}).items():
        where = f"{here}.when.{parent}"
        if parent == name:
            raise SpecInvalid("a parameter cannot depend on itself", field=where)
        other = params.get(parent)
        if other is None:
            raise SpecInvalid(f"{parent!r} is not one of the parameters ({', '.join(params)})", field=where)
        if not isinstance(other, CategoricalParam):
            raise SpecInvalid(f"{parent} is a {type(other).__name__.removesuffix('Param').lower()} parameter; "
                              "when: names categorical ones", field=where)
        if not any(type(c) is type(value) and c == value for c in other.choices):
            raise SpecInvalid(f"{value!r} is not one of {parent}'s choices "
                              f"({', '.join(map(repr, other.choices))})", field=where)


def _check_acyclic(params: dict[str, Param]) -> None:
    """No parameter may (through others) depend on itself: each `when:` chain ends."""
    def visit(name: str, path: list[str]) -> None:
        for parent in params[name].when or {}:
            if parent in path:
                cycle = " -> ".join([*path[path.index(parent):], parent])
                raise SpecInvalid(f"the when: conditions form a cycle ({cycle})", field=f"hpo.params.{path[0]}.when")
            visit(parent, [*path, parent])

    for name in params:
        visit(name, [name])


def active_order(params: dict[str, Param]) -> list[str]:
    """The parameters, each after those its `when:` names (the order a trial suggests them in)."""
    order: list[str] = []
    placed: set[str] = set()

    def place(name: str) -> None:
        if name in placed:
            return
        for parent in params[name].when or {}:
            place(parent)
        placed.add(name)
        order.append(name)

    for name in params:
        place(name)
    return order


def _check_grid(params: dict[str, Param]) -> None:
    for name, dist in params.items():
        here = f"hpo.params.{name}"
        if dist.when:
            raise SpecInvalid("sampler grid takes no conditional parameters (a grid is one full product)",
                              field=f"{here}.when")
        if isinstance(dist, FloatParam) and dist.step is None:
            raise SpecInvalid("sampler grid needs a step for a float parameter (the values to try)", field=here)
        if isinstance(dist, (FloatParam, IntParam)) and dist.log:
            raise SpecInvalid("sampler grid takes no log: true (give a step, or the values as choices)", field=here)


def _check_pruner(pruner: Pruner) -> None:
    if not 0 <= pruner.min_step <= _MAX_INT:
        raise SpecInvalid("must be 0 or more", field="hpo.pruner.min_step")
    if pruner.type in ("asha", "hyperband") and pruner.min_step < 1:
        raise SpecInvalid(f"{pruner.type} needs a first step of at least 1", field="hpo.pruner.min_step")
    if not 2 <= pruner.reduction <= 1000:
        raise SpecInvalid("must be at least 2 (a rung keeps 1 of this many trials)", field="hpo.pruner.reduction")
    if not 0 <= pruner.startup_trials <= _MAX_INT:
        raise SpecInvalid("must be 0 or more", field="hpo.pruner.startup_trials")
    if pruner.max_step is not None and pruner.max_step <= pruner.min_step:
        raise SpecInvalid(f"must be above min_step ({pruner.min_step})", field="hpo.pruner.max_step")


def _check_budget(budget: Budget) -> None:
    if budget.gpu_hours is not None and not (math.isfinite(budget.gpu_hours) and budget.gpu_hours > 0):
        raise SpecInvalid("must be a number of GPU-hours above 0", field="hpo.budget.gpu_hours")
    if budget.wall is not None and not budget.wall > 0:
        raise SpecInvalid("must be a duration longer than 0s, such as 12h", field="hpo.budget.wall")
