"""Hyperparameter optimization with Optuna, the INCL way.

- `InclTPESampler`: INCL's TPE for many trials in flight; an ordinary Optuna sampler, usable in plain Optuna.
- `storage(nats_url, study_id)`: a study's Optuna storage, read from its journal on the bus
  (`optuna.load_study(study_name=study_id, storage=storage(url, study_id))`).

The names load on first use, so that importing one part does not import the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "InclTPESampler": "incl.hpo.sampler",
    "storage": "incl.hpo.backend",
}

__all__ = ["InclTPESampler", "storage"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'incl.hpo' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
