"""`python -m incl.controller [--config FILE] [--nats URL]`: run the controller until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import signal

import click

from incl._logging import configure
from incl.controller.app import Controller
from incl.controller.config import load_config


async def _main(controller: Controller) -> None:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)  # type: ignore[union-attr]
    try:
        await controller.serve()
    except asyncio.CancelledError:
        pass


@click.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False))
@click.option("--nats", "nats_url")
def main(config_path: str | None, nats_url: str | None) -> None:
    cfg = load_config(config_path, nats_url=nats_url)
    configure(cfg.log_level)
    asyncio.run(_main(Controller(cfg)))


if __name__ == "__main__":
    main()
