"""`python -m incl.web [--config FILE] [--nats URL] [--host H] [--port N] [--creds FILE] [--tls-ca FILE]
[--sign-in]`: serve the web UI until SIGTERM/SIGINT."""

from __future__ import annotations

import click

from incl.bus.client import resolve_url
from incl.bus.daemon import run_until_signalled
from incl.bus.logsetup import configure
from incl.web.app import serve
from incl.web.config import load_config


@click.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--nats", "nats_url", help="NATS URL of the INCL cluster.")
@click.option("--host", help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, help="Port to listen on (default 8470).")
@click.option("--creds", help="Credential file to act with (default: the CLI's).")
@click.option("--tls-ca", "tls_ca", help="The CA certificate the NATS server's is verified against (default: the "
              "CLI's).")
@click.option("--sign-in/--no-sign-in", "sign_in", default=None,
              help="Sign people in with their credential files: each acts with their own rights (needed to listen "
                   "beyond loopback).")
def main(config_path: str | None, nats_url: str | None, host: str | None, port: int | None,
         creds: str | None, tls_ca: str | None, sign_in: bool | None) -> None:
    if nats_url is None and config_path is None:
        nats_url = resolve_url(None)  # as the CLI finds it: $INCL_NATS_URL, then the stack `incl up` started
    cfg = load_config(config_path, nats_url=nats_url, host=host, port=port, creds=creds, tls_ca=tls_ca,
                      sign_in=sign_in)
    configure(cfg.log_level)
    run_until_signalled(lambda: serve(cfg))


if __name__ == "__main__":
    main()
