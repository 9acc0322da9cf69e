"""`incl logs` and `incl metrics`: read what a job wrote, from the durable streams, in order."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import sys
from collections import defaultdict

import click
from rich.text import Text

from incl.bus.client import Client, resolve_url
from incl.cli.output import Column, console, handles_errors, print_json, print_table
from incl.proto.messages import Job, LogBatch, MetricPoint, Stream

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


SPARK_NAN, SPARK_INF, SPARK_NEG_INF = "×", "↑", "↓"  # a diverged loss is what people look for: never hidden


def sparkline(values: list[float], width: int = 30) -> str:
    """The shape of a series in `width` characters; NaN and ±inf keep a mark of their own."""
    if not values:
        return ""
    if len(values) > width:  # keep the shape: sample evenly, always ending on the last value
        step = (len(values) - 1) / (width - 1)
        values = [values[round(i * step)] for i in range(width)]
    finite = [v for v in values if math.isfinite(v)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 0.0)
    return "".join(_spark(v, lo, hi) for v in values)


def _spark(value: float, lo: float, hi: float) -> str:
    if math.isnan(value):
        return SPARK_NAN
    if math.isinf(value):
        return SPARK_INF if value > 0 else SPARK_NEG_INF
    if hi == lo:
        return SPARKS[3]
    return SPARKS[int((value - lo) / (hi - lo) * (len(SPARKS) - 1))]


def number(value: float | None) -> str:
    """A metric value for people: 6 significant digits; "nan", "inf", "-inf" as they are."""
    return "-" if value is None else f"{value:.6g}"


def json_number(value: float) -> float | str:
    """JSON has no NaN or infinity: they become the strings "NaN", "Infinity", "-Infinity" (as JavaScript spells
    them, and pandas and jq read them), never a null that hides which one it was."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


METRIC_COLUMNS = [Column("metric"), Column("last", justify="right"), Column("step", drop=2, justify="right"),
                  Column("min", drop=3, justify="right"), Column("max", drop=3, justify="right"),
                  Column("points", drop=4, justify="right"), Column("history", drop=1)]


def _metric_row(name: str, vals: list[tuple[int | None, float]]) -> list[str | Text]:
    nums = [v for _, v in vals]
    finite = [v for v in nums if math.isfinite(v)]  # min and max over the finite values
    last_step = vals[-1][0]
    return [name, number(nums[-1]), "-" if last_step is None else str(last_step),
            number(min(finite) if finite else None), number(max(finite) if finite else None), str(len(nums)),
            sparkline(nums)]


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Every point, as JSON (NaN and infinities as strings).")
@click.pass_context
@handles_errors
def metrics(ctx: click.Context, job_id: str, as_json: bool) -> None:
    """Show a job's metrics (`incl.log`): latest value and a compact history of each."""

    async def go() -> list[tuple[int, MetricPoint]]:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            await client.job(job_id)
            return [(batch.attempt, p) async for batch in client.metric_batches(job_id) for p in batch.points]

    points = asyncio.run(go())
    if as_json:
        print_json([{"attempt": attempt, "ts": p.ts, "step": p.step,
                     "values": {k: json_number(v) for k, v in p.values.items()}} for attempt, p in points])
        return
    if not points:
        console.print(f"no metrics for {job_id} (the job logs them with incl.log)", markup=False)
        return
    series: dict[str, list[tuple[int | None, float]]] = defaultdict(list)
    for _, p in points:
        for name, value in p.values.items():
            series[name].append((p.step, value))
    print_table(METRIC_COLUMNS, [_metric_row(name, vals) for name, vals in sorted(series.items())],
                title=f"metrics of {job_id}")
