"""The provisioning loop: observe, diff (`reconcile.plan`, pure), apply. Runs only with a provider that
provisions (`Provider.provisions`); with any provider it adds each waiting job's last launch failure to its reason.

Observed state is read afresh each pass (instances by the cluster tag, agents from the registry, jobs from the
store), so a restarted controller picks up where it left off: an instance launched for an attempt is found by
its tags and never launched twice, and one it launched and forgot is terminated as an orphan or an idle one.
A gang's placement group outlives its instances only until the next pass after they are gone. `held` is the
last plan's instances of waiting gangs (for the scheduler: nothing else belongs on their agents).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping

import structlog

from incl.bus.daemon import wait_event
from incl.controller import reconcile
from incl.controller.agents import Agents
from incl.controller.jobs import Jobs
from incl.controller.providers.base import LaunchFailed, Provider
from incl.proto.messages import ON_AGENT, TERMINAL, AgentRecord, AgentState, Job

log = structlog.get_logger()


def idle_since(records: Iterable[AgentRecord], jobs: Iterable[Job],
               ended_on: Mapping[str, float] | None = None) -> dict[str, float | None]:
    """Per agent, when it last became empty (None while it runs something): the end of its last attempt, or
    its registration if it never ran one. One pass over the jobs; `ended_on`: when each agent's last attempt
    ended, of the jobs no longer in `jobs` too."""
    busy: set[str] = set()
    ended: dict[str, float] = dict(ended_on or {})
    for job in jobs:
        if job.state in ON_AGENT and job.current is not None:
            busy.add(job.current.agent_id)
        for a in job.attempts:
            if a.ended_at is not None:
                ended[a.agent_id] = max(ended.get(a.agent_id, 0.0), a.ended_at)
    return {r.info.agent_id: None if r.info.agent_id in busy else max(r.registered_at, ended.get(r.info.agent_id, 0.0))
            for r in records}


class Provisioner:
    def __init__(self, cfg: reconcile.ReconcileConfig, provider: Provider, jobs: Jobs, agents: Agents) -> None:
        self.cfg = cfg
        self._provider = provider
        self._jobs = jobs
        self._agents = agents
        self._launching: dict[tuple[str, int, int], asyncio.Task[None]] = {}
        self._landed: set[tuple[str, int]] = set()  # (job, attempt) of launches ended since this pass began
        self.failures: dict[str, str] = {}  # job id -> why its last launch failed (shown while it waits)
        self.held: dict[str, str] = {}  # instance id -> the waiting gang it was launched for (the last plan's)
        self._kick = asyncio.Event()
        self._waiting: set[str] = set()

    def kick(self) -> None:
        self._kick.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            while True:
                try:
                    await self.once(tg)
                except Exception as exc:  # noqa: BLE001 - EC2 unreachable, throttled: the next pass tries again
                    log.warning("reconcile_failed", error=repr(exc))
                await wait_event(self._kick, self.cfg.interval)
                self._kick.clear()

    def _demand(self) -> list[reconcile.Demand]:
        """Queued jobs the scheduler could not place: they need an instance."""
        waiting = self._jobs.waiting
        return [reconcile.demand_of(j, self.cfg) for j in self._jobs.queued() if j.id in waiting]

    def _registered(self, jobs: list[Job]) -> list[reconcile.RegisteredAgent]:
        cloud = [r for r in self._agents.records if r.info.instance_id is not None]
        since = idle_since(cloud, jobs, self._jobs.ended_on)
        return [reconcile.RegisteredAgent(agent_id=r.info.agent_id, instance_id=r.info.instance_id or "",
                                          alive=r.state is AgentState.ALIVE,
                                          running=0 if since[r.info.agent_id] is not None else 1,
                                          idle_since=since[r.info.agent_id])
                for r in cloud]

    async def once(self, tg: asyncio.TaskGroup) -> reconcile.Plan:
        self._landed.clear()  # a launch that ended before this describe is in it
        observed = await self._provider.describe(self.cfg.cluster)
        jobs = list(self._jobs.records)
        live = {j.id for j in jobs if j.state not in TERMINAL}
        # A group made for a launch in flight may have no instance yet: not the plan's to delete.
        groups = [g for g in await self._provider.placement_groups(self.cfg.cluster)
                  if g.launch_key() not in self._launching]
        launching = self._landed | {(job, attempt) for job, attempt, _ in self._launching}
        plan = reconcile.plan(self._demand(), observed, self._registered(jobs), self.cfg, time.time(),
                              live_jobs=live, groups=groups, launching=launching)
        self.held = plan.held
        if plan.terminations:
            for t in plan.terminations:
                log.warning("instance_terminating", instance_id=t.instance_id, reason=t.reason, detail=t.detail)
            await self._provider.terminate(self.cfg.cluster, [t.instance_id for t in plan.terminations])
        if plan.delete_groups:
            await self._provider.delete_placement_groups(self.cfg.cluster, plan.delete_groups)
        for launch in plan.launches:
            key = (launch.job_id, launch.attempt, launch.generation)
            if key not in self._launching:
                self._launching[key] = tg.create_task(self._launch(launch, key))
        return plan

    async def _launch(self, launch: reconcile.Launch, key: tuple[str, int, int]) -> None:
        try:
            got = await self._provider.launch(launch)
            self.failures.pop(launch.job_id, None)
            log.info("instance_launched", job_id=launch.job_id, attempt=launch.attempt,
                     instance_ids=[i.instance_id for i in got], instance_type=got[0].instance_type,
                     market=launch.market, zone=got[0].availability_zone, placement_group=got[0].placement_group)
        except LaunchFailed as exc:
            self.failures[launch.job_id] = str(exc)
            log.warning("launch_failed", job_id=launch.job_id, attempt=launch.attempt, error=str(exc))
        except Exception as exc:
            self.failures[launch.job_id] = f"launch failed: {exc!r}"
            log.exception("launch_error", job_id=launch.job_id)
        finally:
            self._launching.pop(key, None)
            self._landed.add(key[:2])
            self.kick()

    def waiting(self, waiting: dict[str, str]) -> dict[str, str]:
        """The scheduler's latest unplaced jobs: a new one starts a pass at once (not at the next interval).
        Returns their reasons, with the last launch failure of each job that has one."""
        if not waiting.keys() <= self._waiting:
            self.kick()
        self._waiting = set(waiting)
        return {job_id: f"{why}; {self.failures[job_id]}" if job_id in self.failures else why
                for job_id, why in waiting.items()}
