"""`incl agents`: the agents the controller knows, their capacity and what they run."""

from __future__ import annotations

import asyncio

import click
from rich.table import Table

from incl.cli.client import Client, resolve_url
from incl.cli.output import ago, console, handles_errors, print_json, size
from incl.proto.messages import AgentView


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def agents(ctx: click.Context, as_json: bool) -> None:
    """List agents."""

    async def go() -> list[AgentView]:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            return await client.agents()

    views = asyncio.run(go())
    if as_json:
        print_json(views)
        return
    table = Table(box=None, header_style="bold")
    for col in ("ID", "HOST", "STATE", "CPUS", "MEMORY", "GPUS", "JOBS", "REGISTERED", "LAST SEEN"):
        table.add_column(col)
    for view in views:
        rec, cap, used = view.record, view.record.info.capacity, view.allocated
        table.add_row(
            rec.info.agent_id, rec.info.hostname, rec.state,
            f"{used.cpus if used else 0:g}/{cap.cpus:g}", f"{size(used.memory if used else 0)}/{size(cap.memory)}",
            f"{used.gpus if used else 0}/{cap.gpus}", str(len(view.running)), ago(rec.registered_at),
            ago(rec.last_seen),
        )
    console.print(table)
    gpus = [(v.record.info.agent_id, g) for v in views if v.telemetry for g in v.telemetry.gpus]
    if gpus:
        table = Table(box=None, header_style="bold", title="GPUs (last heartbeat)")
        for col in ("AGENT", "GPU", "UTIL", "MEM UTIL", "MEMORY", "POWER", "TEMP", "HEALTH", "JOBS"):
            table.add_column(col)
        for agent_id, g in gpus:
            pct = lambda v: "-" if v is None else f"{v:.0f}%"  # noqa: E731
            table.add_row(agent_id, str(g.index), pct(g.util_gpu_mean), pct(g.util_mem_mean),
                          f"{size(g.memory_used)}/{size(g.memory_total)}",
                          "-" if g.power_w is None else f"{g.power_w:.0f}W",
                          "-" if g.temperature_c is None else f"{g.temperature_c:.0f}C",
                          "ok" if g.healthy else f"[red]{g.unhealthy_reason or 'unhealthy'}[/]",
                          ", ".join(g.job_ids) or "-")
        console.print(table)
