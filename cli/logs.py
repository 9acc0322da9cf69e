"""`incl logs` and `incl metrics`: read what a job wrote, from the durable streams, in order."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import sys
from collections import defaultdict
from typing import TYPE_CHECKING, BinaryIO, NamedTuple, TextIO

import click
from rich.text import Text

from incl.cli.output import Column, console, handles_errors, print_json, print_table
from incl.proto.messages import Job, LogBatch, MetricPoint, Stream

if TYPE_CHECKING:
    from incl.bus.client import Client

SPARKS = "▁▂▃▄▅▆▇█"


def multi_node(job: Job) -> bool:
    """Whether the job's lines come from several ranks (and so are shown with a `[rank K]` prefix)."""
    return job.spec.resources.nodes > 1 or any(a.nodes for a in job.attempts)


class LogWriter:
    """Batches as `incl logs` shows them: the job's own lines to `out`, byte for byte; INCL's notes about the
    attempt (code fetched, outputs saved, why it failed) to `err`, so that stdout stays exactly what the job
    printed. With `ranks` (a multi-node job), every line starts with `[rank K] `, the ranks interleaved in the
    order their batches arrived; `rank` keeps one rank's lines, without the prefix."""

    def __init__(self, out: BinaryIO, err: TextIO, *, attempt: int | None = None, rank: int | None = None,
                 ranks: bool = False, timestamps: bool = False, streams: set[Stream] | None = None) -> None:
        self._out, self._err = out, err
        self._attempt, self._rank = attempt, rank
        self._ranks = ranks and rank is None
        self._timestamps, self._streams = timestamps, streams
        self.batches = 0  # written (after the filters)
        self._shown: int | None = None  # the attempt whose lines were written last
        self._open: int | None = None  # the rank whose last piece did not end its line

    def write(self, batch: LogBatch) -> None:
        if self._attempt is not None and batch.attempt != self._attempt:
            return
        if self._rank is not None and batch.rank != self._rank:
            return
        if self._rank is None and batch.rank != 0:
            self._ranks = True  # a record without nodes, but its lines say otherwise
        if self._shown is not None and batch.attempt != self._shown:
            self._end_line()
            self._out.flush()
            print(f"--- attempt {batch.attempt} ---", file=self._err, flush=True)
        self._shown = batch.attempt
        self.batches += 1
        self._lines(batch)
        self._out.flush()

    def _end_line(self) -> None:
        if self._ranks and self._open is not None:
            self._out.write(b"\n")
        self._open = None

    def _lines(self, batch: LogBatch) -> None:
        tag = f"[rank {batch.rank}] " if self._ranks else ""
        buf = bytearray()
        for line in batch.lines:
            if line.stream is Stream.SYSTEM:
                if self._streams is None:
                    self._out.write(bytes(buf))
                    self._out.flush()
                    buf.clear()
                    print(tag + line.data.decode("utf-8", "replace"), file=self._err, flush=True)
                continue
            if self._streams is not None and line.stream not in self._streams:
                continue
            if self._open != batch.rank:  # a new line, not the rest of this rank's last one
                if self._ranks and self._open is not None:
                    buf += b"\n"  # another rank's line was cut off mid-way: its rest comes on a line of its own
                buf += tag.encode()
            if self._timestamps:
                buf += dt.datetime.fromtimestamp(line.ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ ").encode()
            buf += line.data
            # a long line arrives in pieces; only its last piece ends it
            self._open = batch.rank if line.partial else None
            if not line.partial:
                buf += b"\n"
        self._out.write(bytes(buf))


async def print_logs(client: Client, job: Job | str, *, follow: bool, attempt: int | None = None,
                     rank: int | None = None, ranks: bool = False, timestamps: bool = False,
                     streams: set[Stream] | None = None) -> int:
    """The job's batches to stdout and stderr; how many were written."""
    writer = LogWriter(sys.stdout.buffer, sys.stderr, attempt=attempt, rank=rank, ranks=ranks, timestamps=timestamps,
                       streams=streams)
    async for batch in client.log_batches(job, follow=follow):
        writer.write(batch)
    return writer.batches


async def follow_logs(client: Client, job: Job) -> Job:
    await print_logs(client, job, follow=True, ranks=multi_node(job))
    return await client.job(job.id)


@click.command()
@click.argument("job_id")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming until the job ends.")
@click.option("--attempt", type=int, help="Only this attempt's lines.")
@click.option("--rank", type=click.IntRange(min=0), help="A multi-node job: only this rank's lines (no prefix).")
@click.option("-t", "--timestamps", is_flag=True, help="Prefix each line with its time (UTC).")
@click.option("--stream", "stream", type=click.Choice(["stdout", "stderr", "all"]), default="all",
              show_default=True)
@click.pass_context
@handles_errors
def logs(ctx: click.Context, job_id: str, follow: bool, attempt: int | None, rank: int | None, timestamps: bool,
         stream: str) -> None:
    """Print a job's log lines (every attempt, in order; a multi-node job's ranks interleaved, each line
    prefixed with `[rank K]`)."""
    from incl.bus.client import Client, resolve_url  # noqa: PLC0415 - lazy: nats, structlog, boto
    wanted = None if stream == "all" else {Stream.STDOUT if stream == "stdout" else Stream.STDERR}

    async def go() -> None:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            job = await client.job(job_id)  # unknown id: a clear error, not an empty output
            shown = await print_logs(client, job, follow=follow, attempt=attempt, rank=rank,
                                     ranks=multi_node(job), timestamps=timestamps, streams=wanted)
            if not shown and (why := await client.expired(job_id)):
                print(f"incl: the logs of {job_id} {why}; its outputs are kept in the store "
                      f"(incl download {job_id})", file=sys.stderr)

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


class RankedPoint(NamedTuple):
    attempt: int
    rank: int
    point: MetricPoint


def metric_series(points: list[RankedPoint]) -> dict[str, list[tuple[int | None, float]]]:
    """Each metric's (step, value) series, in order. With more than one rank, a series per rank, named
    `loss [rank 1]`, rank 0's first."""
    ranked = len({p.rank for p in points}) > 1
    series: dict[tuple[int, str], list[tuple[int | None, float]]] = defaultdict(list)
    for p in points:
        for name, value in p.point.values.items():
            series[p.rank if ranked else 0, name].append((p.point.step, value))
    return {(f"{name} [rank {rank}]" if ranked else name): vals for (rank, name), vals in sorted(series.items())}


def metrics_json(points: list[RankedPoint]) -> list[dict[str, object]]:
    return [{"attempt": p.attempt, "rank": p.rank, "ts": p.point.ts, "step": p.point.step,
             "values": {k: json_number(v) for k, v in p.point.values.items()}} for p in points]


@click.command()
@click.argument("job_id")
@click.option("--rank", type=click.IntRange(min=0), help="A multi-node job: only this rank's metrics.")
@click.option("--json", "as_json", is_flag=True, help="Every point, as JSON (NaN and infinities as strings).")
@click.pass_context
@handles_errors
def metrics(ctx: click.Context, job_id: str, rank: int | None, as_json: bool) -> None:
    """Show a job's metrics (`incl.log`): latest value and a compact history of each (a multi-node job: of each
    rank that logs them, rank 0's first)."""
    from incl.bus.client import Client, resolve_url  # noqa: PLC0415 - lazy: nats, structlog, boto

    async def go() -> list[RankedPoint]:
        async with Client(resolve_url(ctx.obj["nats_url"])) as client:
            job = await client.job(job_id)
            return [RankedPoint(batch.attempt, batch.rank, p) async for batch in client.metric_batches(job)
                    if rank is None or batch.rank == rank for p in batch.points]

    points = asyncio.run(go())
    if as_json:
        print_json(metrics_json(points))
        return
    if not points:
        which = "" if rank is None else f" from rank {rank}"
        console.print(f"no metrics{which} for {job_id} (the job logs them with incl.log)", markup=False)
        return
    print_table(METRIC_COLUMNS, [_metric_row(name, vals) for name, vals in metric_series(points).items()],
                title=f"metrics of {job_id}" + ("" if rank is None else f" (rank {rank})"))
