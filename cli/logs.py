"""`incl logs` and `incl metrics`: read what a job wrote, from the durable streams, in order."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
from collections import defaultdict

import click
from rich.table import Table

from incl.cli.client import Client, resolve_url
from incl.cli.output import console, handles_errors, print_json
from incl.proto.messages import Job, LogBatch, Stream

SPARKS = "▁▂▃▄▅▆▇█"


def _write_batch(batch: LogBatch, out: object, timestamps: bool, streams: set[Stream] | None) -> None:
    """The job's own lines to `out`, byte for byte; INCL's notes about the attempt (code fetched, outputs saved,
    why it failed) to stderr, so that stdout stays exactly what the job printed."""
    buf = bytearray()
    for line in batch.lines:
        if line.stream is Stream.SYSTEM:
            if streams is None:
                out.write(bytes(buf))  # type: ignore[attr-defined]
                out.flush()  # type: ignore[attr-defined]
                buf.clear()
                print(line.data.decode("utf-8", "replace"), file=sys.stderr, flush=True)
            continue
        if streams is not None and line.stream not in streams:
            continue
        if timestamps:
            buf += dt.datetime.fromtimestamp(line.ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ ").encode()
        buf += line.data
        if not line.partial:  # a long line arrives in pieces; only its last piece ends it
            buf += b"\n"
    out.write(bytes(buf))  # type: ignore[attr-defined]


async def print_logs(client: Client, job_id: str, *, follow: bool, attempt: int | None = None,
                     timestamps: bool = False, streams: set[Stream] | None = None) -> None:
    out = sys.stdout.buffer
    shown_attempt: int | None = None
    async for batch in client.log_batches(job_id, follow=follow):
        if attempt is not None and batch.attempt != attempt:
            continue
        if shown_attempt is not None and batch.attempt != shown_attempt:
            out.flush()
            print(f"--- attempt {batch.attempt} ---", file=sys.stderr, flush=True)
        shown_attempt = batch.attempt
        _write_batch(batch, out, timestamps, streams)
        out.flush()


async def follow_logs(client: Client, job_id: str) -> Job:
    await print_logs(client, job_id, follow=True)
    return await client.job(job_id)


@click.command()
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the job ends.")
@click.option("--attempt", type=int, help="Only this attempt's lines.")
@click.option("-t", "--timestamps", is_flag=True, help="Prefix each line with its time (UTC).")
@click.option("--stream", "stream", type=click.Choice(["stdout", "stderr", "all"]), default="all",
              show_default=True)
@click.pass_context
@handles_errors
def logs(ctx: click.Context, job_id: str, follow: bool, attempt: int | None, timestamps: bool,
         stream: str) -> None:
    """Print a job's log lines (every attempt, in order)."""
    wanted = None if stream == "all" else {Stream.STDOUT if stream == "stdout" else Stream.STDERR}

    async def go() -> None:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            await client.job(job_id)  # unknown id: a clear error, not an empty output
            await print_logs(client, job_id, follow=follow, attempt=attempt, timestamps=timestamps,
                             streams=wanted)

    asyncio.run(go())


def sparkline(values: list[float], width: int = 30) -> str:
    if not values:
        return ""
    if len(values) > width:  # keep the shape: sample evenly, always ending on the last value
        step = (len(values) - 1) / (width - 1)
        values = [values[round(i * step)] for i in range(width)]
    lo, hi = min(values), max(values)
    if hi == lo:
        return SPARKS[3] * len(values)
    return "".join(SPARKS[int((v - lo) / (hi - lo) * (len(SPARKS) - 1))] for v in values)


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Every point, as JSON.")
@click.pass_context
@handles_errors
def metrics(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show a job's metrics (`incl.log`): latest value and a compact history of each."""

    async def go() -> list[dict[str, object]]:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            await client.job(job_id)
            points = []
            async for batch in client.metric_batches(job_id):
                points.extend({"attempt": batch.attempt, "ts": p.ts, "step": p.step, "values": p.values}
                              for p in batch.points)
            return points

    points = asyncio.run(go())
    if as_json:
        print_json(points)
        return
    if not points:
        console.print(f"no metrics for {job_id} (the job logs them with incl.log)")
        return
    series: dict[str, list[tuple[object, float]]] = defaultdict(list)
    for p in points:
        for name, value in p["values"].items():  # type: ignore[union-attr]
            series[name].append((p["step"], value))
    table = Table(title=f"metrics of {job_id}")
    for col in ("metric", "last", "step", "min", "max", "points", "history"):
        table.add_column(col, justify="right" if col not in ("metric", "history") else "left")
    for name, vals in sorted(series.items()):
        nums = [v for _, v in vals]
        table.add_row(name, f"{nums[-1]:.6g}", str(vals[-1][0] if vals[-1][0] is not None else "-"),
                      f"{min(nums):.6g}", f"{max(nums):.6g}", str(len(nums)), sparkline(nums))
    console.print(table)
