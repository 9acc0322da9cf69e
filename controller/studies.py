"""The study service: submit, stop, list and show HPO studies, and one `StudyRun` per study that has not ended.

A study's record (spec, user, state) is in the studies bucket; its trials are in its Optuna journal. At start the
controller resumes every study that had not ended, from those two alone.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from msgspec import structs

from incl.bus.connection import Bus
from incl.controller import jobsecrets
from incl.controller.config import StudyConfig
from incl.controller.jobs import Jobs
from incl.controller.paging import page
from incl.controller.store import Records
from incl.proto import subjects
from incl.proto.errors import Conflict, SpecInvalid
from incl.proto.messages import Job, TreeRef
from incl.proto.spec import JobSpec
from incl.proto.studies import (
    STUDY_ENDED,
    GetStudyReply,
    Study,
    StudyState,
    StudySummary,
    TrialState,
    TrialView,
)

if TYPE_CHECKING:  # Optuna (and numpy under it) loads with the first study, not with every controller
    from optuna.trial import FrozenTrial

    from incl.controller.study_run import StudyRun
    from incl.hpo.engine import StudyEngine

log = structlog.get_logger()


def new_study_id() -> str:
    return "s-" + secrets.token_hex(4)


def _ts(moment: object) -> float | None:
    return moment.timestamp() if isinstance(moment, datetime) else None


def trial_view(trial: FrozenTrial, job: Job | None) -> TrialView:
    from optuna.trial import TrialState as OptunaState  # noqa: PLC0415 - lazy: see TYPE_CHECKING above

    from incl.hpo.engine import job_of, reason_of  # noqa: PLC0415
    value = trial.value if trial.state is OptunaState.COMPLETE else None
    return TrialView(number=trial.number, state=TrialState(trial.state.name), params=dict(trial.params),
                     value=value if value is None or math.isfinite(value) else None,
                     job_id=job.id if job else job_of(trial), job_state=job.state if job else None,
                     started_at=_ts(trial.datetime_start), ended_at=_ts(trial.datetime_complete),
                     reason=reason_of(trial), last_step=trial.last_step, steps=len(trial.intermediate_values))


def best_so_far(trials: list[FrozenTrial], direction: str) -> list[float]:
    from optuna.trial import TrialState as OptunaState  # noqa: PLC0415 - lazy: see TYPE_CHECKING above
    """The best value after each completed trial, in the order they completed."""
    done = sorted((t for t in trials if t.state is OptunaState.COMPLETE and t.value is not None),
                  key=lambda t: (_ts(t.datetime_complete) or 0.0, t.number))
    best: list[float] = []
    for t in done:
        assert t.value is not None
        better = min if direction == "minimize" else max
        best.append(t.value if not best else better(best[-1], t.value))
    return best


class Studies:
    def __init__(self, cfg: StudyConfig, records: Records[Study], jobs: Jobs, bus: Bus,
                 open_engine: Callable[[Study], StudyEngine]) -> None:
        self._cfg = cfg
        self.records = records
        self._jobs = jobs
        self._bus = bus
        self._open_engine = open_engine
        self.runs: dict[str, StudyRun] = {}
        self._new: asyncio.Queue[str] = asyncio.Queue()
        # Ended studies do not change: their trials and importances, read from the journal once.
        self._ended: OrderedDict[str, tuple[list[FrozenTrial], dict[str, float]]] = OrderedDict()

    # --- the loop -----------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run every study that has not ended, and each new one, until cancelled."""
        for study in self.records:
            if study.state not in STUDY_ENDED:
                self._new.put_nowait(study.id)
        async with asyncio.TaskGroup() as tg:
            while True:
                study_id = await self._new.get()
                if study_id not in self.runs:
                    run = _study_run(study_id, self.records, self._jobs, self._bus, self._open_engine, self._cfg)
                    self.runs[study_id] = run
                    tg.create_task(self._run(run))

    async def _run(self, run: StudyRun) -> None:
        """Run the study to its end. A failure is that study's own: logged, and the study is run again (from its
        journal and records, as after a restart) after a backoff that doubles up to `retry_max`."""
        delay = self._cfg.retry_initial
        try:
            while True:
                try:
                    await run.run()
                    return
                except asyncio.CancelledError:
                    raise
                except Exception:  # logged with its traceback; the other studies go on
                    log.exception("study_run_failed", study_id=run.study_id, retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._cfg.retry_max)
                run = _study_run(run.study_id, self.records, self._jobs, self._bus, self._open_engine, self._cfg)
                self.runs[run.study_id] = run
        finally:
            self.runs.pop(run.study_id, None)

    def _trim(self) -> None:
        while len(self._ended) > self._cfg.ended_cache:
            self._ended.popitem(last=False)

    def job_changed(self, before: Job | None, after: Job) -> None:
        """A trial's job changed: its study takes a pass."""
        if after.trial is not None and (run := self.runs.get(after.trial.study_id)) is not None:
            run.wake()

    @staticmethod
    def view(study: Study) -> Study:
        """The study as users see it: secrets and a webhook URL masked, as for jobs."""
        return study if not study.spec.secrets and study.spec.notify is None else structs.replace(
            study, spec=Jobs.masked(study.spec))

    # --- requests -----------------------------------------------------------------------------------------

    async def submit(self, spec: JobSpec, user: str, code: TreeRef | None, key: str | None) -> Study:
        hpo = spec.hpo
        assert hpo is not None  # the API routes only specs with `hpo:` here
        from incl.hpo.factory import missing_dependency  # noqa: PLC0415 - lazy: see TYPE_CHECKING above

        if (why := missing_dependency(hpo.sampler)) is not None:
            raise SpecInvalid(why, field="hpo.sampler")
        self._jobs.check(structs.replace(spec, hpo=None), user, code)  # what each trial's job will be
        study_id = await self._jobs.claim(user, key, new_study_id()) if key else new_study_id()
        if (existing := self.records.get(study_id)) is not None:
            return existing
        now = time.time()
        seed = hpo.seed if hpo.seed is not None else secrets.randbelow(2**31)
        names_only, locked = jobsecrets.lock_spec(spec, self._jobs.vault)  # no clear value in the bucket
        study = Study(id=study_id, spec=names_only, user=user, state=StudyState.RUNNING, created_at=now,
                      updated_at=now, seed=seed, code=code, journal=subjects.study_journal(study_id, user, spec.team),
                      locked_secrets=locked)
        await self.records.create(study)
        log.info("study_submitted", study_id=study.id, user=user, trials=hpo.trials, parallel=hpo.parallel,
                 sampler=hpo.sampler)
        self._new.put_nowait(study.id)
        return study

    async def stop(self, study_id: str, cancel: bool) -> Study:
        study = self.records.require(study_id, "study")
        if study.state in STUDY_ENDED:
            raise Conflict(f"study {study_id} has already ended ({study.state})")

        def change(s: Study) -> Study:
            return structs.replace(s, state=StudyState.STOPPING, cancel_running=s.cancel_running or cancel,
                                   reason=s.reason if s.state is StudyState.STOPPING else "stopped by its user",
                                   updated_at=time.time())

        study = await self.records.update(study_id, change)
        log.info("study_stop_requested", study_id=study_id, cancel=cancel)
        if (run := self.runs.get(study_id)) is not None:
            run.wake()
        return study

    async def _read(self, study: Study, importances: bool) -> tuple[list[FrozenTrial], dict[str, float]]:
        """The study's trials (and, if asked, importances): the running study's last pass, or read once from
        the journal when it has ended (a study that is not running and not ended is read afresh)."""
        if (run := self.runs.get(study.id)) is not None and run.engine is not None:
            try:
                found = await run.call(run.engine.importances) if importances else {}
                return run.trials, found
            except RuntimeError:  # its worker shut down: the study ended meanwhile, read it as an ended one
                pass
            except asyncio.CancelledError:  # the same, with the call queued: its future was cancelled
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
        if study.id in self._ended:
            return self._ended[study.id]
        engine = await asyncio.to_thread(self._open_engine, study)
        trials = await asyncio.to_thread(engine.trials)
        found = await asyncio.to_thread(engine.importances)
        if study.state in STUDY_ENDED:
            self._ended[study.id] = (trials, found)
            self._trim()
        return trials, found

    async def summary(self, study: Study, trials: list[FrozenTrial] | None = None) -> StudySummary:
        if trials is None:
            trials, _ = await self._read(study, importances=False)
        counts: dict[str, int] = {}
        for t in trials:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
        from optuna.trial import TrialState as OptunaState  # noqa: PLC0415 - lazy: see TYPE_CHECKING above

        from incl.controller.study_run import gpu_hours  # noqa: PLC0415

        done = [t for t in trials if t.state is OptunaState.COMPLETE and t.value is not None]
        best = None
        if done:
            pick = min if study.spec.hpo is None or study.spec.hpo.direction == "minimize" else max
            best = pick(done, key=lambda t: t.value or 0.0)
        jobs = list(self._jobs.of_study(study.id).values())
        return StudySummary(study=self.view(study), counts=counts, best_value=best.value if best else None,
                            best_trial=best.number if best else None, gpu_hours=gpu_hours(jobs, time.time()))

    async def list(self, user: str | None, after: str | None, limit: int | None, page_bytes: int,
                   visible: Callable[[Study], bool] = lambda s: True) -> tuple[list[StudySummary], str | None]:
        studies = [s for s in self.records if (user is None or s.user == user) and visible(s)]
        chosen, cursor = page(studies, lambda s: f"{s.created_at:020.6f}/{s.id}", after, limit, page_bytes)
        return [await self.summary(s) for s in chosen], cursor

    async def get(self, study_id: str, brief: bool = False) -> GetStudyReply:
        """The study with its trials, curve and importances; `brief`: its summary alone (no journal read)."""
        study = self.records.require(study_id, "study")
        if brief:
            return GetStudyReply(summary=await self.summary(study), trials=[])
        trials, importances = await self._read(study, importances=True)
        jobs = self._jobs.of_study(study_id)
        direction = study.spec.hpo.direction if study.spec.hpo else "minimize"
        return GetStudyReply(summary=await self.summary(study, trials),
                             trials=[trial_view(t, jobs.get(t.number)) for t in trials],
                             best_so_far=best_so_far(trials, direction), importances=importances)


def _study_run(*args: Any) -> StudyRun:
    from incl.controller.study_run import StudyRun  # noqa: PLC0415 - lazy: see TYPE_CHECKING above

    return StudyRun(*args)
