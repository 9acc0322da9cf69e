"""One study's Optuna side, driven by the controller: ask, resume, report, tell, and what a reader sees.

Every call is synchronous and may read or write the study's journal: the controller calls it from the study's
own worker thread, never from its event loop. Trials are named by their number (what users and job records
see); Optuna's internal trial ids never leave this module.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from incl.hpo.factory import make_pruner, make_sampler
from incl.hpo.space import suggest
from incl.proto.hpo import Choice, Hpo

JOB_ATTR = "incl:job_id"  # the INCL job that runs the trial
REASON_ATTR = "incl:reason"  # why it failed or was pruned

optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial from Optuna would drown the controller's log


@dataclass(frozen=True, slots=True)
class Ticket:
    """A trial to run: its number and the values of its active parameters."""
    number: int
    params: dict[str, Choice]


class StudyEngine:
    def __init__(self, storage: optuna.storages.BaseStorage, study_id: str, hpo: Hpo, seed: int,
                 create: bool = True) -> None:
        """Create the study in `storage`, or load it (a controller restart, a reader); with `create` False, only
        load it (KeyError if it is not there): Optuna's create-or-load writes to the storage even when the study
        exists, and a standby controller writes nothing."""
        self.hpo = hpo
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler, pruner = make_sampler(hpo, seed), make_pruner(hpo.pruner)
            self.study = optuna.create_study(storage=storage, study_name=study_id, direction=hpo.direction,
                                             sampler=sampler, pruner=pruner, load_if_exists=True) if create \
                else optuna.load_study(storage=storage, study_name=study_id, sampler=sampler, pruner=pruner)

    @property
    def _storage(self) -> optuna.storages.BaseStorage:
        return self.study._storage  # Optuna has no public way from a trial number to a Trial

    def _id(self, number: int) -> int:
        return self._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)

    def _trial(self, number: int) -> optuna.Trial:
        return optuna.Trial(self.study, self._id(number))

    def ask(self) -> Ticket:
        trial = self.study.ask()
        return Ticket(trial.number, suggest(trial, self.hpo.params))

    def resume(self, number: int) -> Ticket:
        """The values of a RUNNING trial whose job was never submitted (the controller died between the ask and
        the submit): suggested again, the ones already stored come back as they were."""
        return Ticket(number, suggest(self._trial(number), self.hpo.params))

    def set_job(self, number: int, job_id: str) -> None:
        self._storage.set_trial_system_attr(self._id(number), JOB_ATTR, job_id)

    def report(self, number: int, points: list[tuple[int, float]]) -> bool:
        """Record intermediate values (step, value); True when the pruner says to stop the trial now."""
        trial = self._trial(number)
        if self._storage.get_trial(self._id(number)).state is not TrialState.RUNNING:
            return False  # pruned or failed already: its last points change nothing
        seen = set(self._storage.get_trial(self._id(number)).intermediate_values)
        reported = False
        for step, value in points:
            if math.isfinite(value) and step not in seen:
                trial.report(value, step)
                seen.add(step)
                reported = True
        return reported and bool(trial.should_prune())  # Optuna answers a numpy bool

    def complete(self, number: int, value: float) -> None:
        self.study.tell(number, value, skip_if_finished=True)

    def prune(self, number: int, reason: str) -> None:
        self._reason(number, reason)
        self.study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)

    def fail(self, number: int, reason: str) -> None:
        self._reason(number, reason)
        self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)

    def _reason(self, number: int, reason: str) -> None:
        trial_id = self._id(number)
        if self._storage.get_trial(trial_id).state is TrialState.RUNNING:
            self._storage.set_trial_system_attr(trial_id, REASON_ATTR, reason)

    def trials(self) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False)

    def importances(self) -> dict[str, float]:
        """Parameter importances over the finished trials ({} until there are enough to say)."""
        done = [t for t in self.trials() if t.state is TrialState.COMPLETE]
        if len(done) < 4:
            return {}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found: dict[str, Any] = optuna.importance.get_param_importances(self.study)
        except (RuntimeError, ValueError):  # e.g. every trial has the same value, or no parameter varies
            return {}
        return {name: float(v) for name, v in found.items()}


def job_of(trial: FrozenTrial) -> str | None:
    value = trial.system_attrs.get(JOB_ATTR)
    return value if isinstance(value, str) else None


def reason_of(trial: FrozenTrial) -> str | None:
    value = trial.system_attrs.get(REASON_ATTR)
    return value if isinstance(value, str) else None
