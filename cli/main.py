"""`incl`: one group, one module per verb family (up/down, submit, jobs, logs, agents, study)."""

from __future__ import annotations

import click

from incl.cli import admin, agents, files, gc, jobs, login, logs, models, share, status, study, submit, up, web


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--nats", "nats_url", envvar="INCL_NATS_URL", help="NATS URL of the INCL cluster, or "
              "its nodes' URLs separated by commas (default: the stack `incl up` started, else nats://127.0.0.1:4222).")
@click.pass_context
def cli(ctx: click.Context, nats_url: str | None) -> None:
    """INCL runs your training jobs on cloud GPUs with no hand work."""
    ctx.obj = {"nats_url": nats_url}


for command in (up.up, status.status, up.down, submit.submit, jobs.ls, jobs.show, jobs.cancel, jobs.quota, logs.logs,
                logs.metrics, agents.agents, files.outputs, files.download, admin.admin, study.study, models.model,
                gc.gc, login.login, web.web):
    cli.add_command(command)
cli.add_command(share.share)  # incl share: read-only links to outputs and model versions


def main() -> None:
    cli()
