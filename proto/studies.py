"""HPO studies on the wire: the study record the controller keeps, and the requests `incl study` makes.

A study's trials live in its Optuna journal (stream INCL_STUDIES, one subject per study); the record holds what
Optuna does not: the spec the trials run, who submitted it, and where the study is in its life.

    RUNNING  -> STOPPING  (incl study stop: no new trials; the running ones finish, or are cancelled)
    RUNNING  -> COMPLETED (every trial started and ended, or the budget is spent and the running ones ended)
    STOPPING -> STOPPED   (the last running trial ended)
"""

from __future__ import annotations

import enum

import msgspec

from incl.proto import subjects
from incl.proto.hpo import Choice
from incl.proto.messages import JobState, Reply, Request, TreeRef
from incl.proto.spec import JobSpec


class _Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class StudyState(enum.StrEnum):
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    COMPLETED = "COMPLETED"
    STOPPED = "STOPPED"


STUDY_ENDED = frozenset({StudyState.COMPLETED, StudyState.STOPPED})


class Study(_Struct, frozen=True):
    id: str
    spec: JobSpec  # with its `hpo:` section; each trial runs it with its parameters in the environment
    user: str
    state: StudyState
    created_at: float
    updated_at: float
    seed: int  # the sampler's seed, drawn at submit unless the spec gives one
    code: TreeRef | None = None
    reason: str | None = None  # why it stopped starting trials, or ended
    ended_at: float | None = None
    cancel_running: bool = False  # `incl study stop --cancel`: the running trials are cancelled too
    journal: str = ""  # its journal's subject (`subjects.study_journal`); "": a study from before, on the old one
    # The values of `spec.secrets`, encrypted with the controller's vault key (as a job's `locked_secrets`); the
    # spec keeps the names with empty values. None: no secrets, or a record from before (values in the spec).
    locked_secrets: dict[str, bytes] | None = None

    @property
    def journal_subject(self) -> str:
        return self.journal or subjects.study_journal(self.id)

    @property
    def name(self) -> str:
        return self.spec.name or self.id


class TrialState(enum.StrEnum):
    """Optuna's trial states."""
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAIL = "FAIL"
    WAITING = "WAITING"


class TrialView(_Struct, frozen=True):
    number: int
    state: TrialState
    params: dict[str, Choice] = {}  # the active parameters (a conditional one that is inactive is absent)
    value: float | None = None
    job_id: str | None = None
    job_state: JobState | None = None
    started_at: float | None = None
    ended_at: float | None = None
    reason: str | None = None  # why it failed or was pruned
    last_step: int | None = None  # the last intermediate value's step
    steps: int = 0  # intermediate values reported


class StudySummary(_Struct, frozen=True):
    study: Study
    counts: dict[str, int] = {}  # trial state -> how many
    best_value: float | None = None
    best_trial: int | None = None
    gpu_hours: float = 0.0  # used by its trials so far


class SubmitStudyRequest(Request, frozen=True):
    spec: JobSpec
    user: str
    code: TreeRef | None = None


class SubmitStudyReply(Reply, frozen=True):
    study: Study


class ListStudiesRequest(Request, frozen=True):
    user: str | None = None
    after: str | None = None
    limit: int | None = None


class ListStudiesReply(Reply, frozen=True):
    studies: list[StudySummary]
    next: str | None = None


class GetStudyRequest(Request, frozen=True):
    study_id: str
    brief: bool = False  # the summary only (no trials, curve or importances): where its journal is, what it is


class GetStudyReply(Reply, frozen=True):
    summary: StudySummary
    trials: list[TrialView]
    # the best value after each finished trial, in the order they finished
    best_so_far: list[float] = msgspec.field(default_factory=list)
    # parameter -> importance (optuna.importance), once enough trials finished
    importances: dict[str, float] = msgspec.field(default_factory=dict)


class StopStudyRequest(Request, frozen=True):
    study_id: str
    cancel: bool = False  # also cancel the running trials


class StopStudyReply(Reply, frozen=True):
    study: Study
