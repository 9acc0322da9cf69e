"""`incl admin audit`: who changed what, when and from where (the controller's audit trail), newest first."""

from __future__ import annotations

import asyncio
import datetime
import re
import time
from typing import TYPE_CHECKING

import click
from rich.text import Text

from incl.cli.output import Column, console, handles_errors, print_json, print_table

if TYPE_CHECKING:
    from incl.proto.audit import AuditEntry

AUDIT_COLUMNS = [Column("TIME"), Column("WHO"), Column("VERB"), Column("TARGET", shrink=24),
                 Column("OUTCOME"), Column("ORIGIN", drop=2, shrink=24), Column("REASON", drop=1, wrap=True)]
OUTCOME_STYLE = {"ok": "green", "refused": "red", "error": "yellow"}

_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float) -> float:
    """Unix time from `1h`, `30m`, `2d`, `90s`, `1w` (that long before `now`) or an ISO date and time
    (`2026-11-30T10:00`, `2026-11-30`; local time unless it names its zone). ValueError saying what is accepted."""
    text = text.strip()
    if ago := _AGO.fullmatch(text):
        return now - float(ago.group(1)) * _UNITS[ago.group(2)]
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (90s, 30m, 1h, 2d, 1w) nor a date and time "
                         "(2026-11-30T10:00)") from None


def _since(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_since(value, time.time())
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("audit")
@click.option("--user", help="Only what this user asked.")
@click.option("--since", callback=_since, help="Only since then: 1h, 30m, 2d, or 2026-11-30T10:00 (local time).")
@click.option("--verb", help="Only this verb (submit, jobs.cancel, studies.submit, models.alias, users.added...).")
@click.option("-n", "--limit", default=50, show_default=True, type=click.IntRange(min=1), help="The newest this many.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def audit(ctx: click.Context, user: str | None, since: float | None, verb: str | None, limit: int,
          as_json: bool) -> None:
    """Every state-changing request (submits, cancels, studies, models, users), with who, when and from where."""
    from incl.bus.client import Client, resolve_url  # noqa: PLC0415 - lazy: nats, structlog

    async def go() -> list[AuditEntry]:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            return await client.audit(user=user, since=since, verb=verb, limit=limit)

    entries = asyncio.run(go())
    if as_json:
        print_json(entries)
        return
    if not entries:
        console.print("no audit entries match", markup=False)
        return
    print_table(AUDIT_COLUMNS, [row(e) for e in entries], title="newest first")


def row(e: AuditEntry) -> list[str | Text]:
    who = e.who.name if e.who.kind == "user" else f"{e.who.kind}:{e.who.name}"
    origin = "-" if e.origin is None else e.origin.host + (f" ({e.origin.address})" if e.origin.address else "")
    return [datetime.datetime.fromtimestamp(e.at).strftime("%Y-%m-%d %H:%M:%S"), who, e.verb, e.target or "-",
            Text(e.outcome, style=OUTCOME_STYLE.get(e.outcome, "white")), origin, e.reason or ""]
