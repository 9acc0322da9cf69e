"""`incl up`, `incl status` and `incl down`: the embedded stack on this machine."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table
from rich.text import Text

from incl.cli import stack as stack_mod
from incl.cli.output import ago, console, fail, handles_errors, print_json
from incl.proto.errors import InclError, Unavailable

if TYPE_CHECKING:
    pass


def _died(started: stack_mod.Stack) -> None:
    """Fail at once, with its last words, if a daemon exited instead of waiting out the timeout."""
    for proc in started.procs:
        if stack_mod.exited(proc):
            lines = Path(proc.log).read_text(errors="replace").strip().splitlines()[-5:]
            raise InclError(f"{proc.name} exited during start-up; last lines of {proc.log}:\n  "
                            + "\n  ".join(lines))


async def _wait_ready(started: stack_mod.Stack, agents: int, timeout: float) -> int:
    """Until the controller answers and `agents` agents are alive; the number alive."""
    from incl.bus.client import Client, incl_home  # noqa: PLC0415 - lazy: nats, structlog, boto
    url = started.nats_url
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        _died(started)
        try:
            async with Client(url, timeout=2.0, tls_ca=Path(started.tls_ca) if started.tls_ca else None) as client:
                await client.ping()
                alive = [a for a in await client.agents() if a.record.state == "alive"]
                if len(alive) >= agents:
                    return len(alive)
        except Unavailable as exc:
            last = exc
        await asyncio.sleep(0.2)
    raise Unavailable(f"the stack did not become ready within {timeout:g}s ({last}); see the logs in "
                      f"{incl_home() / 'logs'}")


def _wait_web(started: stack_mod.Stack, timeout: float) -> None:
    """Until the web UI `incl up` started listens (its port is in its URL)."""
    if not started.web_url:
        return
    port = int(started.web_url.rstrip("/").rsplit(":", 1)[1])
    if not stack_mod.wait_port(port, timeout):
        _died(started)
        raise Unavailable(f"the web UI did not listen on port {port} within {timeout:g}s")


@click.command()
@click.option("--agents", "n_agents", default=2, show_default=True, help="Local agents to start.")
@click.option("--port", default=4222, show_default=True, help="Port for the embedded NATS server.")
@click.option("--nats", "nats_url", help="Use this NATS instead of starting an embedded one: a URL, or a cluster's "
              "URLs separated by commas.")
@click.option("--cpus", type=float, help="CPUs each local agent offers (default: this machine's).")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the stack to be ready.")
@click.option("--web-port", default=8470, show_default=True,
              help="Port for the web UI (another free one if taken); 0: no web UI.")
@click.option("--tls/--no-tls", "tls", default=None,
              help="The embedded NATS requires TLS of clients, with a throwaway CA and certificate made in "
              "$INCL_HOME/tls (unless --tls-cert/--tls-key/--tls-ca are given). Kept for later `incl up` until "
              "--no-tls.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The server's certificate (PEM) instead of a throwaway one.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The key of --tls-cert (PEM).")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The CA certificate clients verify the server's against (with --nats: the CA of that server).")
@click.option("--tls-name", "tls_names", multiple=True,
              help="Another name or address the throwaway certificate is valid for (repeatable).")
@click.option("--listen", default="127.0.0.1", show_default=True,
              help="Address the embedded NATS listens on; beyond loopback (0.0.0.0: everywhere) only with TLS.")
@handles_errors
def up(n_agents: int, port: int, nats_url: str | None, cpus: float | None, timeout: float, web_port: int,
       tls: bool | None, tls_cert: Path | None, tls_key: Path | None, tls_ca: Path | None,
       tls_names: tuple[str, ...], listen: str) -> None:
    """Start NATS (embedded, with JetStream), the controller and local agents."""
    from incl.bus.client import incl_home  # noqa: PLC0415 - lazy: nats, structlog, boto
    from incl.bus.connection import masked  # noqa: PLC0415 - lazy: nats, structlog, boto
    home = incl_home()
    existing = stack_mod.load(home)
    if existing is not None and any(stack_mod.alive(p) for p in existing.procs):
        _restart(home, existing, timeout)
        return
    if nats_url is None:
        extra = () if stack_mod.dial_host(listen) == stack_mod.LOOPBACK else (listen,)  # the address it is dialled at
        stack_mod.choose_tls(home, tls=tls, cert=tls_cert, key=tls_key, ca=tls_ca, names=tls_names + extra)
    elif tls or tls_cert or tls_key or tls_names:
        raise InclError("--tls and its certificate configure the NATS server `incl up` starts; with --nats URL, pass "
                        "--tls-ca FILE (the CA that server's certificate is verified against) and a tls:// URL")
    started = stack_mod.start(home, nats_url=nats_url, port=port, agents=n_agents, agent_cpus=cpus,
                              web=web_port or None, tls_ca=tls_ca if nats_url else None, listen=listen)
    try:
        ready = asyncio.run(_wait_ready(started, n_agents, timeout))
        _wait_web(started, timeout)
    except InclError:
        stack_mod.stop(started)
        stack_mod.state_file(home).unlink(missing_ok=True)
        raise
    console.print(f"INCL is up at [bold]{masked(started.nats_url)}[/] with {ready} local agent(s); "
                  f"logs in {home / 'logs'}. Stop it with `incl down`.")
    if started.web_url:
        console.print(f"Web UI: [bold]{started.web_url}[/]")


def _restart(home: Path, existing: stack_mod.Stack, timeout: float) -> None:
    """A stack `incl up` started is (partly) running: start again what died, with the command it had."""
    from incl.bus.connection import masked  # noqa: PLC0415 - lazy: nats, structlog, boto
    running = ", ".join(f"{p.name} (pid {p.pid})" for p in existing.procs if stack_mod.alive(p))
    if all(stack_mod.alive(p) for p in existing.procs):
        console.print(f"INCL is already running at {masked(existing.nats_url)}: {running}. Stop it with `incl down`.")
        if existing.web_url:
            console.print(f"Web UI: [bold]{existing.web_url}[/]")
        return
    stack, restarted = stack_mod.restart_dead(home, existing)
    agents = sum(1 for p in stack.procs if p.name not in ("nats", "controller", "web"))
    asyncio.run(_wait_ready(stack, agents, timeout))  # on failure the stack stays recorded: `incl down` stops it
    _wait_web(stack, timeout)
    names = ", ".join(f"{p.name} (pid {p.pid})" for p in restarted)
    console.print(f"INCL was running at {masked(stack.nats_url)} with parts gone; restarted: {names}. "
                  f"Still running: {running}. Logs in {home / 'logs'}.")


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the parts as JSON.")
@handles_errors
def status(as_json: bool) -> None:
    """Each part of the stack `incl up` started, and whether it is alive (exit 1 if any is not)."""
    from incl.bus.client import incl_home  # noqa: PLC0415 - lazy: nats, structlog, boto
    from incl.bus.connection import masked  # noqa: PLC0415 - lazy: nats, structlog, boto
    existing = stack_mod.load(incl_home())
    if existing is None:
        fail("INCL is not running (no stack started by `incl up`); start one with `incl up`")
        return
    parts: list[dict[str, Any]] = [{"name": p.name, "pid": p.pid, "alive": stack_mod.alive(p), "log": p.log}
                                   for p in existing.procs]
    if as_json:
        print_json({"nats_url": masked(existing.nats_url), "parts": parts})
    else:
        table = Table("PART", "PID", "STATE", "LOG", box=None)
        for part in parts:
            alive = Text("alive", "green") if part["alive"] else Text("dead", "red")
            table.add_row(Text(part["name"]), str(part["pid"]), alive, Text(part["log"]))  # paths: never markup
        console.print(Text(f"INCL at {masked(existing.nats_url)}, started {ago(existing.started_at)}"))
        console.print(table)
    dead = [part["name"] for part in parts if not part["alive"]]
    if dead:
        fail(f"not running: {', '.join(dead)}; `incl up` starts them again")


@click.command()
@handles_errors
def down() -> None:
    """Stop exactly what `incl up` started."""
    from incl.bus.client import incl_home  # noqa: PLC0415 - lazy: nats, structlog, boto
    home = incl_home()
    existing = stack_mod.load(home)
    if existing is None:
        fail("INCL is not running (no stack started by `incl up`)")
        return
    stopped = stack_mod.stop(existing)
    stack_mod.state_file(home).unlink(missing_ok=True)
    gone = [p.name for p in existing.procs if p.name not in stopped]
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was still running'}"
                  + (f" (already gone: {', '.join(gone)})" if gone and stopped else ""))
