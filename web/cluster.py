"""The Cluster page's view: the agents with their GPUs' last readings, the jobs whose GPUs sit idle, and quota.

Agents and quota are one request each. Which jobs are idle only the controller's idle monitor knows, and it says
so per job (`GetJobReply.gpu_idle_since`): the server asks for the jobs running on agents that have GPUs (a CPU
job is never idle by that measure), at most `reads` at a time, so a cluster without GPUs costs no extra request.
"""

from __future__ import annotations

import asyncio
import time

import msgspec

from incl.bus.client import Client
from incl.proto import errors
from incl.proto.messages import AgentView, Job, QuotaLine
from incl.proto.telemetry import GpuStats


class Gpu(msgspec.Struct, frozen=True):
    index: int
    model: str | None
    util: float | None  # percent, mean over the last heartbeat's window
    mem_util: float | None
    memory_used: int | None
    memory_total: int | None
    power_w: float | None
    temperature_c: float | None
    healthy: bool
    reason: str | None
    jobs: list[str]


class Agent(msgspec.Struct, frozen=True):
    id: str
    hostname: str
    state: str
    provider: str
    instance_id: str | None
    instance_type: str | None
    market: str | None  # spot or on-demand; None off the cloud
    zone: str | None
    registered_at: float
    last_seen: float
    cpus: float
    memory: int | None
    gpus: int
    gpu_model: str | None
    used_cpus: float
    used_memory: int
    used_gpus: int
    jobs: list[str]
    gpu_stats: list[Gpu]
    telemetry_at: float | None  # the end of the readings' window


class Idle(msgspec.Struct, frozen=True):
    job_id: str
    name: str
    user: str
    agent_id: str | None
    since: float
    gpu_util: float | None


class Cluster(msgspec.Struct, frozen=True):
    now: float
    agents: list[Agent]
    idle: list[Idle]
    quota: list[QuotaLine]


def _gpu(g: GpuStats, model: str | None) -> Gpu:
    return Gpu(index=g.index, model=model, util=g.util_gpu_mean, mem_util=g.util_mem_mean, memory_used=g.memory_used,
               memory_total=g.memory_total, power_w=g.power_w, temperature_c=g.temperature_c, healthy=g.healthy,
               reason=g.unhealthy_reason, jobs=g.job_ids)


def agent(view: AgentView) -> Agent:
    rec, info, used = view.record, view.record.info, view.allocated
    models = {g.index: g.model for g in info.gpus}
    stats = [_gpu(g, models.get(g.index)) for g in view.telemetry.gpus] if view.telemetry else []
    return Agent(id=info.agent_id, hostname=info.hostname, state=str(rec.state), provider=info.provider,
                 instance_id=info.instance_id, instance_type=info.instance_type, market=info.market, zone=info.zone,
                 registered_at=rec.registered_at, last_seen=rec.last_seen, cpus=info.capacity.cpus,
                 memory=info.capacity.memory, gpus=info.capacity.gpus,
                 gpu_model=info.capacity.gpu_model or next((g.model for g in info.gpus if g.model), None),
                 used_cpus=used.cpus if used else 0.0, used_memory=(used.memory or 0) if used else 0,
                 used_gpus=used.gpus if used else 0, jobs=[ref.job_id for ref in view.running],
                 gpu_stats=stats, telemetry_at=view.telemetry.end if view.telemetry else None)


async def _idle(client: Client, job_id: str, gate: asyncio.Semaphore) -> Idle | None:
    async with gate:
        try:
            reply = await client.job_reply(job_id)
        except errors.NotFound:  # ended and collected since the agents were listed
            return None
    if reply.gpu_idle_since is None:
        return None
    job: Job = reply.job
    return Idle(job_id=job.id, name=job.spec.name or "", user=job.user,
                agent_id=job.current.agent_id if job.current else None, since=reply.gpu_idle_since,
                gpu_util=reply.gpu_util)


async def read(client: Client, reads: int) -> Cluster:
    views, quota = await asyncio.gather(client.agents(), client.quota())
    gpu_jobs = sorted({ref.job_id for v in views if v.record.info.capacity.gpus for ref in v.running})
    gate = asyncio.Semaphore(reads)
    idle = [i for i in await asyncio.gather(*(_idle(client, j, gate) for j in gpu_jobs)) if i is not None]
    return Cluster(now=time.time(), agents=sorted((agent(v) for v in views), key=lambda a: a.id),
                   idle=sorted(idle, key=lambda i: i.since), quota=quota)
