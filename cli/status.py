"""`incl status`: the whole system at a glance. The NATS servers this machine reaches, the controller answering,
INCL's streams (replicas, bytes, leader), agents by state, the queue, the newest dead letters; and, when the
cluster is the stack `incl up` started here, each of its processes. Exits 1 when any part is missing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import click
import msgspec
from rich.table import Table
from rich.text import Text

from incl.cli import stack as stack_mod
from incl.cli.output import (
    Column,
    ago,
    console,
    duration,
    fail,
    handles_errors,
    plural,
    print_json,
    print_table,
    size,
    state,
)
from incl.proto.errors import Unavailable
from incl.proto.messages import DeadLetterView, JobState
from incl.proto.status import NatsServer, StatusReply, StreamStatus

if TYPE_CHECKING:
    pass

ERRORS_SHOWN = 5
STREAM_COLUMNS = [Column("STREAM"), Column("REPLICAS"), Column("MESSAGES", drop=2), Column("BYTES"),
                  Column("LEADER", drop=1, shrink=16)]


class Part(msgspec.Struct, frozen=True):
    """A process of the stack `incl up` started on this machine."""
    name: str
    pid: int
    alive: bool
    log: str


class Controller(msgspec.Struct, frozen=True):
    controller_id: str
    started_at: float
    role: str = "leader"  # or "standby"


class SystemStatus(msgspec.Struct, frozen=True, kw_only=True):
    nats_url: str
    nats: list[NatsServer] = []  # empty: NATS could not be reached (`problems` says why)
    controllers: list[Controller] = []
    streams: list[StreamStatus] = []
    agents: dict[str, int] = {}
    jobs: dict[str, int] = {}
    queued: int = 0
    dead_letters: int = 0
    errors: list[DeadLetterView] = []
    parts: list[Part] | None = None  # only for the stack `incl up` started here
    problems: list[str] = []


async def gather(url: str, parts: list[Part] | None) -> SystemStatus:
    """What NATS and the controller say, and what is missing."""
    from incl.bus.client import Client  # noqa: PLC0415 - lazy: nats, structlog, boto
    problems = []
    if parts is not None and (dead := [p.name for p in parts if not p.alive]):
        problems.append(f"not running: {', '.join(dead)}")
    servers: list[NatsServer] = []
    reply: StatusReply | None = None
    try:
        async with Client(url, timeout=5.0) as client:
            servers = client.servers()
            reply = await client.status(ERRORS_SHOWN)
    except Unavailable as exc:  # NATS unreachable (no servers), or no controller answering
        problems.append(str(exc))
    if reply is None:
        return SystemStatus(nats_url=url, nats=servers, parts=parts, problems=problems)
    controllers = [Controller(m.controller_id, m.started_at, "leader" if m.leader else "standby")
                   for m in reply.controllers] or [Controller(reply.controller_id, reply.started_at)]
    return SystemStatus(nats_url=url, nats=servers, controllers=controllers,
                        streams=reply.streams, agents=reply.agents, jobs=reply.jobs,
                        queued=reply.jobs.get(JobState.QUEUED, 0), dead_letters=reply.dead_letters,
                        errors=reply.errors, parts=parts, problems=problems)


def local_parts(url: str) -> list[Part] | None:
    """The processes of the stack `incl up` started here, when `url` is that stack's."""
    from incl.bus.client import incl_home  # noqa: PLC0415 - lazy: nats, structlog, boto
    existing = stack_mod.load(incl_home())
    if existing is None or existing.nats_url != url:
        return None
    return [Part(p.name, p.pid, stack_mod.alive(p), p.log) for p in existing.procs]


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print it all as JSON.")
@click.pass_context
@handles_errors
def status(ctx: click.Context, as_json: bool) -> None:
    """The health of the whole system: NATS, streams, controller, agents, queue, last errors."""
    from incl.bus.client import resolve_url  # noqa: PLC0415 - lazy: nats, structlog, boto
    url = resolve_url(ctx.obj["nats_url"])
    report = asyncio.run(gather(url, local_parts(url)))
    if as_json:
        print_json(report)
    else:
        show(report)
    if report.problems:
        fail("; ".join(report.problems))


def show(s: SystemStatus) -> None:
    grid = Table.grid(padding=(0, 2))
    grid.add_row(Text("NATS", style="bold"), Text(_servers(s)))
    controllers = (", ".join(f"{c.controller_id} ({c.role}, up {duration(time.time() - c.started_at)})"
                             for c in s.controllers) if s.controllers else "none answering")
    grid.add_row(Text("CONTROLLER", style="bold"), Text(controllers))
    if s.controllers:
        grid.add_row(Text("AGENTS", style="bold"), _counts(s.agents, "no agents registered", Text))
        grid.add_row(Text("QUEUE", style="bold"), Text(f"{s.queued} queued"))
        grid.add_row(Text("JOBS", style="bold"), _counts(s.jobs, "no jobs", state))
        grid.add_row(Text("ERRORS", style="bold"), Text(f"{plural(s.dead_letters, 'dead-lettered message')}"
                                                        + (" (`incl admin dead-letters`)" if s.dead_letters else "")))
    console.print(grid)
    for letter in s.errors:
        console.print(Text(f"  {ago(letter.letter.ts)}  {letter.letter.source}  {letter.letter.error}"))
    if s.streams:
        print_table(STREAM_COLUMNS, [[st.name, _replicas(st), str(st.messages), size(st.bytes), st.leader or "-"]
                                     for st in s.streams])
    if s.parts is not None:
        table = Table("PART", "PID", "STATE", "LOG", box=None, title="this machine's stack (incl up)")
        for part in s.parts:
            alive = Text("alive", "green") if part.alive else Text("dead", "red")
            table.add_row(Text(part.name), str(part.pid), alive, Text(part.log))  # paths: never markup
        console.print(table)


def _servers(s: SystemStatus) -> str:
    if not s.nats:
        return f"{s.nats_url}: unreachable"
    on = next((n for n in s.nats if n.connected), None)
    where = f", connected to {on.name or on.url} ({on.version or '?'})" if on else ""
    cluster = f" in cluster {on.cluster}" if on and on.cluster else ""
    others = [n.url for n in s.nats if not n.connected]
    return f"{plural(len(s.nats), 'server')}{cluster}{where}" + (f"; also {', '.join(others)}" if others else "")


def _replicas(st: StreamStatus) -> Text:
    behind = [r for r in st.followers if not r.current]
    if not behind:
        return Text(str(st.replicas))
    return Text(f"{st.replicas} ({len(behind)} behind)", style="yellow")


def _counts(counts: dict[str, int], empty: str, styled: Callable[[str], Text]) -> Text:
    """"2 alive, 1 lost": most first."""
    if not any(counts.values()):
        return Text(empty)
    text = Text()
    for i, (name, n) in enumerate(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))):
        text.append(f"{', ' if i else ''}{n} ")
        text.append_text(styled(name))
    return text
