"""`incl admin user add|remove|rotate|ls`: who may use the embedded stack, with what rights.

The registry and the credential files live under `$INCL_HOME` on the machine that runs the embedded NATS server
(`incl.auth`); a change re-renders the server's configuration and reloads the running server, so a removed user is
cut off at once (the server closes their connections) and a new one can connect now. Each change is then reported to
the controller, which records it in the audit trail (as asked by whoever these credentials name).
"""

from __future__ import annotations

import datetime

import click

from incl.cli.output import Column, console, err_console, handles_errors, print_json, print_table
from incl.proto.errors import InclError

USER_COLUMNS = [Column("KIND"), Column("NAME"), Column("TEAMS (* admin)", drop=2), Column("ADMIN", drop=1),
                Column("CREATED", drop=3), Column("PUBLIC KEY", drop=4, shrink=16)]


def _applied(reloaded: bool) -> str:
    return "the running server reloaded it" if reloaded else \
        "no embedded server runs; it applies at the next `incl up`"


@click.group("user")
def user() -> None:
    """Users of the embedded stack and their credentials."""


@user.command("add")
@click.argument("name")
@click.option("--team", "teams", multiple=True, help="A team the user belongs to (repeat for several): they see its "
              "jobs, logs, metrics and outputs.")
@click.option("--team-admin", "team_admin", multiple=True, metavar="TEAM",
              help="A team the user administers (repeat for several): a member who may also cancel its jobs.")
@click.option("--admin", is_flag=True, help="A cluster admin (may do anything).")
@click.pass_context
@handles_errors
def add(ctx: click.Context, name: str, teams: tuple[str, ...], team_admin: tuple[str, ...], admin: bool) -> None:
    """Create NAME's identity and write their credentials to a file (printed), to hand to them privately.
    A user sees and cancels their own jobs; a team's members see its jobs; its admins may cancel them."""
    from incl.auth import identities  # noqa: PLC0415 - lazy: its key library
    from incl.bus.client import incl_home  # noqa: PLC0415 - lazy: nats, structlog
    from incl.cli import stack  # noqa: PLC0415 - lazy
    home = incl_home()
    try:
        path = identities.add(home, identities.USER, name, teams=list(teams), team_admin=list(team_admin),
                              admin=admin)
    except ValueError as exc:
        raise InclError(str(exc)) from None
    console.print(f"user {name} added; credentials in {path} (mode 0600): give them to {name}, who runs "
                  f"`incl login --creds FILE`; {_applied(stack.reload_auth(home))}", markup=False, highlight=False)
    _report(ctx, "added", name, sorted(set(teams)), admin)


@user.command("remove")
@click.argument("name")
@click.pass_context
@handles_errors
def remove(ctx: click.Context, name: str) -> None:
    """Revoke NAME's credentials at once: the running server drops their connections and refuses new ones."""
    from incl.auth import identities  # noqa: PLC0415 - lazy: its key library
    from incl.bus.client import incl_home  # noqa: PLC0415 - lazy: nats, structlog
    from incl.cli import stack  # noqa: PLC0415 - lazy
    home = incl_home()
    if not identities.remove(home, identities.USER, name):
        raise InclError(f"no user {name}")
    console.print(f"user {name} removed; {_applied(stack.reload_auth(home))}", markup=False, highlight=False)
    _report(ctx, "removed", name, [], False)


@user.command("rotate")
@click.argument("name")
@click.pass_context
@handles_errors
def rotate(ctx: click.Context, name: str) -> None:
    """Give NAME a new key (a leaked credential file, a person who left a shared laptop, a routine change): the old
    file stops working at once; the new one is written where the old one was, to hand to NAME privately."""
    from incl.auth import identities  # noqa: PLC0415 - lazy: its key library
    from incl.bus.client import incl_home  # noqa: PLC0415 - lazy: nats, structlog
    from incl.cli import stack  # noqa: PLC0415 - lazy
    home = incl_home()
    try:
        path = identities.rotate(home, identities.USER, name)
    except ValueError as exc:
        raise InclError(f"no user {name}") from exc
    console.print(f"user {name} has a new key; credentials in {path} (mode 0600): give them to {name}, who runs "
                  f"`incl login --creds FILE`; the old ones are refused: {_applied(stack.reload_auth(home))}",
                  markup=False, highlight=False)
    user = identities.load(home).find(identities.USER, name)
    _report(ctx, "rotated", name, user.teams if user else [], bool(user and user.admin))


REPORT_TIMEOUT = 5.0  # seconds the controller is given to record a change


def _report(ctx: click.Context, change: str, name: str, teams: list[str], admin: bool) -> None:
    """Tell the controller, for its audit trail; the change is made either way, so a failure is a warning."""
    import asyncio  # noqa: PLC0415

    from incl.bus.client import Client, resolve_url  # noqa: PLC0415 - lazy: nats, structlog
    from incl.proto import subjects  # noqa: PLC0415

    verb = {"added": subjects.USERS_ADDED, "removed": subjects.USERS_REMOVED, "rotated": subjects.USERS_ROTATED}[change]

    async def go() -> None:
        async with Client(resolve_url(ctx.obj["nats_url"] if ctx.obj else None), timeout=REPORT_TIMEOUT) as client:
            await client.users_changed(verb, name, teams, admin)

    try:
        asyncio.run(go())
    except InclError as exc:
        err_console.print(f"warning: the change is not in the audit trail: {exc}", markup=False, highlight=False)


@user.command("ls")
@click.option("--json", "as_json", is_flag=True)
@handles_errors
def ls(as_json: bool) -> None:
    """Every identity allowed on the embedded stack: users, agents, the controller."""
    from incl.auth import identities  # noqa: PLC0415 - lazy: its key library
    from incl.bus.client import incl_home  # noqa: PLC0415 - lazy: nats, structlog
    registry = identities.load(incl_home())
    if as_json:
        print_json(registry.identities)
        return
    if not registry.identities:
        console.print("no identities yet (`incl up` makes the local ones)", markup=False)
        return
    order = {identities.USER: 0, identities.AGENT: 1, identities.CONTROLLER: 2}
    rows = [[i.kind, i.name, ",".join(t + ("*" if t in i.team_admin else "") for t in i.teams) or "-",
             "yes" if i.admin else "", _when(i.created_at), i.public_key]
            for i in sorted(registry.identities, key=lambda i: (order.get(i.kind, 3), i.name))]
    print_table(USER_COLUMNS, rows)


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else "-"
