"""`incl web`: run the web UI server in the foreground against this cluster; `incl web --url`: where the one
running here serves. While it runs, the server's address is kept in $INCL_HOME/web.json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from incl.cli.output import fail, handles_errors


def _record() -> Path:
    from incl.bus.client import incl_home  # noqa: PLC0415 - lazy: nats, structlog

    return incl_home() / "web.json"


def running_url() -> str | None:
    """Where the web UI running here serves: the one `incl up` started, else one `incl web` runs; None: none."""
    from incl.bus.client import incl_home  # noqa: PLC0415 - lazy: nats, structlog
    from incl.cli import stack as stack_mod  # noqa: PLC0415

    stack = stack_mod.load(incl_home())
    web = next((p for p in stack.procs if p.name == "web"), None) if stack is not None else None
    if stack is not None and stack.web_url and web is not None and stack_mod.alive(web):
        return stack.web_url
    try:
        return str(json.loads(_record().read_text())["url"])
    except (OSError, ValueError, KeyError):
        return None


@click.command()
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default 8470).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False),
              help="A YAML file of the server's settings (incl.web.config).")
@click.option("--url", "show_url", is_flag=True, help="Print where the web UI running here serves, and exit.")
@click.pass_context
@handles_errors
def web(ctx: click.Context, host: str | None, port: int | None, config_path: str | None, show_url: bool) -> None:
    """Serve the web UI (jobs, live logs and charts) for this cluster, until Ctrl-C."""
    record = _record()
    if show_url:
        url = running_url()
        if url is None:
            fail(f"no web UI is running here (nothing in {record}); start one with `incl web`")
        click.echo(url)
        return
    from incl.bus.client import resolve_url  # noqa: PLC0415 - lazy: aiohttp, nats
    from incl.bus.daemon import run_until_signalled  # noqa: PLC0415
    from incl.bus.logsetup import configure  # noqa: PLC0415
    from incl.web.app import serve, url_of  # noqa: PLC0415
    from incl.web.config import load_config  # noqa: PLC0415

    nats_url = ctx.obj["nats_url"] or (None if config_path else resolve_url(None))
    cfg = load_config(config_path, nats_url=nats_url, host=host, port=port)
    configure(cfg.log_level)
    url = url_of(cfg.host, cfg.port)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"url": url, "pid": os.getpid()}))
    click.echo(f"INCL web UI at {url}", err=True)
    try:
        run_until_signalled(lambda: serve(cfg))
    finally:
        record.unlink(missing_ok=True)
