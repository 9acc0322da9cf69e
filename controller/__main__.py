"""`python -m incl.controller [--config FILE] [--nats URL] [--creds FILE] [--tls-ca FILE] [--web-url URL]`: run the
controller until SIGTERM/SIGINT."""

from __future__ import annotations

import click
import msgspec

from incl.auth import callout
from incl.bus.daemon import run_until_signalled
from incl.bus.logsetup import configure
from incl.controller.app import Controller
from incl.controller.config import load_config


@click.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--nats", "nats_url")
@click.option("--creds", help="The controller's credential file.")
@click.option("--tls-ca", "tls_ca", help="The CA certificate the NATS server's is verified against.")
@click.option("--web-url", "web_url", help="The web UI's address, for the links in Slack notices, where the config "
                                           "names none (notify.web_url). `incl up` passes its own web UI's.")
def main(config_path: str | None, nats_url: str | None, creds: str | None, tls_ca: str | None,
         web_url: str | None) -> None:
    cfg = load_config(config_path, nats_url=nats_url, creds=creds, tls_ca=tls_ca)
    if web_url and cfg.notify.web_url is None:  # an address the admin configured wins over the local UI's
        cfg = msgspec.structs.replace(cfg, notify=msgspec.structs.replace(cfg.notify, web_url=web_url))
    if cfg.callout.enabled:  # a bad key or certificate file: one line now, not a traceback once connected
        try:
            callout.read_keys(cfg.callout, cfg.callout_issuer_path())
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None
    configure(cfg.log_level)
    run_until_signalled(Controller(cfg).serve)


if __name__ == "__main__":
    main()
