"""Placement, as a pure function: which queued job goes to which agent. No I/O here.

The queue is ordered by priority (higher first), then submit time. Each job goes to the agent with the most
free CPU among those whose free resources fit it (spreading load); a job that fits nowhere waits, with the
reason recorded, and smaller jobs behind it may still be placed.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from incl.proto.messages import Job, Resources
from incl.proto.spec import Resources as Wanted


class Slot(msgspec.Struct, kw_only=True):
    agent_id: str
    free: Resources
    runtimes: frozenset[str] = frozenset({"process"})


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    placements: list[tuple[str, str]]  # (job id, agent id)
    waiting: dict[str, str]  # job id -> why it is not placed


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


def order(queue: Iterable[Job]) -> list[Job]:
    return sorted(queue, key=lambda j: (-j.spec.priority, j.submitted_at, j.id))


def _describe(want: Wanted) -> str:
    parts = [f"{want.cpus:g} CPU"]
    if want.memory:
        parts.append(f"{want.memory / 1e9:.1f} GB memory")
    if want.gpus:
        parts.append(f"{want.gpus} {want.gpu_model or ''} GPU".replace("  ", " "))
    return ", ".join(parts)


def plan(queue: Iterable[Job], slots: list[Slot]) -> Plan:
    placements: list[tuple[str, str]] = []
    waiting: dict[str, str] = {}
    for job in order(queue):
        want = job.spec.resources
        candidates = [s for s in slots if fits(want, s.free)]
        if not candidates:
            waiting[job.id] = (
                f"waiting for an agent with {_describe(want)} free" if slots else "waiting for an agent to register"
            )
            continue
        best = max(candidates, key=lambda s: (s.free.gpus - want.gpus == 0, s.free.cpus, s.agent_id))
        best.free = subtract(best.free, want)
        placements.append((job.id, best.agent_id))
    return Plan(placements=placements, waiting=waiting)


def could_ever_fit(want: Wanted, shapes: Iterable[Resources]) -> bool:
    return any(fits(want, shape) for shape in shapes)
