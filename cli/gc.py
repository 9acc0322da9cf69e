"""`incl gc`: delete from the artifact store what no job, study or model needs any more (artifacts/gc.py)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import click

from incl.cli.output import console, handles_errors, plural, print_json, size
from incl.proto.spec import parse_duration

if TYPE_CHECKING:
    from incl.artifacts.gcroots import Roots
    from incl.artifacts.gcrun import Report


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.option("--dry-run", is_flag=True, help="Show what would go; delete nothing and record nothing.")
@click.option("--grace", callback=_duration, metavar="DURATION",
              help="Delete only what stayed unreferenced this long (default 24h).")
@click.option("--retention", callback=_duration, metavar="DURATION",
              help="Keep a finished job's code and outputs this long after it ended (default 30d).")
@click.option("--store", "store_url", metavar="URL", help="The store to collect (default: the controller's).")
@click.option("--keys", "show_keys", is_flag=True, help="List every key deleted.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def gc(ctx: click.Context, dry_run: bool, grace: float | None, retention: float | None, store_url: str | None,
       show_keys: bool, as_json: bool) -> None:
    """Delete store objects nothing references: those of jobs past their retention, after a grace period."""
    from incl.artifacts.config import GcConfig  # noqa: PLC0415 - lazy: the store's client
    from incl.artifacts.gcroots import kept_roots  # noqa: PLC0415
    from incl.artifacts.gcrun import collect  # noqa: PLC0415
    from incl.artifacts.store import open_store  # noqa: PLC0415
    from incl.bus.client import Client, resolve_url  # noqa: PLC0415 - lazy: nats, structlog

    defaults = GcConfig()
    config = GcConfig(grace=defaults.grace if grace is None else grace,
                      retention=defaults.retention if retention is None else retention)

    async def go() -> Report:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            url = store_url or await client.store_url()
            async with open_store(url) as store:
                async def records(now: float) -> Roots:  # called once the store is listed (see collect)
                    # Every user's links first: only a cluster admin may list them, and only one sees every job
                    # (anyone else's roots would miss the jobs they may not see, and delete those jobs' files).
                    shares = await client.shares(everyone=True)
                    jobs = await client.jobs()
                    studies = [s.study for s in await client.studies()]
                    return kept_roots(jobs, studies, now, config.retention, shares)

                return await collect(store, records, config=config, dry_run=dry_run, keys=show_keys)

    report = asyncio.run(go())
    if as_json:
        print_json(report)
        return
    _summary(report)


def _summary(report: Report) -> None:
    n = sum(report.deleted.values())
    verb = "would delete" if report.dry_run else "deleted"
    parts = ", ".join(plural(c, area.rstrip("s"), area) for area, c in sorted(report.deleted.items()))
    console.print(f"{verb} {plural(n, 'object')} ({size(report.deleted_bytes)})" + (f": {parts}" if parts else ""),
                  markup=False)
    console.print(f"kept {report.live:,} referenced, {report.young:,} recent; {report.candidates:,} unreferenced "
                  f"waiting out the grace period; took {report.seconds:.1f}s", markup=False)
    if report.spared:
        console.print(f"spared {plural(report.spared, 'object')} written again since the listing (a push reused them)",
                      markup=False)
    if report.missing:
        console.print(f"referenced but missing from the store: {', '.join(report.missing)}", markup=False)
    for key in report.keys:
        console.print(key, markup=False)
