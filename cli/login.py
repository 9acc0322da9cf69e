"""`incl login --creds FILE`: keep the credentials an admin gave you, for every later command."""

from __future__ import annotations

from pathlib import Path

import click

from incl.cli.output import console, handles_errors
from incl.proto.errors import InclError


@click.command()
@click.option("--creds", "creds", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The credential file `incl admin user add` wrote for you.")
@handles_errors
def login(creds: Path) -> None:
    """Store FILE (mode 0600) as the credentials the CLI connects with."""
    from incl.auth import keys  # noqa: PLC0415 - lazy
    from incl.bus.client import login_file  # noqa: PLC0415 - lazy: nats, structlog
    try:
        held = keys.read_creds(creds)
    except (OSError, ValueError) as exc:
        raise InclError(f"cannot use {creds}: {exc}") from None
    if held.name is None or held.kind != "user":
        raise InclError(f"{creds} names no INCL user (it should start with `# incl user NAME`)")
    target = keys.write_creds(login_file(), held.kind, held.name, held.seed)
    console.print(f"logged in as {held.name}; credentials kept in {target}", markup=False, highlight=False)
