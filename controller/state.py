"""The job state machine: every transition of a job is computed here, and only here.

Each function takes a Job and returns the next Job; none does I/O. An illegal or stale transition raises
`IllegalTransition`; the caller logs it and applies nothing.
"""

from __future__ import annotations

from msgspec import structs

from incl.proto import limits
from incl.proto.errors import Conflict
from incl.proto.messages import ON_AGENT, TERMINAL, AgentInfo, Attempt, Job, JobState, TreeRef

S = JobState

ALLOWED: dict[JobState, frozenset[JobState]] = {
    S.QUEUED: frozenset({S.ASSIGNED, S.CANCELLED}),
    S.ASSIGNED: frozenset({S.STARTING, S.RUNNING, S.SUCCEEDED, S.FAILED, S.CANCELLED, S.LOST, S.PREEMPTED}),
    S.STARTING: frozenset({S.RUNNING, S.SUCCEEDED, S.FAILED, S.CANCELLED, S.LOST, S.PREEMPTED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED, S.LOST, S.PREEMPTED}),
    S.LOST: frozenset({S.QUEUED, S.FAILED}),
    S.PREEMPTED: frozenset({S.QUEUED, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
}


class IllegalTransition(Exception):
    pass


def _check(job: Job, to: JobState) -> None:
    if to not in ALLOWED.get(job.state, frozenset()):
        raise IllegalTransition(f"{job.id}: {job.state} -> {to} is not allowed")


def _current(job: Job, attempt: int) -> Attempt:
    cur = job.current
    if cur is None or cur.number != attempt:
        raise IllegalTransition(f"{job.id}: event for attempt {attempt}, current is {cur.number if cur else None}")
    return cur


def with_attempt(job: Job, attempt: Attempt, **job_fields: object) -> Job:
    """The job with its current attempt replaced (and `job_fields` set)."""
    return structs.replace(job, attempts=[*job.attempts[:-1], attempt], **job_fields)


_with_attempt = with_attempt


def assign(job: Job, agent_id: str, now: float, instance: AgentInfo | None = None, output_key: str = "") -> Job:
    """A new attempt on `agent_id`; `output_key`: the last token of its output subjects (random: see Attempt)."""
    _check(job, S.ASSIGNED)
    attempt = Attempt(number=len(job.attempts) + 1, agent_id=agent_id, state=S.ASSIGNED, assigned_at=now,
                      instance_id=instance.instance_id if instance else None,
                      instance_type=instance.instance_type if instance else None,
                      market=instance.market if instance else None, output_key=output_key,
                      agent_subjects=True)
    return structs.replace(job, state=S.ASSIGNED, attempts=[*_old_tails_dropped(job.attempts), attempt], updated_at=now,
                           reason=None)


def _old_tails_dropped(attempts: list[Attempt]) -> list[Attempt]:
    """The record keeps the tails of the last `TAILS_KEPT` attempts only, so it stays bounded however often
    a job is retried."""
    cut = len(attempts) - limits.TAILS_KEPT + 1
    if cut <= 0 or not attempts[cut - 1].tail:
        return attempts
    return [structs.replace(a, tail=[]) if i < cut and a.tail else a for i, a in enumerate(attempts)]


def starting(job: Job, attempt: int, now: float) -> Job:
    cur = _current(job, attempt)
    _check(job, S.STARTING)
    return _with_attempt(job, structs.replace(cur, state=S.STARTING), state=S.STARTING, updated_at=now)


def running(job: Job, attempt: int, now: float, started_at: float) -> Job:
    cur = _current(job, attempt)
    _check(job, S.RUNNING)
    att = structs.replace(cur, state=S.RUNNING, started_at=started_at)
    return _with_attempt(job, att, state=S.RUNNING, updated_at=now)


def exited(job: Job, attempt: int, now: float, *, exit_code: int | None, reason: str | None,
           cancelled: bool, tail: list[str], ended_at: float, outputs: TreeRef | None = None,
           preempted: bool = False, fenced: bool = False) -> Job:
    """The attempt's process ended: SUCCEEDED, CANCELLED, FAILED, or back to QUEUED if retry allows; a
    preempted attempt (stopped on a spot notice) is PREEMPTED and the job resumes as the next attempt."""
    cur = _current(job, attempt)
    tail, reason = limits.bound_tail(tail), limits.bound_reason(reason)  # a forged or old agent's, too
    if (preempted or fenced) and not cancelled and not job.cancel_requested:
        att = structs.replace(cur, ended_at=ended_at, exit_code=exit_code, tail=tail, outputs=outputs)
        if fenced:  # its agent lost contact with the controller and stopped it: as if the agent were lost
            return lost(_with_attempt(job, att), attempt, now, reason or "its agent lost contact with the controller")
        return preempt(_with_attempt(job, att), attempt, now, reason or "spot instance reclaimed")
    if cancelled or job.cancel_requested:
        to, reason = S.CANCELLED, job.reason or reason or "cancelled"
    elif exit_code == 0:
        to = S.SUCCEEDED
    else:
        to = S.FAILED
        reason = reason or f"exit code {exit_code}"
    _check(job, to)
    att = structs.replace(cur, state=to, ended_at=ended_at, exit_code=exit_code, reason=reason, tail=tail,
                          outputs=outputs)
    job = _with_attempt(job, att, state=to, updated_at=now, exit_code=exit_code, reason=reason)
    if to is S.FAILED and job.spec.retry.on_failure and _counted(job) < job.spec.retry.max_attempts:
        return structs.replace(job, state=S.QUEUED, reason=f"retrying after: {reason}")
    return job


def _counted(job: Job) -> int:
    """Attempts that use up `retry.max_attempts`: all but the preempted ones."""
    return sum(a.state is not S.PREEMPTED for a in job.attempts)


def preempt(job: Job, attempt: int, now: float, reason: str) -> Job:
    """The attempt's spot instance was reclaimed (with a notice, or found terminated for a spot reason): the
    attempt is PREEMPTED and the job goes back to the queue to resume from its checkpoint. Preemptions do not
    use up `retry.max_attempts`."""
    cur = _current(job, attempt)
    _check(job, S.PREEMPTED)
    att = structs.replace(cur, state=S.PREEMPTED, ended_at=cur.ended_at or now, reason=reason)
    job = _with_attempt(job, att, state=S.PREEMPTED, updated_at=now, reason=reason)
    if job.cancel_requested:
        return structs.replace(job, state=S.CANCELLED, reason="cancelled (instance preempted)")
    return structs.replace(job, state=S.QUEUED, reason=f"resuming after preemption: {reason}")


def lost(job: Job, attempt: int, now: float, reason: str) -> Job:
    """The attempt's agent is gone: the attempt is LOST; the job is queued again while retry allows."""
    cur = _current(job, attempt)
    _check(job, S.LOST)
    att = structs.replace(cur, state=S.LOST, ended_at=cur.ended_at or now, reason=reason)
    job = _with_attempt(job, att, state=S.LOST, updated_at=now, reason=reason)
    if job.cancel_requested:
        return structs.replace(job, state=S.CANCELLED, reason="cancelled (agent lost)")
    if _counted(job) < job.spec.retry.max_attempts:
        return structs.replace(job, state=S.QUEUED, reason=f"requeued: {reason}")
    return structs.replace(job, state=S.FAILED, reason=f"{reason}; no attempts left ({len(job.attempts)})")


def cancel(job: Job, now: float, reason: str | None = None) -> Job:
    """A queued job is cancelled at once; a job on an agent is marked, and ends when the agent stops it.
    `reason` (e.g. "gpu_idle") becomes the job's reason; by default, "cancelled"."""
    if job.state in TERMINAL:
        raise Conflict(f"job {job.id} has already finished ({job.state})")
    if job.state is S.QUEUED:
        return structs.replace(job, state=S.CANCELLED, updated_at=now, reason=reason or "cancelled before it started")
    if job.state in ON_AGENT:
        return structs.replace(job, cancel_requested=True, updated_at=now, reason=reason)
    raise IllegalTransition(f"{job.id}: cannot cancel in state {job.state}")
