"""`incl admin ...`: what an operator looks at when something went wrong."""

from __future__ import annotations

import asyncio
import datetime
from typing import TYPE_CHECKING

import click

from incl.cli import audit, users
from incl.cli.output import Column, console, handles_errors, plural, print_json, print_table, size
from incl.proto.messages import ListDeadLettersReply

if TYPE_CHECKING:
    pass

DEAD_COLUMNS = [Column("SEQ"), Column("WHEN", drop=2), Column("SOURCE", drop=1), Column("SUBJECT", drop=3, shrink=20),
                Column("SIZE", drop=4, justify="right"), Column("ERROR", wrap=True)]


@click.group()
def admin() -> None:
    """Operator commands."""


admin.add_command(users.user)
admin.add_command(audit.audit)


@admin.command("dead-letters")
@click.option("-n", "--limit", default=20, show_default=True, help="The newest this many.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def dead_letters(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Messages a daemon could not handle: parked (not retried into a crash loop), with the reason."""
    from incl.bus.client import Client, resolve_url  # noqa: PLC0415 - lazy: nats, structlog, boto

    async def go() -> ListDeadLettersReply:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            return await client.dead_letters(limit)

    reply = asyncio.run(go())
    if as_json:
        print_json(reply)
        return
    if not reply.letters:
        console.print("no dead letters", markup=False)
        return
    rows = [[str(v.seq), _when(v.letter.ts), v.letter.source, v.letter.subject, size(v.letter.size), v.letter.error]
            for v in reply.letters]
    print_table(DEAD_COLUMNS, rows, title=f"{plural(reply.total, 'dead letter')}, newest first")


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
