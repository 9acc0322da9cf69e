"""The agent registry: registration, heartbeats and the liveness deadlines the controller owns."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import structlog
from msgspec import structs
from structlog.contextvars import bound_contextvars

from incl.controller import gang, pacing
from incl.controller.config import ControllerConfig
from incl.controller.jobs import Jobs
from incl.controller.liveness import Deadlines
from incl.controller.providers.base import Provider
from incl.controller.scheduler import Slot, subtract
from incl.controller.store import Records
from incl.proto import limits
from incl.proto.errors import BadRequest, Conflict
from incl.proto.messages import (
    AgentInterrupted,
    AgentRecord,
    AgentState,
    AgentView,
    HeartbeatReply,
    HeartbeatRequest,
    Job,
    JobRef,
    JobState,
    RegisterReply,
    RegisterRequest,
    Resources,
)
from incl.proto.telemetry import GpuTelemetry

log = structlog.get_logger()


def started_on(job: Job, agent_id: str) -> bool:
    """Whether the job's current attempt has started on this agent (it is no longer only in its queue)."""
    node = gang.node_of(job, agent_id)
    return (node.state if node is not None else job.state) is not JobState.ASSIGNED


def missing_attempts(before: dict[tuple[str, int], float], missing: set[tuple[str, int]],
                     now: float) -> dict[tuple[str, int], float]:
    """Since when each attempt in `missing` has been missing (pure): kept from `before`, `now` if new."""
    return {k: before.get(k, now) for k in missing}


class Agents:
    """`provider`: asked whether a silent agent's spot instance was reclaimed; `on_telemetry`: each heartbeat's
    GPU readings (the GPU watch); `on_beat`: each report (agent id, when, the interval it was given: metrics)."""

    def __init__(self, cfg: ControllerConfig, records: Records[AgentRecord], jobs: Jobs, provider: Provider,
                 on_telemetry: Callable[[GpuTelemetry], None] = lambda t: None,
                 on_beat: Callable[[str, float, float], None] = lambda agent_id, now, interval: None) -> None:
        self._cfg = cfg
        self.records = records
        self._jobs = jobs
        self._provider = provider
        self._on_telemetry = on_telemetry
        self._on_beat = on_beat
        self.telemetry: dict[str, GpuTelemetry] = {}  # agent id -> its last heartbeat's GPU readings
        self.interrupted: dict[str, float] = {}  # agent id -> when its spot instance goes (it had the notice)
        self.deadlines = Deadlines()
        self._pacing = cfg.pacing()
        self._rng = random.Random()
        self._running: dict[str, list[JobRef]] = {}
        self._last_seen: dict[str, float] = {}  # heartbeats stay in memory; the bucket holds registrations
        self._missing: dict[str, dict[tuple[str, int], float]] = {}  # agent -> attempt -> missing since
        self._waiting: dict[str, tuple[RegisterRequest, float]] = {}  # a new process refused while the old lived

    def restore(self, now: float) -> None:
        """After a controller restart, every agent that was alive gets a fresh deadline to report in: the
        longest one it may have been given."""
        alive = [rec.info.agent_id for rec in self.records if rec.state is AgentState.ALIVE]
        within = pacing.longest_deadline(self._pacing, len(alive))
        for agent_id in alive:
            self.deadlines.beat(agent_id, now, within)

    def _pace(self, agent_id: str, now: float) -> pacing.Pace:
        """The agent's next interval, deadline and lease, for the fleet as it is; its deadline starts now."""
        pace = pacing.pace(self._pacing, len(self.deadlines), self._rng.random())
        self.deadlines.beat(agent_id, now, pace.lost_after)
        self._on_beat(agent_id, now, pace.interval)
        return pace

    def alive(self) -> list[AgentRecord]:
        return [r for r in self.records if r.state is AgentState.ALIVE]

    def slots(self, on_agent: list[Job] | None = None) -> list[Slot]:
        """Each usable agent's free resources; `on_agent`: the jobs on agents, when the caller has them already."""
        slots = {r.info.agent_id: Slot(agent_id=r.info.agent_id, free=self._usable(r),
                                       runtimes=frozenset(r.info.runtimes), seals=r.info.seal_key is not None)
                 for r in self.alive() if r.info.agent_id not in self.interrupted}
        for job in self._jobs.on_agent() if on_agent is None else on_agent:
            for agent_id in gang.agents_of(job):  # each rank of a multi-node job holds one node's resources
                slot = slots.get(agent_id)
                if slot is not None:
                    slot.free = subtract(slot.free, job.spec.resources)
        return list(slots.values())

    def _usable(self, rec: AgentRecord) -> Resources:
        """Capacity less the GPUs that had a critical XID: the scheduler places no new work on them."""
        sick = self.telemetry.get(rec.info.agent_id)
        bad = len(sick.unhealthy()) if sick else 0
        return structs.replace(rec.info.capacity, gpus=max(0, rec.info.capacity.gpus - bad))

    def views(self) -> list[AgentView]:
        allocated = {s.agent_id: s.free for s in self.slots()}
        out = []
        for rec in sorted(self.records, key=lambda r: r.info.agent_id):
            free = allocated.get(rec.info.agent_id)
            used = None
            if free is not None:
                cap = rec.info.capacity
                used = structs.replace(cap, cpus=cap.cpus - free.cpus, memory=cap.memory - free.memory,
                                       gpus=cap.gpus - free.gpus)
            seen = self._last_seen.get(rec.info.agent_id, rec.last_seen)
            out.append(AgentView(record=structs.replace(rec, last_seen=seen),
                                 running=self._running.get(rec.info.agent_id, []), allocated=used,
                                 telemetry=self.telemetry.get(rec.info.agent_id)))
        return out

    def _stop_list(self, agent_id: str, running: list[JobRef]) -> list[JobRef]:
        """Attempts the agent runs that are no longer its own (requeued elsewhere, or finished)."""
        if not running:  # the common heartbeat: nothing to check, and no scan of the job records
            return []
        mine = {(j.id, j.current.number) for j in self._jobs.on_agent(agent_id) if j.current}
        return [r for r in running if (r.job_id, r.attempt) not in mine]

    async def register(self, req: RegisterRequest) -> RegisterReply:
        """A new agent, a restarted one (a new process: `instance` differs), or the same process registering
        again (after a controller restart or being declared lost). Only a restart loses what the new process
        does not run. A restart is accepted at once when it names the instance it replaces (it found it in the
        work dir it locked, so that process is dead); otherwise only once the previous process has missed its
        deadline: a second process with a live agent's id (or a forged register) is refused, costing nothing."""
        info, now = req.info, time.time()
        agent_id = info.agent_id
        if (why := limits.check_labels(info.labels)) is not None:
            raise BadRequest(why, field="labels")
        previous = self.records.get(agent_id)
        restart = previous is not None and previous.instance != req.instance
        replaces = previous is not None and req.previous_instance == previous.instance  # it holds the work dir
        if restart and not replaces and previous is not None and previous.state is AgentState.ALIVE \
                and agent_id in self.deadlines:
            self._waiting[agent_id] = (req, now)
            raise Conflict(f"agent id {agent_id!r} is held by a live agent process (instance {previous.instance!r}); "
                           f"a new process takes over once that one has been silent for "
                           f"{self._cfg.agent_lost_after:g}s", field="agent_id")
        self._waiting.pop(agent_id, None)
        running = {(r.job_id, r.attempt) for r in req.running}
        if restart:
            # Whatever the previous process ran that this one does not is gone. ASSIGNED attempts are kept:
            # their assignment is waiting in the agent's durable queue.
            await self._lose_unreported(agent_id, running, "agent restarted")
        record = AgentRecord(info=info, state=AgentState.ALIVE, last_seen=now, instance=req.instance,
                             registered_at=now if restart or previous is None else previous.registered_at)
        await self.records.put(record)
        pace = self._pace(agent_id, now)
        self._last_seen[agent_id] = now
        self._running[agent_id] = list(req.running)
        log.info("agent_registered", agent_id=agent_id, hostname=info.hostname, cpus=info.capacity.cpus,
                 gpus=info.capacity.gpus, running=len(req.running), restart=restart)
        self._jobs.kick()
        return RegisterReply(heartbeat_interval=pace.interval,
                             stop=self._stop_list(agent_id, req.running), store_url=self._cfg.store_url,
                             lease=pace.lease)

    async def _lose_unreported(self, agent_id: str, running: set[tuple[str, int]], why: str) -> None:
        on_agent = {(j.id, j.current.number): j for j in self._jobs.on_agent(agent_id) if j.current}
        gone = {k for k, j in on_agent.items() if started_on(j, agent_id) and k not in running}
        if gone:
            await self._jobs.agent_lost(agent_id, why, keep=set(on_agent) - gone)

    async def heartbeat(self, req: HeartbeatRequest) -> HeartbeatReply:
        rec = self.records.get(req.agent_id)
        interval = self._cfg.heartbeat_interval
        if rec is not None and rec.instance != req.instance:
            log.warning("agent_superseded", agent_id=req.agent_id, instance=req.instance, current=rec.instance)
            return HeartbeatReply(heartbeat_interval=interval, registered=False, superseded=True)
        if rec is None or rec.state is not AgentState.ALIVE or req.agent_id not in self.deadlines:
            return HeartbeatReply(heartbeat_interval=interval, registered=False)
        now = time.time()
        pace = self._pace(req.agent_id, now)
        self._last_seen[req.agent_id] = now
        self._running[req.agent_id] = list(req.running)
        if req.telemetry is not None:
            self.telemetry[req.agent_id] = req.telemetry
            self._on_telemetry(req.telemetry)
        await self._reconcile(req, now)
        return HeartbeatReply(heartbeat_interval=pace.interval, stop=self._stop_list(req.agent_id, req.running),
                              lease=pace.lease)

    async def _reconcile(self, req: HeartbeatRequest, now: float) -> None:
        """Attempts the controller has on this agent (started, so not waiting in its queue) that it neither
        runs nor reports ended: their exit event was lost. Missing past `attempt_missing_after`, they are LOST."""
        reported = {(r.job_id, r.attempt) for r in [*req.running, *req.ended]}
        started = {(j.id, j.current.number) for j in self._jobs.on_agent(req.agent_id)
                   if j.current and started_on(j, req.agent_id)}
        missing = missing_attempts(self._missing.get(req.agent_id, {}), started - reported, now)
        self._missing[req.agent_id] = missing
        overdue = {k for k, since in missing.items() if now - since >= self._cfg.attempt_missing_after}
        if overdue:
            log.warning("attempts_missing", agent_id=req.agent_id, attempts=sorted(overdue))
            on_agent = {(j.id, j.current.number) for j in self._jobs.on_agent(req.agent_id) if j.current}
            await self._jobs.agent_lost(req.agent_id, f"agent {req.agent_id} no longer runs this attempt, and its "
                                        "exit was never reported", keep=on_agent - overdue)

    async def expire(self, now: float) -> None:
        for agent_id in self.deadlines.expired(now):
            with bound_contextvars(agent_id=agent_id):
                await self._lose(agent_id, now)

    async def _lose(self, agent_id: str, now: float) -> None:
        rec = self.records.get(agent_id)
        if rec is not None:
            await self.records.put(structs.replace(rec, state=AgentState.LOST, last_seen=now))
        log.warning("agent_lost", agent_id=agent_id, silent_for=round(now - self._last_seen.get(agent_id, now), 1))
        self._running.pop(agent_id, None)
        reclaimed = await self._reclaimed(agent_id, rec)
        why = (f"spot instance {rec.info.instance_id if rec else '?'} reclaimed" if reclaimed
               else f"agent {agent_id} stopped heartbeating")
        # A new process of this agent, refused while this one lived, takes over what it still runs (a
        # re-adopted container); everything else is lost.
        keep = {(r.job_id, r.attempt) for r in self._waiting_runs(agent_id, now)}
        await self._jobs.agent_lost(agent_id, why, keep=keep, preempted=reclaimed)
        # Per-agent memory goes with the agent: instances come and go for months, each with a new agent id.
        for cache in (self._missing, self.interrupted, self.telemetry, self._last_seen):
            cache.pop(agent_id, None)

    def _waiting_runs(self, agent_id: str, now: float) -> list[JobRef]:
        waiting = self._waiting.pop(agent_id, None)
        if waiting is None or now - waiting[1] > self._cfg.agent_lost_after:
            return []
        return waiting[0].running

    async def _reclaimed(self, agent_id: str, rec: AgentRecord | None) -> bool:
        """A silent agent on a spot instance that had its notice, or that the provider says was reclaimed."""
        if agent_id in self.interrupted:
            return True
        instance = rec.info.instance_id if rec is not None else None
        if rec is None or rec.info.market != "spot" or instance is None:
            return False
        try:
            return (await self._provider.spot_interrupted([instance])).get(instance, False)
        except Exception as exc:  # noqa: BLE001 - the provider is down: an ordinary loss, which is still requeued
            log.warning("reclaim_check_failed", agent_id=agent_id, error=repr(exc))
            return False

    def interrupted_notice(self, event: AgentInterrupted) -> None:
        """The agent's spot instance goes at `event.deadline`: place nothing new there."""
        self.interrupted[event.agent_id] = event.deadline
        log.warning("agent_interrupted", agent_id=event.agent_id, instance_id=event.instance_id,
                    action=event.action, in_s=round(event.deadline - time.time(), 1))
