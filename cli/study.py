"""`incl study ls|show|stop`: HPO studies (a spec with `hpo:`, submitted with `incl submit`), whose trials are jobs."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from incl.cli.logs import number, sparkline
from incl.cli.output import Column, ago, console, duration, handles_errors, print_json, print_table, state
from incl.proto.hpo import Choice, Hpo, Pruner
from incl.proto.studies import GetStudyReply, Study, StudyState, StudySummary, TrialState, TrialView

if TYPE_CHECKING:
    pass

LS_COLUMNS = [Column("ID"), Column("NAME", drop=2, shrink=12), Column("USER", drop=4, shrink=8), Column("STATE"),
              Column("TRIALS", justify="right"), Column("BY STATE", drop=5), Column("BEST", justify="right"),
              Column("BEST TRIAL", drop=3, justify="right"), Column("GPU-H", drop=6, justify="right"),
              Column("AGE", drop=7)]

TRIAL_COLUMNS = [Column("#", justify="right"), Column("STATE"), Column("VALUE", justify="right"),
                 Column("PARAMS", wrap=True), Column("DURATION", drop=2), Column("JOB", drop=3),
                 Column("REASON", drop=1, wrap=True)]

DONE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)  # a trial that has ended, however
BY_STATE_ORDER = (TrialState.RUNNING, TrialState.WAITING, *DONE)
BAR_WIDTH = 24  # the longest importance bar


def choice(value: Choice) -> str:
    """A parameter's value, short: floats to 4 significant digits (`0.0031`), the rest as written."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None or isinstance(value, bool):  # as the spec's YAML spells them
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def params_cell(params: dict[str, Choice]) -> str:
    return " ".join(f"{name}={choice(value)}" for name, value in params.items())


def trials_cell(summary: StudySummary) -> str:
    """Ended trials of the study's total: `12/50`."""
    done = sum(summary.counts.get(s, 0) for s in DONE)
    hpo = summary.study.spec.hpo
    return f"{done}/{hpo.trials if hpo else '?'}"


def by_state_cell(counts: dict[str, int]) -> str:
    """`3 running, 9 complete, 2 pruned`: each state that has trials, in a fixed order."""
    known = [(s.value, counts.get(s, 0)) for s in BY_STATE_ORDER]
    other = [(name, n) for name, n in sorted(counts.items()) if name not in TrialState.__members__]
    return ", ".join(f"{n} {name.lower()}" for name, n in [*known, *other] if n) or "-"


def ls_rows(summaries: list[StudySummary]) -> list[list[str | Text]]:
    return [[s.study.id, s.study.spec.name or "-", s.study.user, state(s.study.state), trials_cell(s),
             by_state_cell(s.counts), number(s.best_value), "-" if s.best_trial is None else str(s.best_trial),
             f"{s.gpu_hours:.1f}", ago(s.study.created_at)] for s in summaries]


def print_ls(summaries: list[StudySummary], out: Console | None = None) -> None:
    out = out or console
    if not summaries:
        out.print("no studies; submit one with `incl submit -f study.yaml` (a spec with an `hpo:` section)",
                  markup=False)
        return
    print_table(LS_COLUMNS, ls_rows(summaries), out=out)


# --- show -----------------------------------------------------------------------------------------------------


def pruner_text(pruner: Pruner) -> str:
    match pruner.type:
        case "none":
            return "none"
        case "median":
            return f"median (startup_trials {pruner.startup_trials}, min_step {pruner.min_step})"
        case _:
            top = "" if pruner.max_step is None else f", max_step {pruner.max_step}"
            return f"{pruner.type} (min_step {pruner.min_step}, reduction {pruner.reduction}{top})"


def budget_text(hpo: Hpo, used_gpu_hours: float) -> str:
    parts = [f"{hpo.trials} trials, {hpo.parallel} at once"]
    if hpo.budget.gpu_hours is not None:
        parts.append(f"{used_gpu_hours:.1f}/{hpo.budget.gpu_hours:g} GPU-hours")
    else:
        parts.append(f"{used_gpu_hours:.1f} GPU-hours used")
    if hpo.budget.wall is not None:
        parts.append(f"wall {duration(hpo.budget.wall)}")
    return ", ".join(parts)


def header_rows(summary: StudySummary) -> list[tuple[str, str | None]]:
    study = summary.study
    hpo = study.spec.hpo
    rows: list[tuple[str, str | None]] = [("user", study.user), ("run", study.spec.run)]
    if hpo is not None:
        rows += [("metric", f"{hpo.metric} ({hpo.direction}, objective {hpo.objective})"),
                 ("sampler", f"{hpo.sampler} (seed {study.seed})"), ("pruner", pruner_text(hpo.pruner)),
                 ("budget", budget_text(hpo, summary.gpu_hours))]
    rows += [("trials", f"{trials_cell(summary)} ended: {by_state_cell(summary.counts)}"),
             ("reason", study.reason),
             ("stopping", "running trials are cancelled" if study.cancel_running else None),
             ("submitted", ago(study.created_at)), ("ended", ago(study.ended_at) if study.ended_at else None)]
    return rows


def trial_duration(trial: TrialView, now: float) -> str:
    if trial.started_at is None:
        return "-"
    return duration((trial.ended_at or now) - trial.started_at)


def trial_reason(trial: TrialView) -> str:
    if trial.state not in (TrialState.FAIL, TrialState.PRUNED):
        return ""
    if trial.reason:
        return trial.reason
    return f"at step {trial.last_step}" if trial.state is TrialState.PRUNED and trial.last_step is not None else ""


def trial_rows(trials: list[TrialView], best: int | None, now: float) -> list[list[str | Text]]:
    return [[Text(str(t.number), style="bold green" if t.number == best else ""), state(t.state), number(t.value),
             params_cell(t.params), trial_duration(t, now), t.job_id or "-", trial_reason(t)]
            for t in sorted(trials, key=lambda t: t.number)]


def importance_bars(importances: dict[str, float]) -> Padding:
    """One bar per parameter, the most important first, the longest `BAR_WIDTH` wide."""
    grid = Table.grid(padding=(0, 0, 0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True, justify="right")
    top = max(importances.values(), default=0.0)
    for name, value in sorted(importances.items(), key=lambda kv: -kv[1]):
        width = round(value / top * BAR_WIDTH) if top > 0 else 0
        grid.add_row(Text(name), Text("█" * width or "▏", style="cyan"), f"{value:.2f}")
    return Padding(grid, (0, 0, 0, 2), expand=False)


def print_show(reply: GetStudyReply, out: Console | None = None, now: float | None = None) -> None:
    out = out or console
    now = time.time() if now is None else now
    summary = reply.summary
    study = summary.study
    out.print(Text.assemble((study.id, "bold"), " ", study.spec.name or "", "  ", state(study.state)))
    fields = Table.grid(padding=(0, 0, 0, 2))  # a long value wraps in its own column, not under the keys
    fields.add_column(min_width=10, no_wrap=True)
    fields.add_column(overflow="fold")
    for key, value in header_rows(summary):
        if value:
            fields.add_row(key, Text(value))
    out.print(fields)
    if not reply.trials:
        out.print("no trials yet", markup=False)
        return
    print_table(TRIAL_COLUMNS, trial_rows(reply.trials, summary.best_trial, now), title="trials", out=out)
    best = next((t for t in reply.trials if t.number == summary.best_trial), None)
    if best is not None:
        metric = study.spec.hpo.metric if study.spec.hpo else "value"
        out.print(Text.assemble(("best", "bold"), f": trial {best.number}  {metric}={number(best.value)}  ",
                                params_cell(best.params), f"  ({best.job_id or 'no job'})"))
    if reply.best_so_far:
        out.print(Text.assemble(("best so far", "bold"), ": ", sparkline(reply.best_so_far),
                                f"  {number(reply.best_so_far[0])} -> {number(reply.best_so_far[-1])} "
                                f"over {len(reply.best_so_far)} trials"))
    if reply.importances:
        out.print(Text("parameter importances", style="bold"))
        out.print(importance_bars(reply.importances))


def stop_message(study: Study) -> str:
    match study.state:
        case StudyState.STOPPING:
            running = "are being cancelled" if study.cancel_running else "finish first"
            return f"{study.id} is stopping: no new trials; its running trials {running}"
        case StudyState.STOPPED:
            return f"{study.id} stopped"
        case _:
            return f"{study.id} is {study.state.lower()}" + (f": {study.reason}" if study.reason else "")


# --- commands ---------------------------------------------------------------------------------------------------


@click.group()
def study() -> None:
    """HPO studies: submit one with `incl submit -f study.yaml` (a spec with an `hpo:` section)."""


@study.command("ls")
@click.option("--user", help="Only this user's studies.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def ls(ctx: click.Context, user: str | None, as_json: bool) -> None:
    """List studies, their progress and best value.

    Each with its trials ended (of the total) and by state, its best value and trial, and GPU-hours used."""
    from incl.bus.client import Client, resolve_url  # noqa: PLC0415 - lazy: nats, structlog, boto

    async def go() -> list[StudySummary]:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            return await client.studies(user)

    summaries = asyncio.run(go())
    if as_json:
        print_json(summaries)
        return
    print_ls(summaries)


@study.command()
@click.argument("study_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def show(ctx: click.Context, study_id: str, as_json: bool) -> None:
    """Show a study's trials, best and importances.

    Its settings, every trial (parameters, value, duration, job), the best one, a sparkline of the best value so
    far, and parameter importances."""
    from incl.bus.client import Client, resolve_url  # noqa: PLC0415 - lazy: nats, structlog, boto

    async def go() -> GetStudyReply:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            return await client.study(study_id)

    reply = asyncio.run(go())
    if as_json:
        print_json(reply)
        return
    print_show(reply)


@study.command()
@click.argument("study_id")
@click.option("--cancel", is_flag=True, help="Also cancel the trials running now (default: they finish).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def stop(ctx: click.Context, study_id: str, cancel: bool, as_json: bool) -> None:
    """Stop a study: it starts no new trials.

    Its running trials finish; with --cancel, they are cancelled too."""
    from incl.bus.client import Client, resolve_url  # noqa: PLC0415 - lazy: nats, structlog, boto

    async def go() -> Study:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            return await client.stop_study(study_id, cancel=cancel)

    result = asyncio.run(go())
    if as_json:
        print_json(result)
        return
    console.print(stop_message(result), markup=False, highlight=False)
