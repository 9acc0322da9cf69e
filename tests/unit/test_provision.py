"""The provisioner's view of agents for the reconcile diff: which are busy, and since when the others idle."""

from __future__ import annotations

from incl.controller import state
from incl.controller.provision import idle_since
from incl.proto.messages import AgentInfo, AgentRecord, AgentState, Job, JobState, Resources
from incl.proto.spec import load_spec


def record(agent_id: str, registered_at: float) -> AgentRecord:
    info = AgentInfo(agent_id=agent_id, hostname=agent_id, capacity=Resources(cpus=1, memory=1), instance_id=agent_id)
    return AgentRecord(info=info, state=AgentState.ALIVE, registered_at=registered_at, last_seen=registered_at)


def job(job_id: str) -> Job:
    return Job(id=job_id, spec=load_spec({"run": "true"}), user="u", state=JobState.QUEUED, submitted_at=0,
               updated_at=0)


def test_busy_agents_have_no_idle_time_and_idle_ones_count_from_their_last_attempt_or_registration() -> None:
    running = state.running(state.assign(job("j1"), "busy", 5), 1, 6, started_at=6)
    done = state.exited(state.running(state.assign(job("j2"), "done", 5), 1, 6, started_at=6), 1, 9, exit_code=0,
                        reason=None, cancelled=False, tail=[], ended_at=40.0)
    lost_then_moved = state.running(state.assign(state.lost(state.assign(job("j3"), "old", 5), 1, 30, "gone"),
                                                 "busy", 31), 2, 32, started_at=32)
    since = idle_since([record("busy", 1), record("done", 2), record("new", 3), record("old", 4)],
                       [running, done, lost_then_moved])
    assert since == {"busy": None, "done": 40.0, "new": 3, "old": 30}
