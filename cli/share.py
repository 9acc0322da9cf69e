"""`incl share`: read-only links to a job's output, an outputs folder or a model version, that anyone may open in
a browser until they expire or are revoked.

    incl share JOB[:PATH] [--expires 24h] [--json]     a file or folder of the job's outputs (no PATH: all of them)
    incl share model NAME:vN [--expires 7d] [--json]   a model version (NAME@alias: the version it names now)
    incl share ls [--json]                             the links you made, and whether each still opens
    incl share --revoke ID                             the link stops opening at once

The link is the web UI's address (`--web-url`, $INCL_WEB_URL, else the web UI running here: `incl web --url`)
followed by /s/<id>.<signature>; it is printed alone on stdout.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import click

from incl.cli.output import Column, console, err_console, fail, handles_errors, plural, print_json, print_table, size
from incl.proto.errors import BadRequest
from incl.proto.registry import parse_ref
from incl.proto.shares import CreateShareReply, Share, ShareTarget, parse_duration

if TYPE_CHECKING:
    from incl.bus.client import Client

T = TypeVar("T")

LS_COLUMNS = [Column("ID"), Column("KIND", drop=3), Column("TARGET", shrink=20), Column("STATE"),
              Column("EXPIRES", drop=2), Column("SIZE", justify="right", drop=1)]


def _with_client(ctx: click.Context, call: Callable[[Client], Awaitable[T]]) -> T:
    from incl.bus.client import Client, resolve_url  # noqa: PLC0415 - lazy: nats, structlog, boto

    async def go() -> T:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            return await call(client)

    return asyncio.run(go())


def web_url(explicit: str | None) -> str:
    from incl.cli.web import running_url  # noqa: PLC0415

    url = explicit or os.environ.get("INCL_WEB_URL") or running_url()
    if not url:
        fail("no web UI to make a link on: pass --web-url https://... (its public address), set $INCL_WEB_URL, "
             "or start one here with `incl up` or `incl web`")
    return str(url).rstrip("/")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))


def target_of(args: tuple[str, ...]) -> tuple[ShareTarget, str | None]:
    """What `incl share` was given: JOB[:PATH], or `model NAME:vN|NAME@alias` (then the alias, to resolve)."""
    if args[0] == "model":
        if len(args) != 2:
            raise BadRequest("incl share model NAME:vN (or NAME@alias)")
        ref = parse_ref(args[1])
        return ShareTarget(model=ref.name, version=ref.version), args[1]
    if len(args) != 1:
        raise BadRequest("incl share JOB[:PATH], incl share model NAME:vN, incl share ls or incl share --revoke ID")
    job_id, _, path = args[0].partition(":")
    return ShareTarget(job_id=job_id, path=path), None


def _row(s: Share, now: float) -> list[str]:
    return [s.id, s.kind, str(s.target), s.state(now), _when(s.expires_at), size(s.bytes)]


@click.command()
@click.argument("what", nargs=-1)
@click.option("--expires", help="How long the link opens: 90s, 30m, 24h, 7d, 2w (default 7d).")
@click.option("--revoke", "revoke_id", metavar="ID", help="Revoke the share ID: its link stops opening at once.")
@click.option("--web-url", "web_url_opt", help="The web UI's public address, for the link (default: "
              "$INCL_WEB_URL, else the one running here).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def share(ctx: click.Context, what: tuple[str, ...], expires: str | None, revoke_id: str | None,
          web_url_opt: str | None, as_json: bool) -> None:
    """A read-only link to JOB[:PATH] (a file or folder of its outputs) or to `model NAME:vN`, for anyone with it
    and no INCL account; `incl share ls` lists yours, `incl share --revoke ID` ends one."""
    if revoke_id is not None:
        if what:
            raise BadRequest("--revoke takes a share id alone")
        revoked = _with_client(ctx, lambda c: c.revoke_share(revoke_id))
        if as_json:
            print_json(revoked)
        else:
            click.echo(f"revoked {revoked.id} ({revoked.target}): its link no longer opens")
        return
    if not what:
        raise BadRequest("what to share: incl share JOB[:PATH], incl share model NAME:vN; or incl share ls")
    if what == ("ls",):
        shares = _with_client(ctx, lambda c: c.shares())
        if as_json:
            print_json(shares)
            return
        now = time.time()
        print_table(LS_COLUMNS, [_row(s, now) for s in shares], title=plural(len(shares), "share link"))
        return
    target, alias = target_of(what)
    seconds = parse_duration(expires) if expires is not None else None
    base = web_url(web_url_opt)

    async def make(client: Client) -> CreateShareReply:
        chosen = target
        if chosen.model is not None and chosen.version is None:  # NAME or NAME@alias: the version it names now
            number = (await client.model(parse_ref(str(alias)))).version.version
            chosen = ShareTarget(model=chosen.model, version=number)
        return await client.create_share(chosen, seconds)

    made = _with_client(ctx, make)
    url = f"{base}/s/{made.token}"
    if as_json:
        print_json({"url": url, "share": made.share})
        return
    s = made.share
    console.print(url, markup=False, highlight=False, soft_wrap=True)
    err_console.print(f"{s.kind} {s.target}: {plural(s.files, 'file')}, {size(s.bytes)}; opens until "
                      f"{_when(s.expires_at)} (revoke: incl share --revoke {s.id})", markup=False, highlight=False)
