#!/usr/bin/env python3
"""Where a cold /metrics read of a 1,000,000-point job goes (issue 14): a real stack, one job logging the points,
then in this process: the stream read at several pull sizes (raw messages), the decode, and the collecting.

    PYTHONPATH=... python bench/metric_read.py [--points 1000000] [--batches 256,1024,4096] [--repeat 3]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from web_ui import CHART_JOB, WebStack, on_own_loop, wait_state  # noqa: E402

from incl.bus.client import Client  # noqa: E402
from incl.proto import subjects  # noqa: E402
from incl.proto.codec import Decoder  # noqa: E402
from incl.proto.messages import MetricBatch  # noqa: E402
from incl.web.metrics import Collector  # noqa: E402


async def measure(url: str, job_id: str, batches: list[int], repeat: int) -> dict:
    out: dict = {}
    async with Client(url, timeout=30.0) as client:
        job = await client.job(job_id)
        att = job.attempts[0]
        subject = subjects.output(subjects.METRICS_STREAM, job, att.output_key, subjects.ANY_AGENT)
        datas: list[bytes] = []
        for batch in batches:
            times = []
            for _ in range(repeat):
                datas = []
                t = time.perf_counter()
                async with contextlib.aclosing(client.bus.follow(subjects.METRICS_STREAM, subject, 0.25,
                                                                 batch=batch)) as items:
                    async for item in items:
                        if item is None:
                            break
                        datas.append(item.data)
                        if item.pending == 0:
                            break
                times.append(time.perf_counter() - t)
            out[f"read_pull_{batch}_s"] = round(statistics.median(times), 3)
            print(f"pull {batch}: {len(datas)} messages, {[round(x, 3) for x in times]} s", flush=True)
        decoder: Decoder[MetricBatch] = Decoder(MetricBatch)
        t = time.perf_counter()
        decoded = [decoder.decode(d) for d in datas]
        out["decode_s"] = round(time.perf_counter() - t, 3)
        collector = Collector()
        t = time.perf_counter()
        for b in decoded:
            collector.add(b)
        out["collect_s"] = round(time.perf_counter() - t, 3)
        for batch in batches:  # what a cold /metrics does before reducing: read, decode, collect
            times = []
            for _ in range(repeat):
                t = time.perf_counter()
                collector = Collector()
                async for _, _, b in client.metric_batches_after(job, batch=batch):
                    collector.add(b)
                times.append(time.perf_counter() - t)
            out[f"read_decode_collect_pull_{batch}_s"] = round(statistics.median(times), 3)
        out["messages"], out["bytes"], out["points"] = len(datas), sum(map(len, datas)), collector.points
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--points", type=int, default=1_000_000)
    p.add_argument("--batches", default="256,1024,4096")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    with WebStack() as ws, tempfile.TemporaryDirectory() as tmp:
        job = ws.run_job(CHART_JOB, [str(args.points)], "metric-read", Path(tmp))
        on_own_loop(wait_state(ws.stack.url, job, True, 1800))
        print(on_own_loop(measure(ws.stack.url, job, [int(b) for b in args.batches.split(",")], args.repeat)))


if __name__ == "__main__":
    main()
