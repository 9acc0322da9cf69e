"""One study, driven: keep `parallel` trials in flight, each an ordinary INCL job, until `trials` have run.

Each pass (`step`) compares the study's journal (Optuna's trials) with the trial jobs' records, and acts on the
difference; it holds no state that a restart would lose:

    trial RUNNING, no job            submit its job (again: the controller died between ask and submit)
    trial RUNNING, job ended         tell Optuna the outcome (value, or FAIL with the job's reason)
    trial RUNNING, job running       follow its metric: intermediate values, and the pruner's verdict
    trial ended, job still running   cancel the job (pruned, or the study stopped with --cancel)
    room for more                    ask Optuna and submit (unless stopped, or past the budget)

Optuna runs in the study's own worker thread (its calls read and write the journal over the bus); the event
loop never waits on sampling. A preempted or lost trial job is requeued by INCL's own retry, as the same job:
the trial stays RUNNING and is never counted twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import structlog
from msgspec import structs
from optuna.trial import FrozenTrial
from optuna.trial import TrialState as OptunaState

from incl.bus.connection import Bus
from incl.bus.daemon import wait_event
from incl.bus.output import follow_attempt, read_attempt
from incl.controller import jobsecrets
from incl.controller.config import StudyConfig
from incl.controller.jobs import Jobs
from incl.controller.state import IllegalTransition
from incl.controller.store import Records
from incl.hpo.engine import StudyEngine, Ticket
from incl.hpo.factory import grid_size
from incl.hpo.objective import NoValue, trial_value
from incl.hpo.space import trial_env
from incl.proto import limits, subjects
from incl.proto.codec import Decoder
from incl.proto.errors import BadRequest, Conflict, DecodeError
from incl.proto.messages import TERMINAL, Job, JobState, MetricBatch, TrialRef
from incl.proto.spec import JobSpec
from incl.proto.studies import STUDY_ENDED, Study, StudyState

log = structlog.get_logger()
T = TypeVar("T")


def trial_spec(study: Study, ticket: Ticket) -> JobSpec:
    """The job a trial runs: the study's spec without `hpo:`, its parameters as environment variables."""
    name = f"{study.name}-t{ticket.number}"
    return structs.replace(study.spec, hpo=None, name=name, env={**study.spec.env, **trial_env(ticket.params)})


def gpu_hours(jobs: list[Job], now: float) -> float:
    """GPU-hours the jobs' attempts have held so far (GPUs × nodes × time each ran)."""
    total = 0.0
    for job in jobs:
        gpus = job.spec.resources.gpus * job.spec.resources.nodes
        for att in job.attempts:
            if gpus and att.started_at is not None:
                total += gpus * max(0.0, (att.ended_at or now) - att.started_at) / 3600
    return total


def budget_spent(study: Study, jobs: list[Job], now: float) -> str | None:
    """Why no more trials may start (the budget), or None."""
    budget = study.spec.hpo.budget if study.spec.hpo else None
    if budget is None:
        return None
    if budget.wall is not None and now - study.created_at >= budget.wall:
        return f"budget spent: {budget.wall / 3600:g} h of wall-clock time since the study started"
    if budget.gpu_hours is not None and (used := gpu_hours(jobs, now)) >= budget.gpu_hours:
        return f"budget spent: {used:.2f} of {budget.gpu_hours:g} GPU-hours"
    return None


class StudyRun:
    def __init__(self, study_id: str, records: Records[Study], jobs: Jobs, bus: Bus,
                 open_engine: Callable[[Study], StudyEngine], cfg: StudyConfig) -> None:
        self.study_id = study_id
        self._records = records
        self._jobs = jobs
        self._bus = bus
        self._open_engine = open_engine
        self._cfg = cfg
        self._wake = asyncio.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"study-{study_id}")
        self._followers: dict[int, asyncio.Task[None]] = {}  # trial number -> its metric follower
        self._decoder: Decoder[MetricBatch] = Decoder(MetricBatch)
        self.engine: StudyEngine | None = None
        self.trials: list[FrozenTrial] = []  # as of the last pass (what readers see)

    def wake(self) -> None:
        self._wake.set()

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run an Optuna call in this study's worker thread (one at a time, in order)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @property
    def study(self) -> Study:
        return self._records.require(self.study_id, "study")

    async def run(self) -> None:
        try:
            self.engine = await self.call(self._open_engine, self.study)
            async with asyncio.TaskGroup() as tg:
                while True:
                    self._wake.clear()
                    await self.step(tg)
                    if self.study.state in STUDY_ENDED:
                        break
                    await wait_event(self._wake, self._cfg.step_interval)
                for task in self._followers.values():
                    task.cancel()
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    # --- one pass -----------------------------------------------------------------------------------------

    async def step(self, tg: asyncio.TaskGroup) -> None:
        assert self.engine is not None
        self.trials = await self.call(self.engine.trials)
        jobs = self._jobs.of_study(self.study_id)
        told = False
        for trial in self.trials:
            job = jobs.get(trial.number)
            if trial.state is OptunaState.RUNNING:
                if job is None:
                    submitted = await self._submit(await self.call(self.engine.resume, trial.number))
                    if submitted is not None:
                        jobs[trial.number] = submitted
                elif job.state in TERMINAL:
                    await self._finish(trial.number, job)
                    told = True
                else:
                    self._follow(tg, trial.number, job)
            elif job is not None and job.state not in TERMINAL and not job.cancel_requested:
                await self._cancel(job, f"its trial ended ({trial.state.name})")
        if not await self._start_more(tg, jobs) and told:
            self.trials = await self.call(self.engine.trials)  # the last outcomes, so that the study ends now
        await self._maybe_end(jobs)

    async def _start_more(self, tg: asyncio.TaskGroup, jobs: dict[int, Job]) -> bool:
        """Ask and submit while there is room; whether it read the trials afresh."""
        study = self.study
        hpo = study.spec.hpo
        assert hpo is not None and self.engine is not None
        if study.state is StudyState.STOPPING:
            if study.cancel_running:
                for job in jobs.values():
                    if job.state not in TERMINAL and not job.cancel_requested:
                        await self._cancel(job, f"study {study.id} stopped with --cancel")
            return False
        if study.state is not StudyState.RUNNING or study.reason is not None:
            return False
        if why := budget_spent(study, list(jobs.values()), time.time()):
            log.info("study_budget_spent", study_id=study.id, reason=why)
            await self._records.update(study.id, lambda s: structs.replace(s, reason=why, updated_at=time.time()))
            return False
        total = self.total(study)
        in_flight = sum(1 for j in jobs.values() if j.state not in TERMINAL)
        started = len(self.trials)
        while in_flight < hpo.parallel and started < total:
            ticket = await self.call(self.engine.ask)
            started += 1
            submitted = await self._submit(ticket)
            if submitted is None:
                break
            jobs[ticket.number] = submitted
            in_flight += 1
            self._follow(tg, ticket.number, submitted)
        if started > len(self.trials):
            self.trials = await self.call(self.engine.trials)
            return True
        return False

    @staticmethod
    def total(study: Study) -> int:
        """The trials the study runs: `trials`, or fewer when a grid has fewer points."""
        hpo = study.spec.hpo
        assert hpo is not None
        return min(hpo.trials, grid_size(hpo.params)) if hpo.sampler == "grid" else hpo.trials

    async def _maybe_end(self, jobs: dict[int, Job]) -> None:
        study = self.study
        if any(t.state is OptunaState.RUNNING for t in self.trials) or any(
                j.state not in TERMINAL for j in jobs.values()):
            return
        now = time.time()
        if study.state is StudyState.STOPPING:
            to, reason = StudyState.STOPPED, study.reason or "stopped"
        elif study.state is StudyState.RUNNING and (study.reason is not None or len(self.trials) >= self.total(study)):
            to, reason = StudyState.COMPLETED, study.reason or f"all {len(self.trials)} trials ran"
        else:
            return
        await self._records.update(study.id, lambda s: structs.replace(s, state=to, reason=reason, updated_at=now,
                                                                        ended_at=now))
        log.info("study_ended", study_id=study.id, state=to, reason=reason, trials=len(self.trials))

    # --- trials -------------------------------------------------------------------------------------------

    async def _submit(self, ticket: Ticket) -> Job | None:
        """The trial's job (the same one if an earlier submit of it got through); None if the cluster refuses
        it, and then the trial FAILs with the reason and the study stops starting trials."""
        assert self.engine is not None
        study = self.study
        ref = TrialRef(study_id=study.id, number=ticket.number, params=ticket.params)
        try:
            spec = jobsecrets.unlocked_spec(trial_spec(study, ticket), study.locked_secrets, self._jobs.vault)
            job = await self._jobs.submit(spec, study.user, study.code,
                                          key=f"study:{study.id}:trial:{ticket.number}", trial=ref)
        except BadRequest as exc:
            why = limits.bound_reason(f"trial {ticket.number} could not be submitted: {exc}")
            log.warning("trial_refused", study_id=study.id, trial=ticket.number, reason=why)
            await self.call(self.engine.fail, ticket.number, why)
            await self._records.update(study.id, lambda s: structs.replace(s, reason=s.reason or why))
            return None
        await self.call(self.engine.set_job, ticket.number, job.id)
        log.info("trial_started", study_id=study.id, trial=ticket.number, job_id=job.id)
        return job

    async def _finish(self, number: int, job: Job) -> None:
        """Tell Optuna how the trial's job ended."""
        assert self.engine is not None
        hpo = self.study.spec.hpo
        assert hpo is not None and hpo.metric is not None
        self._unfollow(number)
        if job.state is JobState.SUCCEEDED:
            series = [v for _, v in await self._series(job, hpo.metric)]
            try:
                value = trial_value(series, hpo.metric, hpo.objective, hpo.direction)
            except NoValue as exc:
                await self.call(self.engine.fail, number, str(exc))
                log.info("trial_failed", study_id=self.study_id, trial=number, job_id=job.id, reason=str(exc))
                return
            await self.call(self.engine.complete, number, value)
            log.info("trial_complete", study_id=self.study_id, trial=number, job_id=job.id, value=value)
            return
        what = "was cancelled" if job.state is JobState.CANCELLED else "failed"
        why = limits.bound_reason(f"job {job.id} {what}: {job.reason or 'no reason given'}")
        await self.call(self.engine.fail, number, why)
        log.info("trial_failed", study_id=self.study_id, trial=number, job_id=job.id, reason=why)

    async def _cancel(self, job: Job, reason: str) -> None:
        with contextlib.suppress(Conflict, IllegalTransition):  # it ended meanwhile
            await self._jobs.cancel(job.id, reason)

    # --- metrics ------------------------------------------------------------------------------------------

    def _points(self, data: bytes, metric: str, count: list[int]) -> list[tuple[int, float]]:
        """The (step, value) pairs of `metric` in one batch; a point without a step gets its index."""
        try:
            batch = self._decoder.decode(data)
        except DecodeError:
            return []
        out: list[tuple[int, float]] = []
        for point in batch.points:
            if metric in point.values:
                out.append((point.step if point.step is not None else count[0], point.values[metric]))
                count[0] += 1
        return out

    async def _series(self, job: Job, metric: str) -> list[tuple[int, float]]:
        """Every point of `metric` the job logged, in order (all its attempts; the events stream holds an
        attempt's exit only after its metrics, so the series is whole once the job has ended)."""
        out: list[tuple[int, float]] = []
        count = [0]
        for attempt in job.attempts:  # each attempt's own subjects, in order (its assigned agents' batches only)
            async with contextlib.aclosing(read_attempt(self._bus, subjects.METRICS_STREAM, job, attempt,
                                                        self._cfg.metric_poll)) as items:
                async for data in items:
                    out += self._points(data, metric, count)
        return out

    def _follow(self, tg: asyncio.TaskGroup, number: int, job: Job) -> None:
        """Follow a running trial's metric for its pruner (a study without one reads the series once, at the
        end: intermediate values would cost journal writes for nothing)."""
        hpo = self.study.spec.hpo
        if hpo is None or hpo.pruner.type == "none":
            return
        if number not in self._followers or self._followers[number].done():
            self._followers[number] = tg.create_task(self._follow_metric(number, job))

    def _unfollow(self, number: int) -> None:
        task = self._followers.pop(number, None)
        if task is not None:
            task.cancel()

    async def _follow_metric(self, number: int, job: Job) -> None:
        """The trial's intermediate values, as the job logs them (in batches, at most every `report_interval`);
        when the pruner says so, the trial is PRUNED and its job cancelled. Each attempt writes to a subject of its
        own: the follower waits for the job's attempt, follows it, and moves to the next should the job be run
        again (preempted, lost)."""
        hpo = self.study.spec.hpo
        assert hpo is not None and hpo.metric is not None and self.engine is not None
        pending: list[tuple[int, float]] = []
        count = [0]
        next_report = 0.0
        followed = 0  # the attempt followed last
        try:
            while True:
                record = self._jobs.records.get(job.id)
                if record is None or record.state in TERMINAL:
                    return
                if record.current is None or record.current.number == followed:
                    await asyncio.sleep(self._cfg.metric_poll)
                    continue
                followed = record.current.number
                async with contextlib.aclosing(follow_attempt(self._bus, subjects.METRICS_STREAM, record,
                                                              record.current, self._cfg.metric_poll)) as items:
                    async for item in items:
                        if item is not None:
                            pending += self._points(item.data, hpo.metric, count)
                            if time.monotonic() < next_report:
                                continue  # reported soon: at the next batch past the interval, or a quiet poll
                        elif not pending and self._superseded(job.id, followed):
                            break
                        if not pending:
                            continue
                        points, pending = pending, []
                        next_report = time.monotonic() + self._cfg.report_interval
                        if await self.call(self.engine.report, number, points):
                            await self._prune(number, job.id, points[-1][0])
                            return
        except asyncio.CancelledError:
            raise
        except Exception:  # one trial's metric must never stop the study
            log.exception("trial_follow_failed", study_id=self.study_id, trial=number, job_id=job.id)

    def _superseded(self, job_id: str, attempt: int) -> bool:
        """The job has ended, or runs an attempt after `attempt`: its follower moves on."""
        record = self._jobs.records.get(job_id)
        return record is None or record.state in TERMINAL or (record.current is not None
                                                              and record.current.number != attempt)

    async def _prune(self, number: int, job_id: str, step: int) -> None:
        assert self.engine is not None
        hpo = self.study.spec.hpo
        assert hpo is not None
        why = f"pruned at step {step} by the {hpo.pruner.type} pruner"
        await self.call(self.engine.prune, number, why)  # first: a restart then cancels the job (see `step`)
        log.info("trial_pruned", study_id=self.study_id, trial=number, job_id=job_id, step=step)
        job = self._jobs.records.get(job_id)
        if job is not None and job.state not in TERMINAL:
            await self._cancel(job, why)
        self.wake()
