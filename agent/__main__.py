"""`python -m incl.agent [--config FILE] [--id ID] [--nats URL] [--creds FILE] [--tls-ca FILE] [--work-dir DIR]`: run
an agent."""

from __future__ import annotations

import click

from incl.agent.app import Agent
from incl.agent.config import load_config
from incl.bus.daemon import run_until_signalled
from incl.bus.logsetup import configure


@click.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--id", "agent_id")
@click.option("--nats", "nats_url")
@click.option("--creds", help="This agent's credential file.")
@click.option("--tls-ca", "tls_ca", help="The CA certificate the NATS server's is verified against.")
@click.option("--work-dir", "work_dir")
@click.option("--cpus", type=float)
def main(config_path: str | None, agent_id: str | None, nats_url: str | None, creds: str | None,
         tls_ca: str | None, work_dir: str | None, cpus: float | None) -> None:
    cfg = load_config(config_path, agent_id=agent_id, nats_url=nats_url, creds=creds, tls_ca=tls_ca,
                      work_dir=work_dir, cpus=cpus)
    configure(cfg.log_level)
    run_until_signalled(Agent(cfg).serve)


if __name__ == "__main__":
    main()
