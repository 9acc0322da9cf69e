"""The provisioner's view of agents for the reconcile diff: which are busy, and since when the others idle."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from incl.controller import state
from incl.controller.providers.base import LaunchedInstance
from incl.controller.provision import Provisioner, idle_since
from incl.controller.reconcile import ReconcileConfig
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


async def test_a_launch_that_lands_while_a_pass_reads_the_provider_is_not_launched_again() -> None:
    """Pass 2 reads the provider while generation 0 of a gang is launching and gets an answer from before it
    landed (nothing tagged yet): the launch is over by the time pass 2 plans, and pass 2 still launches nothing."""
    gang = Job(id="g", spec=load_spec({"run": "true", "resources": {"gpus": 1, "nodes": 2}}), user="u",
               state=JobState.QUEUED, submitted_at=0, updated_at=0)
    jobs = SimpleNamespace(waiting={"g"}, queued=lambda: [gang], records=[gang], ended_on={})
    agents = SimpleNamespace(records=[])
    landed, reading = asyncio.Event(), asyncio.Event()
    launches: list[int] = []

    class Stale:
        async def describe(self, cluster: str) -> list[object]:
            if launches:  # pass 2: the answer predates the launch, which lands before the plan
                reading.set()
                await landed.wait()
            return []

        async def placement_groups(self, cluster: str) -> list[object]:
            return []

        async def launch(self, launch: object) -> list[LaunchedInstance]:
            launches.append(launch.generation)  # type: ignore[attr-defined]
            await reading.wait()
            landed.set()
            return [LaunchedInstance(instance_id=f"i-{r}", instance_type="g5.xlarge", market=launch.market,  # type: ignore[attr-defined]
                                     rank=r) for r in range(2)]

    prov = Provisioner(ReconcileConfig(cluster="c1"), Stale(), jobs, agents)  # type: ignore[arg-type]
    async with asyncio.TaskGroup() as tg:
        first = await prov.once(tg)
        await asyncio.sleep(0)  # the launch begins
        second = await prov.once(tg)
    assert [x.generation for x in first.launches] == [0] and second.launches == [] and launches == [0]
