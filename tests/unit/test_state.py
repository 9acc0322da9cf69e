"""The job state machine: every legal path, and illegal or stale transitions refused."""

from __future__ import annotations

import pytest

from incl.controller import state
from incl.proto.errors import Conflict
from incl.proto.messages import Job, JobState
from incl.proto.spec import load_spec

S = JobState


def job(**spec: object) -> Job:
    return Job(id="j-1", spec=load_spec({"run": "true", **spec}), user="u", state=S.QUEUED, submitted_at=0,
               updated_at=0)


def test_happy_path_keeps_one_attempt_with_its_times() -> None:
    j = state.assign(job(), "a1", 1.0)
    j = state.starting(j, 1, 2.0)
    j = state.running(j, 1, 3.0, started_at=2.5)
    j = state.exited(j, 1, 4.0, exit_code=0, reason=None, cancelled=False, tail=[], ended_at=3.9)
    assert j.state is S.SUCCEEDED and j.exit_code == 0
    (a,) = j.attempts
    assert (a.number, a.agent_id, a.state, a.assigned_at, a.started_at, a.ended_at) == (1, "a1", S.SUCCEEDED,
                                                                                         1.0, 2.5, 3.9)


def test_non_zero_exit_fails_with_reason_and_tail() -> None:
    j = state.running(state.assign(job(), "a1", 1), 1, 2, started_at=2)
    j = state.exited(j, 1, 3, exit_code=3, reason=None, cancelled=False, tail=["boom"], ended_at=3)
    assert (j.state, j.exit_code, j.reason, j.current.tail) == (S.FAILED, 3, "exit code 3", ["boom"])


def test_on_failure_retry_requeues_until_attempts_run_out() -> None:
    j = job(retry={"max_attempts": 2, "on_failure": True})
    j = state.exited(state.assign(j, "a1", 1), 1, 2, exit_code=1, reason=None, cancelled=False, tail=[], ended_at=2)
    assert j.state is S.QUEUED and j.current.state is S.FAILED
    j = state.exited(state.assign(j, "a2", 3), 2, 4, exit_code=1, reason=None, cancelled=False, tail=[], ended_at=4)
    assert j.state is S.FAILED and len(j.attempts) == 2


def test_lost_attempt_requeues_then_fails_when_retries_are_spent() -> None:
    j = job(retry={"max_attempts": 2})
    j = state.lost(state.running(state.assign(j, "a1", 1), 1, 2, started_at=2), 1, 3, "agent gone")
    assert j.state is S.QUEUED and j.attempts[0].state is S.LOST
    j = state.lost(state.assign(j, "a2", 4), 2, 5, "agent gone")
    assert j.state is S.FAILED and "no attempts left" in j.reason


def test_cancel_queued_is_immediate_running_is_requested_finished_is_conflict() -> None:
    assert state.cancel(job(), 1).state is S.CANCELLED
    running = state.running(state.assign(job(), "a1", 1), 1, 2, started_at=2)
    marked = state.cancel(running, 3)
    assert marked.state is S.RUNNING and marked.cancel_requested
    ended = state.exited(marked, 1, 4, exit_code=143, reason=None, cancelled=False, tail=[], ended_at=4)
    assert ended.state is S.CANCELLED
    with pytest.raises(Conflict):
        state.cancel(ended, 5)


def test_lost_while_cancel_requested_ends_cancelled_not_requeued() -> None:
    j = state.cancel(state.assign(job(), "a1", 1), 2)
    assert state.lost(j, 1, 3, "agent gone").state is S.CANCELLED


@pytest.mark.parametrize("event", ["starting", "running", "exited", "lost"])
def test_stale_attempt_events_are_refused(event: str) -> None:
    j = state.lost(state.assign(job(), "a1", 1), 1, 2, "gone")
    j = state.assign(j, "a2", 3)  # attempt 2 is current; attempt 1's agent reports late
    calls = {
        "starting": lambda: state.starting(j, 1, 4),
        "running": lambda: state.running(j, 1, 4, started_at=4),
        "exited": lambda: state.exited(j, 1, 4, exit_code=0, reason=None, cancelled=False, tail=[], ended_at=4),
        "lost": lambda: state.lost(j, 1, 4, "x"),
    }
    with pytest.raises(state.IllegalTransition):
        calls[event]()


def test_terminal_states_refuse_everything() -> None:
    j = state.exited(state.assign(job(), "a1", 1), 1, 2, exit_code=0, reason=None, cancelled=False, tail=[],
                     ended_at=2)
    for call in (lambda: state.running(j, 1, 3, started_at=3), lambda: state.lost(j, 1, 3, "x"),
                 lambda: state.assign(j, "a1", 3), lambda: state.starting(j, 1, 3)):
        with pytest.raises(state.IllegalTransition):
            call()


def test_allowed_table_covers_every_state() -> None:
    assert set(state.ALLOWED) == set(JobState)


def test_preempted_attempts_resume_and_never_use_up_attempts() -> None:
    """A spot notice (exit with preempted) and a reclaim without notice both make the attempt PREEMPTED and
    queue the job again, however many times; the instance each attempt ran on is kept."""
    from incl.proto.messages import AgentInfo, Resources
    spot = AgentInfo(agent_id="i-1", hostname="h", capacity=Resources(cpus=1, memory=1), instance_id="i-1",
                     instance_type="g5.xlarge", market="spot")
    j = job(retry={"max_attempts": 1})
    for n in range(1, 4):
        j = state.running(state.assign(j, f"i-{n}", n, spot), n, n, started_at=n)
        if n % 2:
            j = state.exited(j, n, n + 0.5, exit_code=143, reason="spot notice", cancelled=False, tail=[],
                             ended_at=n + 0.5, preempted=True)
        else:
            j = state.preempt(j, n, n + 0.5, "spot instance reclaimed")
        assert j.state is S.QUEUED and j.current.state is S.PREEMPTED and "resuming" in j.reason
    assert [(a.instance_id, a.instance_type, a.market) for a in j.attempts] == [("i-1", "g5.xlarge", "spot")] * 3
    j = state.exited(state.running(state.assign(j, "i-4", 9), 4, 9, started_at=9), 4, 10, exit_code=0, reason=None,
                     cancelled=False, tail=[], ended_at=10)
    assert j.state is S.SUCCEEDED


def test_preempted_while_cancel_requested_ends_cancelled() -> None:
    j = state.cancel(state.running(state.assign(job(), "a1", 1), 1, 2, started_at=2), 3)
    j = state.exited(j, 1, 4, exit_code=143, reason=None, cancelled=False, tail=[], ended_at=4, preempted=True)
    assert j.state is S.CANCELLED
