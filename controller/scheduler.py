"""Placement, as a pure function: which queued job goes to which agent. No I/O here.

The queue is ordered by priority class (higher first), then fairly between users (`quota.fair_order`), then
by submit time. A job whose user or team is at its GPU quota waits with that reason. Each other job goes to
the agent with the most free CPU among those whose free resources fit it (spreading load); a job that fits
nowhere waits, with the reason recorded, and smaller jobs behind it may still be placed.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from incl.controller import quota
from incl.proto.messages import AgentRecord, Job, Resources
from incl.proto.spec import Resources as Wanted


class Slot(msgspec.Struct, kw_only=True):
    agent_id: str
    free: Resources
    runtimes: frozenset[str] = frozenset({"process"})
    seals: bool = True  # the agent sent a sealing key: it can receive a job's secrets (incl.auth.sealing)


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    placements: list[tuple[str, str]]  # (job id, agent id)
    waiting: dict[str, str]  # job id -> why it is not placed
    gangs: list[tuple[str, list[str]]] = []  # a multi-node job -> its agents, rank 0 first
    reserving: dict[str, float] = {}  # a gang waiting at the head of its class -> since when it holds agents


def fits(want: Wanted, have: Resources) -> bool:
    return (
        want.cpus <= have.cpus + 1e-9
        and (want.memory or 0) <= have.memory
        and want.gpus <= have.gpus
        and (want.gpu_model is None or want.gpus == 0 or want.gpu_model == have.gpu_model)
    )


def subtract(have: Resources, want: Wanted) -> Resources:
    return msgspec.structs.replace(
        have, cpus=have.cpus - want.cpus, memory=have.memory - (want.memory or 0), gpus=have.gpus - want.gpus
    )


def add(have: Resources, want: Wanted) -> Resources:
    return msgspec.structs.replace(
        have, cpus=have.cpus + want.cpus, memory=have.memory + (want.memory or 0), gpus=have.gpus + want.gpus
    )


def _describe(want: Wanted) -> str:
    parts = [f"{want.cpus:g} CPU"]
    if want.memory:
        parts.append(f"{want.memory / 1e9:.1f} GB memory")
    if want.gpus:
        parts.append(f"{want.gpus} {want.gpu_model or ''} GPU".replace("  ", " "))
    return ", ".join(parts)


def _why_waiting(want: Wanted, runtime: str, slots: list[Slot], secrets: bool = False) -> str:
    if not slots:
        return "waiting for an agent to register"
    if secrets and not any(s.seals for s in slots):
        return "waiting for an agent that can receive secrets (none sent a sealing key: an older agent)"
    if not any(runtime in s.runtimes for s in slots):
        return "waiting for an agent with Docker (the job names an image)"
    return f"waiting for an agent with {_describe(want)} free"


def _gang(want: Wanted, runtime: str, slots: list[Slot], secrets: bool = False) -> tuple[list[Slot], str | None]:
    """`want.nodes` distinct agents that each fit one node (fullest GPU fit first, then most free CPU), or the
    ones that do and why the rest are missing."""
    fitting = sorted((s for s in slots if runtime in s.runtimes and fits(want, s.free) and (s.seals or not secrets)),
                     key=lambda s: (s.free.gpus - want.gpus != 0, -s.free.cpus, s.agent_id))
    if len(fitting) >= want.nodes:
        return fitting[: want.nodes], None
    missing = want.nodes - len(fitting)
    why = _why_waiting(want, runtime, slots, secrets).removeprefix("waiting for ")
    return fitting, f"waiting for {missing} of {want.nodes} nodes: no {why.replace('an agent', 'agent')}"


def plan(queue: Iterable[Job], slots: list[Slot], *, quotas: quota.QuotaConfig | None = None,
         running: Iterable[Job] = (), now: float = 0.0, reserved_since: dict[str, float] | None = None,
         reserve_for: float = 60.0, held_for: dict[str, str] | None = None) -> Plan:
    """`running`: the jobs holding resources now (they count against quotas). A multi-node job (a gang) starts
    only when every one of its nodes can (all or nothing). One that cannot, first in its priority class, holds
    the agents that fit it so that smaller jobs behind it do not take them, for at most `reserve_for` seconds
    since it began to (`reserved_since`, kept by the caller between passes); then it lets them go and waits as
    any job does, with the reason. `held_for`: agents whose instances were launched for a gang that still waits
    (agent id -> that job): only that job goes there."""
    reserved_since = reserved_since or {}
    held_for = held_for or {}
    everyone = slots
    reserving: dict[str, float] = {}
    gangs: list[tuple[str, list[str]]] = []
    held_classes: set[int] = set()
    cfg = quotas or quota.QuotaConfig()
    claims: dict[tuple[str, str | None, int | str | None, int], quota.Claim] = {}

    def claim_of(j: Job) -> quota.Claim:
        """A job's claim depends on these four only: a long queue from a few users resolves a few."""
        key = (j.user, j.spec.team, j.spec.priority, j.spec.resources.gpus * j.spec.resources.nodes)
        if (found := claims.get(key)) is None:
            found = claims[key] = quota.claim_of(cfg, j)
        return found

    held = quota.usage(claim_of(j) for j in running)
    jobs = {j.id: j for j in queue}
    queued = [quota.Queued(job_id=j.id, claim=claim_of(j), submitted_at=j.submitted_at) for j in jobs.values()]
    placements: list[tuple[str, str]] = []
    waiting: dict[str, str] = {}
    # Free resources only shrink during a pass: a single-node job that found no agent says why, and every later
    # one with the same request and runtime waits for the same reason (a long queue costs one check per shape).
    no_room: dict[tuple[float, int, int, str | None, str, bool], str] = {}
    for q in quota.fair_order(queued, held):
        job = jobs[q.job_id]
        if (why := quota.check(cfg, q.claim, held)) is not None:
            waiting[job.id] = f"waiting for quota: {why}"
            continue
        want = job.spec.resources
        runtime = "docker" if job.spec.image else "process"
        secrets = bool(job.spec.secrets)
        shape = (want.cpus, want.memory or 0, want.gpus, want.gpu_model, runtime, secrets)
        if want.nodes == 1 and shape in no_room:
            waiting[job.id] = no_room[shape]
            continue
        slots = [s for s in everyone if held_for.get(s.agent_id, job.id) == job.id] if held_for else everyone
        if want.nodes > 1:
            chosen, why = _gang(want, runtime, slots, secrets)
            if why is None:
                for slot in chosen:
                    slot.free = subtract(slot.free, want)
                held.add(q.claim)
                gangs.append((job.id, [s.agent_id for s in chosen]))
                continue
            waiting[job.id] = why
            rank = q.claim.rank
            since = reserved_since.get(job.id, now)
            if rank not in held_classes and chosen and now - since < reserve_for:
                held_classes.add(rank)
                reserving[job.id] = since
                for slot in chosen:  # held for the gang: nothing else goes there in this pass
                    slot.free = msgspec.structs.replace(slot.free, cpus=0.0, memory=0, gpus=0)
                waiting[job.id] = f"{why} (holding {len(chosen)} for it)"
            continue
        candidates = [s for s in slots if runtime in s.runtimes and fits(want, s.free) and (s.seals or not secrets)]
        if not candidates:
            waiting[job.id] = _why_waiting(want, runtime, slots, secrets)
            if not held_for:  # with agents held for a gang, another job sees other slots
                no_room[shape] = waiting[job.id]
            continue
        best = max(candidates, key=lambda s: (s.free.gpus - want.gpus == 0, s.free.cpus, s.agent_id))
        best.free = subtract(best.free, want)
        held.add(q.claim)
        placements.append((job.id, best.agent_id))
    return Plan(placements=placements, waiting=waiting, gangs=gangs, reserving=reserving)


def could_ever_fit(want: Wanted, shapes: Iterable[Resources]) -> bool:
    return any(fits(want, shape) for shape in shapes)


class Shapes:
    """Every machine shape a job could ever run on: each known agent's capacity, then the shapes that could come
    (the config's `provider_shapes`, what the provider could launch). Read live at each submit."""

    def __init__(self, agents: Iterable[AgentRecord], launchable: Iterable[Resources]) -> None:
        self._agents = agents
        self._launchable = list(launchable)

    def __call__(self) -> list[Resources]:
        return [r.info.capacity for r in self._agents] + self._launchable
