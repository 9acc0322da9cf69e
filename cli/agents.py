"""`incl agents`: the agents the controller knows, their capacity and what they run."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import click
from rich.text import Text

from incl.cli.output import Column, ago, console, handles_errors, print_json, print_table, size
from incl.proto.messages import AgentView
from incl.proto.telemetry import GpuStats

if TYPE_CHECKING:
    pass

AGENT_COLUMNS = [Column("ID"), Column("HOST", drop=3, shrink=12), Column("STATE"), Column("CPUS", drop=1),
                 Column("MEMORY", drop=2), Column("GPUS", drop=1), Column("JOBS", drop=4),
                 Column("REGISTERED", drop=6), Column("LAST SEEN", drop=5)]

GPU_COLUMNS = [Column("AGENT"), Column("GPU"), Column("UTIL"), Column("MEM UTIL", drop=3), Column("MEMORY", drop=2),
               Column("POWER", drop=4), Column("TEMP", drop=5), Column("HEALTH", wrap=True),
               Column("JOBS", drop=1, shrink=12)]


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def agents(ctx: click.Context, as_json: bool) -> None:
    """List agents."""
    from incl.bus.client import Client, resolve_url  # noqa: PLC0415 - lazy: nats, structlog, boto

    async def go() -> list[AgentView]:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            return await client.agents()

    views = asyncio.run(go())
    if as_json:
        print_json(views)
        return
    if not views:
        console.print("no agents registered", markup=False)
        return
    print_table(AGENT_COLUMNS, [_agent_row(view) for view in views])
    gpus = [(v.record.info.agent_id, g) for v in views if v.telemetry for g in v.telemetry.gpus]
    if gpus:
        print_table(GPU_COLUMNS, [_gpu_row(agent_id, g) for agent_id, g in gpus], title="GPUs (last heartbeat)")


def _agent_row(view: AgentView) -> list[str | Text]:
    rec, cap, used = view.record, view.record.info.capacity, view.allocated
    return [rec.info.agent_id, rec.info.hostname, rec.state,
            f"{used.cpus if used else 0:g}/{cap.cpus:g}", f"{size(used.memory if used else 0)}/{size(cap.memory)}",
            f"{used.gpus if used else 0}/{cap.gpus}", str(len(view.running)), ago(rec.registered_at),
            ago(rec.last_seen)]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _gpu_row(agent_id: str, g: GpuStats) -> list[str | Text]:
    health = Text("ok") if g.healthy else Text(g.unhealthy_reason or "unhealthy", style="red")
    return [agent_id, str(g.index), _pct(g.util_gpu_mean), _pct(g.util_mem_mean),
            f"{size(g.memory_used)}/{size(g.memory_total)}", "-" if g.power_w is None else f"{g.power_w:.0f}W",
            "-" if g.temperature_c is None else f"{g.temperature_c:.0f}C", health, ", ".join(g.job_ids) or "-"]
