"""`incl login --creds FILE [--ca FILE]`: keep the credentials an admin gave you, and the CA certificate the cluster's
server is verified against, for every later command."""

from __future__ import annotations

from pathlib import Path

import click

from incl.cli.output import console, handles_errors
from incl.proto.errors import InclError


@click.command()
@click.option("--creds", "creds", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The credential file `incl admin user add` wrote for you.")
@click.option("--ca", "ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The CA certificate of a cluster that uses TLS (`incl up --tls` makes $INCL_HOME/tls/ca.pem).")
@handles_errors
def login(creds: Path | None, ca: Path | None) -> None:
    """Store the credentials FILE (mode 0600) the CLI connects with, and the CA it verifies the server against."""
    if creds is None and ca is None:
        raise InclError("nothing to store: pass --creds FILE, --ca FILE, or both")
    if ca is not None:
        _store_ca(ca)
    if creds is not None:
        _store_creds(creds)


def _store_creds(creds: Path) -> None:
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


def _store_ca(ca: Path) -> None:
    import ssl  # noqa: PLC0415 - lazy

    from incl.auth import keys  # noqa: PLC0415 - lazy
    from incl.bus.client import login_ca_file  # noqa: PLC0415 - lazy: nats, structlog
    try:
        text = ca.read_text()
        ssl.create_default_context(cadata=text)  # refuse now what would fail every later connect
    except (OSError, ValueError, ssl.SSLError) as exc:
        raise InclError(f"cannot use {ca} as a CA certificate: {exc}") from None
    target = login_ca_file()
    keys.private_dir(target.parent)
    keys.write_private(target, text)
    console.print(f"the server will be verified against the CA kept in {target}", markup=False, highlight=False)
