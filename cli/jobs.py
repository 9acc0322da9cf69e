"""`incl ls`, `incl show`, `incl cancel`: jobs as the controller knows them."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import click
import msgspec
from rich.console import Console
from rich.table import Table
from rich.text import Text

from incl.cli.output import Column, ago, console, duration, handles_errors, print_json, print_table, state
from incl.proto.messages import ON_AGENT, Attempt, GetJobReply, Job, JobState, ListJobsReply, Node, QuotaLine

if TYPE_CHECKING:
    pass


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


LS_COLUMNS = [Column("ID"), Column("NAME", drop=3, shrink=12), Column("USER", drop=5, shrink=8), Column("STATE"),
              Column("ATTEMPT", drop=7), Column("AGENT", drop=4, shrink=10), Column("SUBMITTED", drop=8),
              Column("RUNTIME", drop=2), Column("GPU", drop=6), Column("REASON", wrap=True)]

TRIAL_COLUMN = Column("TRIAL", justify="right")  # `incl ls --study ID`: the trial's number in its study

ATTEMPT_COLUMNS = [Column("#"), Column("AGENT", drop=3, shrink=10), Column("INSTANCE", drop=5, shrink=12),
                   Column("MARKET", drop=4), Column("STATE"), Column("ASSIGNED", drop=8), Column("STARTED", drop=7),
                   Column("ENDED", drop=6), Column("RUNTIME", drop=2), Column("EXIT", drop=1),
                   Column("REASON", wrap=True)]

QUOTA_COLUMNS = [Column("KIND"), Column("NAME"), Column("GPUS IN USE", justify="right"),
                 Column("LIMIT", justify="right")]


@click.command()
@click.option("--status", "statuses", multiple=True, type=click.Choice([s.value for s in JobState],
              case_sensitive=False), help="Only jobs in this state (repeatable).")
@click.option("--user", help="Only this user's jobs.")
@click.option("--study", "study_id", metavar="ID", help="Only this study's trials (with a TRIAL column).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def ls(ctx: click.Context, statuses: tuple[str, ...], user: str | None, study_id: str | None, as_json: bool) -> None:
    """List jobs, oldest first."""
    from incl.bus.client import Client, resolve_url  # noqa: PLC0415 - lazy: nats, structlog, boto
    wanted = [JobState(s.upper()) for s in statuses] or None

    async def go() -> ListJobsReply:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            return await client.jobs_reply(wanted, user, study_id)

    reply = asyncio.run(go())
    jobs = reply.jobs
    if as_json:
        print_json([{**msgspec.to_builtins(j), "gpu_util": reply.gpu_util.get(j.id)} for j in jobs])
        return
    if not jobs:
        console.print("no jobs" + (" match" if wanted or user or study_id else "; submit one with `incl submit`"),
                      markup=False)
        return
    print_table(*ls_table(jobs, reply.gpu_util, trials=study_id is not None))


def ls_table(jobs: list[Job], gpu_util: dict[str, float], *,
             trials: bool = False) -> tuple[list[Column], list[list[str | Text]]]:
    """`incl ls`'s columns and rows; `trials`: a study's jobs, each with its trial number after its id."""
    rows: list[list[str | Text]] = [[job.id, job.spec.name or "-", job.user, state(job.state), attempt_cell(job),
             job.current.agent_id if job.current else "-", ago(job.submitted_at), duration(_runtime(job)),
             gpu_cell(job, gpu_util.get(job.id)), job.reason or ""] for job in jobs]
    if not trials:
        return LS_COLUMNS, rows
    for job, row in zip(jobs, rows, strict=True):
        row.insert(1, "-" if job.trial is None else str(job.trial.number))
    return [LS_COLUMNS[0], TRIAL_COLUMN, *LS_COLUMNS[1:]], rows


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def show(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show one job: its spec, state, every attempt, and the last lines of a failure."""
    from incl.bus.client import Client, resolve_url  # noqa: PLC0415 - lazy: nats, structlog, boto

    async def go() -> GetJobReply:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            return await client.job_reply(job_id)

    reply = asyncio.run(go())
    if as_json:
        print_json({**msgspec.to_builtins(reply.job), "gpu_util": reply.gpu_util,
                    "gpu_idle_since": reply.gpu_idle_since})
        return
    print_job(reply)


def print_job(reply: GetJobReply, out: Console | None = None) -> None:
    """`incl show`'s text: the job's fields, its attempts (a multi-node attempt with a row per rank under it), and
    the last lines of a failure."""
    out = out or console
    job, spec = reply.job, reply.job.spec
    out.print(Text.assemble((job.id, "bold"), " ", spec.name or "", "  ", state(job.state)))
    rows = [("user", job.user), ("run", spec.run), ("setup", spec.setup), ("workdir", spec.workdir),
            ("resources", f"{spec.resources.cpus:g} CPU, {spec.resources.gpus} GPU"
                          + (f", {spec.resources.memory / 1e9:.1f} GB" if spec.resources.memory else "")
                          + (f", {spec.resources.nodes} nodes" if spec.resources.nodes > 1 else "")),
            ("priority", str(spec.priority)), ("submitted", ago(job.submitted_at)),
            ("exit code", None if job.exit_code is None else str(job.exit_code)), ("reason", job.reason),
            ("cancel requested", "yes" if job.cancel_requested else None),
            ("gpu utilization", None if reply.gpu_util is None else f"{reply.gpu_util:.0f}%"),
            ("gpus idle since", None if reply.gpu_idle_since is None else ago(reply.gpu_idle_since))]
    fields = Table.grid(padding=(0, 0, 0, 2))  # a long value wraps in its own column, not under the keys
    fields.add_column(min_width=15, no_wrap=True)
    fields.add_column(overflow="fold")
    for key, value in rows:
        if value:
            fields.add_row(key, Text(value))
    out.print(fields)
    if job.attempts:
        attempts = [row for a in job.attempts
                    for row in [_attempt_row(job, a), *(_node_row(job, n) for n in a.nodes)]]
        print_table(_attempt_columns(job), attempts, title="attempts", out=out)
    last = job.current
    if last and last.tail and job.state is JobState.FAILED:
        out.print("last log lines:", style="bold", markup=False)
        for line in last.tail:
            out.print("  " + line, highlight=False, markup=False)


def _cloud(job: Job) -> bool:
    """Instance and market columns only where there are any."""
    return any(a.instance_id or any(n.instance_id for n in a.nodes) for a in job.attempts)


def _attempt_columns(job: Job) -> list[Column]:
    return [c for c in ATTEMPT_COLUMNS if _cloud(job) or c.header not in ("INSTANCE", "MARKET")]


def _instance(instance_id: str | None, instance_type: str | None) -> str:
    return f"{instance_id} ({instance_type})" if instance_id and instance_type else instance_id or "-"


def _attempt_row(job: Job, a: Attempt) -> list[str | Text]:
    runtime = (a.ended_at or time.time()) - a.started_at if a.started_at else None
    where = [_instance(a.instance_id, a.instance_type), a.market or "-"] if _cloud(job) else []
    if a.nodes:  # its ranks' rows say where each ran
        where = ["" for _ in where]
    agent = f"{len(a.nodes)} nodes" if a.nodes else a.agent_id
    return [str(a.number), agent, *where, state(a.state), ago(a.assigned_at), ago(a.started_at),
            ago(a.ended_at), duration(runtime), "-" if a.exit_code is None else str(a.exit_code), _why(a)]


def _why(a: Attempt) -> str:
    """The attempt's reason; a multi-node attempt's says which rank stopped it, and why."""
    if a.stopping is None:
        return a.reason or ""
    verb = "stopping" if a.state in ON_AGENT else "stopped"
    why = f"{verb}: {a.stopping.reason}"
    return why if not a.reason or a.reason in a.stopping.reason else f"{why}; {a.reason}"


def _node_row(job: Job, n: Node) -> list[str | Text]:
    """One rank of a multi-node attempt, under its attempt's row."""
    runtime = (n.ended_at or time.time()) - n.started_at if n.started_at else None
    where = [_instance(n.instance_id, n.instance_type), n.market or "-"] if _cloud(job) else []
    return [f"  rank {n.rank}", n.agent_id, *where, state(n.state), "", ago(n.started_at), ago(n.ended_at),
            duration(runtime), "-" if n.exit_code is None else str(n.exit_code), n.reason or ""]


@click.command()
@click.argument("job_id")
@click.pass_context
@handles_errors
def cancel(ctx: click.Context, job_id: str) -> None:
    """Cancel a job: SIGTERM to its processes, SIGKILL after the grace period."""
    from incl.bus.client import Client, resolve_url  # noqa: PLC0415 - lazy: nats, structlog, boto

    async def go() -> Job:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            return await client.cancel(job_id)

    job = asyncio.run(go())
    if job.state is JobState.CANCELLED:
        console.print(f"{job.id} cancelled", markup=False)
    else:
        console.print(f"{job.id} is being cancelled (it was {job.state})", markup=False)


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def quota(ctx: click.Context, as_json: bool) -> None:
    """GPUs each user and team holds now, against their quota."""
    from incl.bus.client import Client, resolve_url  # noqa: PLC0415 - lazy: nats, structlog, boto

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
    rows: list[list[str | Text]] = [
        [line.kind, line.name, _used_cell(line), "-" if line.limit is None else str(line.limit)] for line in lines]
    print_table(QUOTA_COLUMNS, rows)



def _used_cell(line: QuotaLine) -> Text:
    full = line.limit is not None and line.used >= line.limit
    return Text(str(line.used), style="red" if full else "")
