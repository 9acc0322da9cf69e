"""`incl ls`, `incl show`, `incl cancel`: jobs as the controller knows them."""

from __future__ import annotations

import asyncio
import time

import click
import msgspec
from rich.table import Table

from incl.cli.client import Client, resolve_url
from incl.cli.output import ago, console, duration, handles_errors, print_json, state
from incl.proto.messages import GetJobReply, Job, JobState, ListJobsReply, QuotaLine


def gpu_cell(job: Job, util: float | None) -> str:
    if not job.spec.resources.gpus:
        return "-"
    return f"{job.spec.resources.gpus}×" + ("" if util is None else f" {util:.0f}%")


def attempt_cell(job: Job) -> str:
    """The attempt number, and how many times a spot preemption sent the job to another instance."""
    cur = job.current
    if cur is None:
        return "-"
    recoveries = sum(a.state is JobState.PREEMPTED for a in job.attempts)
    return f"{cur.number}" + (f" ({recoveries} recovered)" if recoveries else "")


def _runtime(job: Job) -> float | None:
    cur = job.current
    if cur is None or cur.started_at is None:
        return None
    return (cur.ended_at or time.time()) - cur.started_at


@click.command()
@click.option("--status", "statuses", multiple=True, type=click.Choice([s.value for s in JobState],
              case_sensitive=False), help="Only jobs in this state (repeatable).")
@click.option("--user", help="Only this user's jobs.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def ls(ctx: click.Context, statuses: tuple[str, ...], user: str | None, as_json: bool) -> None:
    """List jobs, oldest first."""
    wanted = [JobState(s.upper()) for s in statuses] or None

    async def go() -> ListJobsReply:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            return await client.jobs_reply(wanted, user)

    reply = asyncio.run(go())
    jobs = reply.jobs
    if as_json:
        print_json([{**msgspec.to_builtins(j), "gpu_util": reply.gpu_util.get(j.id)} for j in jobs])
        return
    table = Table(box=None, header_style="bold")
    for col in ("ID", "NAME", "USER", "STATE", "ATTEMPT", "AGENT", "SUBMITTED", "RUNTIME", "GPU", "REASON"):
        table.add_column(col, overflow="fold" if col == "REASON" else "ellipsis", no_wrap=col != "REASON",
                         min_width=10 if col == "ID" else None)
    for job in jobs:
        cur = job.current
        table.add_row(job.id, job.spec.name or "-", job.user, state(job.state),
                      attempt_cell(job), cur.agent_id if cur else "-", ago(job.submitted_at),
                      duration(_runtime(job)), gpu_cell(job, reply.gpu_util.get(job.id)), job.reason or "")
    console.print(table)


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show one job: its spec, state, every attempt, and the last lines of a failure."""

    async def go() -> GetJobReply:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            return await client.job_reply(job_id)

    reply = asyncio.run(go())
    job = reply.job
    if as_json:
        print_json({**msgspec.to_builtins(job), "gpu_util": reply.gpu_util, "gpu_idle_since": reply.gpu_idle_since})
        return
    spec = job.spec
    console.print(f"[bold]{job.id}[/] {spec.name or ''}  {state(job.state)}", highlight=False)
    rows = [("user", job.user), ("run", spec.run), ("setup", spec.setup), ("workdir", spec.workdir),
            ("resources", f"{spec.resources.cpus:g} CPU, {spec.resources.gpus} GPU"
                          + (f", {spec.resources.memory / 1e9:.1f} GB" if spec.resources.memory else "")),
            ("priority", str(spec.priority)), ("submitted", ago(job.submitted_at)),
            ("exit code", None if job.exit_code is None else str(job.exit_code)), ("reason", job.reason),
            ("cancel requested", "yes" if job.cancel_requested else None),
            ("gpu utilization", None if reply.gpu_util is None else f"{reply.gpu_util:.0f}%"),
            ("gpus idle since", None if reply.gpu_idle_since is None else ago(reply.gpu_idle_since))]
    for key, value in rows:
        if value:
            console.print(f"  {key:<17}{value}", highlight=False)
    if job.attempts:
        table = Table(title="attempts", box=None, header_style="bold")
        cloud = any(a.instance_id for a in job.attempts)  # instance and market columns only where there are any
        for col in ("#", "AGENT", *(("INSTANCE", "MARKET") if cloud else ()), "STATE", "ASSIGNED", "STARTED",
                    "ENDED", "RUNTIME", "EXIT", "REASON"):
            table.add_column(col)
        for a in job.attempts:
            runtime = (a.ended_at or time.time()) - a.started_at if a.started_at else None
            instance = f"{a.instance_id} ({a.instance_type})" if a.instance_id and a.instance_type else a.instance_id
            where = (instance or "-", a.market or "-") if cloud else ()
            table.add_row(str(a.number), a.agent_id, *where, state(a.state), ago(a.assigned_at), ago(a.started_at),
                          ago(a.ended_at), duration(runtime), "-" if a.exit_code is None else str(a.exit_code),
                          a.reason or "")
        console.print(table)
    last = job.current
    if last and last.tail and job.state is JobState.FAILED:
        console.print("[bold]last log lines:[/]")
        for line in last.tail:
            console.print("  " + line, highlight=False, markup=False)


@click.command()
@click.argument("job_id")
@click.pass_context
@handles_errors
def cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a job: SIGTERM to its processes, SIGKILL after the grace period."""

    async def go() -> Job:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            return await client.cancel(job_id)

    job = asyncio.run(go())
    if job.state is JobState.CANCELLED:
        console.print(f"{job.id} cancelled")
    else:
        console.print(f"{job.id} is being cancelled (it was {job.state})")


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def quota(ctx: click.Context, as_json: bool) -> None:
    """GPUs each user and team holds now, against their quota."""

    async def go() -> list[QuotaLine]:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            return await client.quota()

    lines = asyncio.run(go())
    if as_json:
        print_json(lines)
        return
    if not lines:
        console.print("no quotas configured and no GPUs in use")
        return
    table = Table(box=None, header_style="bold")
    for col in ("KIND", "NAME", "GPUS IN USE", "LIMIT"):
        table.add_column(col)
    for line in lines:
        full = line.limit is not None and line.used >= line.limit
        used = f"[red]{line.used}[/]" if full else str(line.used)
        table.add_row(line.kind, line.name, used, "-" if line.limit is None else str(line.limit))
    console.print(table)
