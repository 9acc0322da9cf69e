"""Files between the user's machine and the artifact store: the workdir at submit, `incl outputs`, `incl download`."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
import msgspec
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from incl.cli.output import Column, console, err_console, handles_errors, plural, print_json, print_table, size
from incl.proto.errors import InclError, NotFound
from incl.proto.messages import Attempt, TreeRef
from incl.proto.outputs import Trees, attempt_with_outputs, rank_trees

if TYPE_CHECKING:
    from incl.artifacts import tree
    from incl.artifacts.manifest import Entry
    from incl.artifacts.store import ArtifactStore
    from incl.bus.client import Client

PROGRESS_AFTER = 1.0  # seconds: a transfer shorter than this draws no bar
PLAIN_EVERY = 5.0  # seconds between progress lines when stderr is not a terminal (CI logs, nohup)


class _Amount(ProgressColumn):
    """Bytes with speed and time left for a transfer; a count of files for scanning and hashing."""

    def __init__(self) -> None:
        super().__init__()
        self._bytes = (DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())

    def render(self, task: Task) -> Text:
        if task.fields.get("files"):
            total = f"/{int(task.total):,}" if task.total else ""
            return Text(f"{int(task.completed):,}{total} files")
        return Text(" ").join(c.render(task) for c in self._bytes)


class Transfer:
    """Progress of a push or pull: a bar on a terminal once it has taken over a second, else a plain line
    every PLAIN_EVERY seconds. Called as `(bytes done, bytes total)` for the transfer, and through `phase`
    for scanning and hashing (from worker threads: everything here takes the lock)."""

    def __init__(self, what: str, *, tty: bool | None = None) -> None:
        self._what = what
        self._tty = sys.stderr.isatty() if tty is None else tty
        self._started = self._last_line = time.monotonic()
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._step = ""
        self._lock = threading.Lock()

    def __call__(self, done: int, total: int) -> None:
        self._show(self._what, done, total, files=False)

    def phase(self, step: str, done: int, total: int) -> None:
        """("scanning", entries found, 0) or ("hashing", files hashed, files to hash)."""
        self._show(f"{step} {self._what.split(' ', 1)[-1]}", done, total, files=True)

    def _show(self, step: str, done: int, total: int, *, files: bool) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._started < PROGRESS_AFTER:
                return
            if not self._tty:
                if now - self._last_line >= PLAIN_EVERY or step != self._step:
                    self._last_line, self._step = now, step
                    amount = f"{done:,}" + (f"/{total:,}" if total else "") + " files" if files else (
                        f"{size(done)} of {size(total)}")
                    print(f"{step}: {amount} ({now - self._started:.0f} s)", file=sys.stderr, flush=True)
                return
            if self._bar is None:
                self._bar = Progress("[progress.description]{task.description}", BarColumn(), _Amount(),
                                     transient=True, console=err_console)
                self._bar.start()
            if step != self._step or self._task is None:
                if self._task is not None:
                    self._bar.remove_task(self._task)
                self._step = step
                self._task = self._bar.add_task(step, total=total or None, files=files)
            self._bar.update(self._task, completed=done, total=total or None)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.stop()


def hash_cache() -> tree.HashCache:
    """File hashes and the blobs each store is known to hold: what makes an unchanged resubmit cost nothing."""
    from incl.artifacts import tree  # noqa: PLC0415 - lazy: nats, structlog, boto
    from incl.bus.client import incl_home  # noqa: PLC0415 - lazy: nats, structlog, boto
    return tree.HashCache(incl_home() / "cache" / "hashes.sqlite")


async def upload_workdir(client: Client, workdir: str, max_bytes: int | None = None) -> TreeRef:
    """Snapshot the workdir (.gitignore and .inclignore apply) into the store; only blobs it lacks are sent."""
    from incl.artifacts import tree  # noqa: PLC0415 - lazy: nats, structlog, boto
    from incl.artifacts.config import TreeLimits  # noqa: PLC0415 - lazy: nats, structlog, boto
    from incl.artifacts.store import open_store  # noqa: PLC0415 - lazy: nats, structlog, boto
    async with open_store(await client.store_url()) as store:
        progress = Transfer(f"uploading {escape(workdir)}")  # the bar reads its description as markup
        try:
            pushed = await tree.push_tree(store, Path(workdir), gitignore=True, hash_cache=hash_cache(),
                                          progress=progress, phase=progress.phase,
                                          limits=TreeLimits(max_bytes=max_bytes))
        finally:
            progress.close()
    sent = (f"uploaded {plural(pushed.uploaded_blobs, 'new blob')} ({size(pushed.uploaded_bytes)})"
            if pushed.uploaded_blobs else "nothing to upload")
    err_console.print(f"code {pushed.digest[:12]}: {plural(pushed.files, 'file')}, {size(pushed.bytes)}; {sent}",
                      highlight=False, markup=False)
    return TreeRef(digest=pushed.digest, files=pushed.files, bytes=pushed.bytes)


async def _job_outputs(client: Client, job_id: str, attempt: int | None) -> tuple[Attempt | None, Trees, str]:
    job = await client.job(job_id)
    att = attempt_with_outputs(job, attempt)
    return att, [] if att is None else rank_trees(job, att), await client.store_url()


async def output_files(store: ArtifactStore, trees: Trees) -> list[Entry]:
    """The files of `trees`, each path under its tree's folder."""
    from incl.artifacts import tree  # noqa: PLC0415 - lazy: nats, structlog, boto
    files: list[Entry] = []
    for folder, ref in trees:
        _, manifest = await tree.read_manifest(store, ref.digest)
        files += [msgspec.structs.replace(e, path=folder + e.path) for e in manifest.entries if e.kind == "file"]
    return files


async def pull_outputs(store: ArtifactStore, trees: Trees, target: Path, blobs: Path,
                       what: str) -> None:
    """Each tree into its folder under `target` (a rank's under `rank-K/`), through one blob cache."""
    from incl.artifacts import tree  # noqa: PLC0415 - lazy: nats, structlog, boto
    cache = tree.BlobCache(blobs)
    for folder, ref in trees:
        progress = Transfer(f"downloading {what}" + (f" {folder.rstrip('/')}" if folder else ""))
        try:
            await tree.pull_tree(store, ref.digest, target / folder, blob_cache=cache, progress=progress)
        finally:
            progress.close()


def _left_nothing(job_id: str) -> str:
    return f"job {job_id} left no files in $INCL_OUTPUT_DIR"


@click.command()
@click.argument("job_id")
@click.option("--attempt", type=int, help="Outputs of this attempt (default: the last one that has outputs).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@handles_errors
def outputs(ctx: click.Context, job_id: str, attempt: int | None, as_json: bool) -> None:
    """List the files a job left in $INCL_OUTPUT_DIR (a multi-node job that keeps every rank's: the other ranks'
    under rank-K/)."""
    from incl.artifacts.store import open_store  # noqa: PLC0415 - lazy: nats, structlog, boto
    from incl.bus.client import Client, resolve_url  # noqa: PLC0415 - lazy: nats, structlog, boto
    async def go() -> None:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            att, trees, url = await _job_outputs(client, job_id, attempt)
        if att is None or not trees:
            if as_json:
                print_json([])
            else:
                console.print(_left_nothing(job_id), markup=False)
            return
        async with open_store(url) as store:
            files = await output_files(store, trees)
        if as_json:
            print_json([{"path": e.path, "size": e.size, "sha256": e.digest} for e in files])
            return
        total = sum(ref.bytes for _, ref in trees)
        print_table([Column("path", shrink=20), Column("size", justify="right")],
                    [[e.path, size(e.size)] for e in files],
                    title=f"{job_id} attempt {att.number}: {plural(len(files), 'file')}, {size(total)}")

    asyncio.run(go())


@click.command()
@click.argument("job_id")
@click.option("--to", "dest", type=click.Path(file_okay=False), help="Folder to write into (default: ./JOB_ID).")
@click.option("--attempt", type=int, help="Outputs of this attempt (default: the last one that has outputs).")
@click.pass_context
@handles_errors
def download(ctx: click.Context, job_id: str, dest: str | None, attempt: int | None) -> None:
    """Download a job's outputs (a multi-node job that keeps every rank's: the other ranks' into rank-K/)."""
    from incl.artifacts.store import open_store  # noqa: PLC0415 - lazy: nats, structlog, boto
    from incl.bus.client import Client, resolve_url  # noqa: PLC0415 - lazy: nats, structlog, boto
    async def go() -> Path:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            att, trees, url = await _job_outputs(client, job_id, attempt)
        if att is None or not trees:
            raise NotFound(_left_nothing(job_id) + ": nothing to download")
        target = Path(dest or job_id)
        if target.exists() and any(target.iterdir()):  # noqa: ASYNC240 - a local check before any download
            raise InclError(f"{target} is not empty; choose another folder with --to")
        target.parent.mkdir(parents=True, exist_ok=True)
        # A blob cache only for this download (next to the target, same disk): outputs are not kept twice.
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".incl-download-") as blobs:
            async with open_store(url) as store:
                await pull_outputs(store, trees, target, Path(blobs), job_id)
        return target

    target = asyncio.run(go())
    click.echo(f"downloaded outputs of {job_id} into {target}")
