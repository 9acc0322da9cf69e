"""Files between the user's machine and the artifact store: the workdir at submit, `incl outputs`, `incl download`."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from incl.artifacts import tree
from incl.artifacts.config import TreeLimits
from incl.artifacts.store import open_store
from incl.cli.client import Client, incl_home, resolve_url
from incl.cli.output import console, err_console, handles_errors, print_json, size
from incl.proto.errors import InclError, NotFound
from incl.proto.messages import TERMINAL, Attempt, Job, TreeRef

PROGRESS_AFTER = 1.0  # seconds: a transfer shorter than this draws no bar


class Transfer:
    """A progress callback that draws a bar only once the transfer has taken over a second."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._started = time.monotonic()
        self._bar: Progress | None = None
        self._task = 0

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            if time.monotonic() - self._started < PROGRESS_AFTER or not sys.stderr.isatty():
                return
            self._bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(), transient=True, console=err_console)
            self._bar.start()
            self._task = self._bar.add_task(self._what, total=total)
        self._bar.update(self._task, completed=done, total=total)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def hash_cache() -> tree.HashCache:
    """File hashes and the blobs each store is known to hold: what makes an unchanged resubmit cost nothing."""
    return tree.HashCache(incl_home() / "cache" / "hashes.sqlite")


async def upload_workdir(client: Client, workdir: str, max_bytes: int | None = None) -> TreeRef:
    """Snapshot the workdir (.gitignore and .inclignore apply) into the store; only blobs it lacks are sent."""
    async with open_store(await client.store_url()) as store:
        progress = Transfer(f"uploading {workdir}")
        try:
            pushed = await tree.push_tree(store, Path(workdir), gitignore=True, hash_cache=hash_cache(),
                                          progress=progress, limits=TreeLimits(max_bytes=max_bytes))
        finally:
            progress.close()
    sent = (f"uploaded {pushed.uploaded_blobs} new blobs ({size(pushed.uploaded_bytes)})" if pushed.uploaded_blobs
            else "nothing to upload")
    err_console.print(f"code {pushed.digest[:12]}: {pushed.files} files, {size(pushed.bytes)}; {sent}", highlight=False)
    return TreeRef(digest=pushed.digest, files=pushed.files, bytes=pushed.bytes)


def _attempt_with_outputs(job: Job, number: int | None) -> Attempt:
    chosen = [a for a in job.attempts if (number is None or a.number == number)]
    with_outputs = [a for a in chosen if a.outputs is not None]
    if with_outputs:
        return with_outputs[-1]
    if number is not None and not chosen:
        raise NotFound(f"job {job.id} has no attempt {number}")
    if job.state in TERMINAL:
        raise NotFound(f"job {job.id} left nothing in $INCL_OUTPUT_DIR")
    raise NotFound(f"job {job.id} has no outputs yet (they are uploaded when an attempt ends; it is {job.state})")


async def _job_outputs(client: Client, job_id: str, attempt: int | None) -> tuple[Attempt, str]:
    job = await client.job(job_id)
    return _attempt_with_outputs(job, attempt), await client.store_url()


@click.command()
@click.argument("job_id")
@click.option("--attempt", type=int, help="Outputs of this attempt (default: the last one that has outputs).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def outputs(ctx: click.Context, job_id: str, attempt: int | None, as_json: bool) -> None:
    """List the files a job left in $INCL_OUTPUT_DIR."""
    async def go() -> None:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            att, url = await _job_outputs(client, job_id, attempt)
        assert att.outputs is not None
        async with open_store(url) as store:
            _, manifest = await tree.read_manifest(store, att.outputs.digest)
        files = [e for e in manifest.entries if e.kind == "file"]
        if as_json:
            print_json([{"path": e.path, "size": e.size, "sha256": e.digest} for e in files])
            return
        table = Table(title=f"{job_id} attempt {att.number}: {len(files)} files, {size(att.outputs.bytes)}")
        table.add_column("path")
        table.add_column("size", justify="right")
        for e in files:
            table.add_row(e.path, size(e.size))
        console.print(table)

    asyncio.run(go())


@click.command()
@click.argument("job_id")
@click.option("--to", "dest", type=click.Path(file_okay=False), help="Folder to write into (default: ./JOB_ID).")
@click.option("--attempt", type=int, help="Outputs of this attempt (default: the last one that has outputs).")
@click.pass_context
@handles_errors
def download(ctx: click.Context, job_id: str, dest: str | None, attempt: int | None) -> None:
    """Download a job's outputs."""
    async def go() -> Path:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            att, url = await _job_outputs(client, job_id, attempt)
        assert att.outputs is not None
        target = Path(dest or job_id)
        if target.exists() and any(target.iterdir()):
            raise InclError(f"{target} is not empty; choose another folder with --to")
        progress = Transfer(f"downloading {job_id}")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # A blob cache only for this download (next to the target, same disk): outputs are not kept twice.
            with tempfile.TemporaryDirectory(dir=target.parent, prefix=".incl-download-") as blobs:
                async with open_store(url) as store:
                    await tree.pull_tree(store, att.outputs.digest, target, blob_cache=tree.BlobCache(Path(blobs)),
                                         progress=progress)
        finally:
            progress.close()
        return target

    target = asyncio.run(go())
    click.echo(f"downloaded outputs of {job_id} into {target}")
