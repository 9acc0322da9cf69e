"""Multi-node attempts as pure transitions (controller/gang.py) and gang placement (controller/scheduler.py):
all or nothing, the start barrier, the first cause of a stop, and the whole gang ending as that cause says."""

from __future__ import annotations

import pytest

from incl.controller import gang, scheduler, state
from incl.proto.messages import AgentInfo, Job, JobState, Resources
from incl.proto.spec import load_spec

S = JobState


def job(nodes: int = 3, **spec: object) -> Job:
    return Job(id="j1", spec=load_spec({"run": "x", "resources": {"nodes": nodes, "cpus": 1}, **spec}), user="ann",
               state=S.QUEUED, submitted_at=1.0, updated_at=1.0)


def info(agent_id: str, address: str | None = None) -> AgentInfo:
    return AgentInfo(agent_id=agent_id, hostname=agent_id, capacity=Resources(cpus=4, memory=2**33), address=address)


def assigned(nodes: int = 3, **spec: object) -> Job:
    return gang.assign(job(nodes, **spec), [info(f"a{k}", f"10.0.0.{k}") for k in range(nodes)], now=2.0)


def running(nodes: int = 3, **spec: object) -> Job:
    j = assigned(nodes, **spec)
    for k in range(nodes):
        j = gang.ready(j, 1, f"a{k}", 29500 if k == 0 else None, now=3.0)
    for k in range(nodes):
        j = gang.running(j, 1, f"a{k}", now=4.0, started_at=4.0 + k / 100)
    return j


def test_assign_puts_one_rank_on_each_agent_and_the_job_on_all_of_them() -> None:
    j = assigned()
    assert j.state is S.ASSIGNED and j.current is not None
    assert [(n.rank, n.agent_id, n.state) for n in j.current.nodes] == [(0, "a0", S.ASSIGNED), (1, "a1", S.ASSIGNED),
                                                                         (2, "a2", S.ASSIGNED)]
    assert j.current.agent_id == "a0" and gang.agents_of(j) == ["a0", "a1", "a2"]


def test_the_barrier_opens_only_when_every_rank_is_ready_with_the_env_torchrun_reads() -> None:
    j = assigned()
    j = gang.ready(j, 1, "a1", None, now=3.0)
    j = gang.ready(j, 1, "a0", 29500, now=3.0)
    assert j.state is S.STARTING and not gang.all_ready(j)
    j = gang.ready(j, 1, "a2", None, now=3.0)
    assert gang.all_ready(j)
    env = gang.start_env(j)
    assert env["MASTER_ADDR"] == "10.0.0.0" and env["MASTER_PORT"] == "29500" and env["NNODES"] == "3"
    assert env["INCL_NODE_IPS"] == "10.0.0.0,10.0.0.1,10.0.0.2" and env["INCL_RDZV_ENDPOINT"] == "10.0.0.0:29500"
    assert env["NPROC_PER_NODE"] == "1" and env["INCL_GPUS_PER_NODE"] == "0"


def test_running_once_every_rank_runs_and_succeeded_once_every_rank_succeeded() -> None:
    j = assigned()
    for k in range(3):
        j = gang.ready(j, 1, f"a{k}", 29500 if k == 0 else None, now=3.0)
    j = gang.running(j, 1, "a0", now=4.0, started_at=4.0)
    assert j.state is S.STARTING
    j = gang.running(j, 1, "a1", now=4.0, started_at=4.0)
    j = gang.running(j, 1, "a2", now=4.0, started_at=4.1)
    assert j.state is S.RUNNING and j.current is not None and j.current.started_at == 4.1
    for k in range(3):
        before = j
        j = gang.node_ended(j, 1, f"a{k}", 5.0, to=S.SUCCEEDED, exit_code=0)
        assert gang.to_stop(before, j) == []
    assert j.state is S.SUCCEEDED and j.exit_code == 0


def test_a_failing_rank_stops_the_others_and_the_attempt_fails_with_its_reason_once_all_ended() -> None:
    j = running()
    before = j
    j = gang.node_ended(j, 1, "a1", 5.0, to=S.FAILED, exit_code=3, reason="exit code 3")
    assert j.state is S.RUNNING and gang.to_stop(before, j) == ["a0", "a2"]  # stop the others, once
    assert gang.agents_of(j) == ["a0", "a2"]  # the failed rank's agent is free again
    again = gang.node_ended(j, 1, "a0", 5.5, to=S.CANCELLED, reason="cancelled")
    assert gang.to_stop(j, again) == []  # already stopping: no second round of cancels
    j = gang.node_ended(again, 1, "a2", 6.0, to=S.CANCELLED, reason="cancelled")
    assert j.state is S.FAILED and j.exit_code == 3 and "rank 1 (a1): exit code 3" in (j.reason or "")


def test_a_lost_agent_requeues_the_whole_gang_while_retry_allows() -> None:
    j = running(retry={"max_attempts": 2})
    j = gang.node_ended(j, 1, "a2", 5.0, to=S.LOST, reason="agent a2 stopped heartbeating")
    j = gang.node_ended(j, 1, "a0", 5.1, to=S.CANCELLED)
    j = gang.node_ended(j, 1, "a1", 5.2, to=S.CANCELLED)
    assert j.state is S.QUEUED and j.current is not None and j.current.state is S.LOST
    assert "stopped heartbeating" in (j.reason or "")


def test_a_spot_notice_on_one_node_preempts_the_gang_without_using_an_attempt() -> None:
    j = running(retry={"max_attempts": 1})
    j = gang.node_ended(j, 1, "a1", 5.0, to=S.PREEMPTED, reason="spot instance reclaimed")
    j = gang.node_ended(j, 1, "a0", 5.1, to=S.CANCELLED)
    j = gang.node_ended(j, 1, "a2", 5.2, to=S.CANCELLED)
    assert j.state is S.QUEUED and j.current is not None and j.current.state is S.PREEMPTED


def test_a_cancel_cancels_the_whole_gang() -> None:
    j = state.cancel(running(), now=5.0)
    for k in range(3):
        j = gang.node_ended(j, 1, f"a{k}", 6.0, to=S.CANCELLED)
    assert j.state is S.CANCELLED


def test_stale_and_repeated_rank_events_change_nothing() -> None:
    for port in (None, 0, 70000):  # rank 0 must name a port the others can reach
        with pytest.raises(state.IllegalTransition):
            gang.ready(assigned(), 1, "a0", port, now=3.0)
    j = running()
    with pytest.raises(state.IllegalTransition):
        gang.node_ended(j, 2, "a0", 5.0, to=S.FAILED)  # another attempt
    with pytest.raises(state.IllegalTransition):
        gang.node_ended(j, 1, "a9", 5.0, to=S.FAILED)  # an agent with no rank here
    ended = gang.node_ended(j, 1, "a0", 5.0, to=S.FAILED, exit_code=1)
    assert gang.node_ended(ended, 1, "a0", 5.5, to=S.FAILED, exit_code=1) is ended


def test_outputs_come_from_the_rank_the_spec_names() -> None:
    from incl.proto.messages import TreeRef
    j = running(outputs={"ranks": 2})
    for k in range(3):
        j = gang.node_ended(j, 1, f"a{k}", 5.0, to=S.SUCCEEDED, exit_code=0, outputs=TreeRef(digest=f"{k}" * 64))
    assert j.current is not None and j.current.outputs == TreeRef(digest="2" * 64)


def slots(n: int, cpus: float = 2) -> list[scheduler.Slot]:
    return [scheduler.Slot(agent_id=f"a{k}", free=Resources(cpus=cpus, memory=2**33)) for k in range(n)]


def test_a_gang_is_placed_whole_on_distinct_agents_or_not_at_all() -> None:
    plan = scheduler.plan([job(3)], slots(3))
    assert plan.gangs == [("j1", ["a0", "a1", "a2"])] and plan.placements == []
    plan = scheduler.plan([job(3)], slots(2), now=10.0)
    assert plan.gangs == [] and "waiting for 1 of 3 nodes" in plan.waiting["j1"]


def test_a_waiting_gang_holds_the_agents_it_could_use_for_a_while_then_lets_them_go() -> None:
    big = job(3)
    small = Job(id="j2", spec=load_spec({"run": "x", "resources": {"cpus": 1}}), user="bob", state=S.QUEUED,
                submitted_at=2.0, updated_at=2.0)
    held = scheduler.plan([big, small], slots(2), now=10.0, reserve_for=60.0)
    assert held.placements == [] and held.reserving == {"j1": 10.0} and "holding 2" in held.waiting["j1"]
    later = scheduler.plan([big, small], slots(2), now=80.0, reserved_since=held.reserving, reserve_for=60.0)
    assert later.placements in ([("j2", "a0")], [("j2", "a1")])
    assert later.reserving == {}


def test_agents_launched_for_a_waiting_gang_take_no_other_job() -> None:
    small = Job(id="j2", spec=load_spec({"run": "x", "resources": {"cpus": 1}}), user="bob", state=S.QUEUED,
                submitted_at=2.0, updated_at=2.0)
    plan = scheduler.plan([small], slots(2), held_for={"a0": "j1", "a1": "j1"})
    assert plan.placements == [] and "waiting" in plan.waiting["j2"]
    plan = scheduler.plan([job(2)], slots(2), held_for={"a0": "j1", "a1": "j1"})
    assert plan.gangs == [("j1", ["a0", "a1"])]
