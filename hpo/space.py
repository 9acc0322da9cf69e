"""A study's search space (the spec's `params:`) as Optuna define-by-run suggestions, and the environment a trial
gets from its values."""

from __future__ import annotations

import json
import math

import optuna

from incl.proto.hpo import CategoricalParam, Choice, FloatParam, IntParam, Param, active_order


def is_active(param: Param, values: dict[str, Choice]) -> bool:
    """Whether a conditional parameter applies, given the values chosen so far."""
    return all(name in values and _same(values[name], want) for name, want in (param.when or {}).items())


def _same(a: Choice, b: Choice) -> bool:
    return type(a) is type(b) and a == b


def suggest(trial: optuna.Trial, params: dict[str, Param]) -> dict[str, Choice]:
    """Suggest every active parameter, each after those its `when:` names. A parameter the trial already holds
    (a trial resumed after a controller restart) keeps its value: Optuna returns the stored one."""
    values: dict[str, Choice] = {}
    for name in active_order(params):
        param = params[name]
        if not is_active(param, values):
            continue
        match param:
            case FloatParam():
                values[name] = trial.suggest_float(name, param.low, param.high, log=param.log, step=param.step)
            case IntParam():
                values[name] = trial.suggest_int(name, param.low, param.high, step=param.step, log=param.log)
            case CategoricalParam():
                values[name] = trial.suggest_categorical(name, param.choices)
    return values


def env_value(value: Choice) -> str:
    """How a value reads in the environment: a float as its `repr` (Python's `float()` gives back the same
    number, bit for bit), a bool as true/false, None as the empty string."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)
    return str(value)


def trial_env(values: dict[str, Choice]) -> dict[str, str]:
    """One variable per active parameter, named as in the spec."""
    return {name: env_value(value) for name, value in values.items()}


def params_json(values: dict[str, Choice]) -> str:
    """`INCL_PARAMS`, which `incl.params()` reads back typed (JSON writes floats with their repr)."""
    return json.dumps(values, sort_keys=True)
