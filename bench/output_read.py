#!/usr/bin/env python3
"""What reading an attempt's output costs now that its subjects end in the writing agent's id (issue 15): one
attempt's metric batches read to the end, as before (a follow of the one exact subject, nothing dropped) and as now
(`incl.bus.output.follow_attempt`: a follow of `<key>.*`, each batch's agent checked against the attempt's),
alternated in one process on one nats-server.

    PYTHONPATH=... python bench/output_read.py [--batches 20000] [--foreign 0] [--repeat 7]

`--foreign`: batches another agent wrote under its own id among them (read and dropped by the new path).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator
from pathlib import Path

from incl.bus.connection import Bus, connect
from incl.bus.follow import Followed, to_end
from incl.bus.output import follow_attempt
from incl.bus.streams import StreamLimits, ensure_streams
from incl.proto import subjects
from incl.proto.codec import encode
from incl.proto.messages import Attempt, Job, JobState, MetricBatch, MetricPoint
from incl.proto.spec import load_spec

NATS_SERVER = Path(sys.executable).parent / "nats-server"
STREAM = subjects.METRICS_STREAM


def job(job_id: str) -> Job:
    attempt = Attempt(number=1, agent_id="a1", state=JobState.SUCCEEDED, assigned_at=1.0, output_key="k" * 24,
                      agent_subjects=True)
    return Job(id=job_id, spec=load_spec({"run": "true"}), user="u", state=JobState.SUCCEEDED, submitted_at=1.0,
               updated_at=1.0, attempts=[attempt])


async def fill(bus: Bus, subject: str, n: int, foreign: str | None = None, every: int = 0) -> None:
    data = encode(MetricBatch(job_id="j", attempt=1, seq=0,
                              points=[MetricPoint(ts=1.0, step=i, values={"loss": 1.0}) for i in range(16)]))
    pending = []
    for i in range(n):
        target = foreign if foreign and every and i % every == 0 else subject
        pending.append(bus.publish_durable(target, data))
        if len(pending) >= 256:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)


async def read_old(bus: Bus, subject: str) -> int:
    return await counted(bus.follow(STREAM, subject, 0.25))


async def read_new(bus: Bus, j: Job) -> int:
    return await counted(follow_attempt(bus, STREAM, j, j.attempts[0], 0.25))


async def counted(items: AsyncGenerator[Followed | None, None]) -> int:
    """How many batches `items` holds up to the stream's end (`to_end`, as every reader stops)."""
    count = 0
    async with contextlib.aclosing(to_end(items)) as data:
        async for _ in data:
            count += 1
    return count


async def measure(url: str, batches: int, foreign: int, repeat: int) -> dict[str, object]:
    async with await connect(url, "bench", connect_timeout=2, reconnect_wait=0.1, request_timeout=30,
                             max_reconnect_attempts=0, quiet=True) as bus:
        await ensure_streams(bus, StreamLimits())
        old, new = job("j-old"), job("j-new")
        old_subject = subjects.legacy_output(STREAM, old, "k" * 24)  # the subject as it was: one per attempt
        every = batches // foreign if foreign else 0
        await fill(bus, old_subject, batches)
        await fill(bus, subjects.output(STREAM, new, "k" * 24, "a1"), batches,
                   subjects.output(STREAM, new, "k" * 24, "a9"), every)
        times: dict[str, list[float]] = {"before": [], "after": []}
        got: dict[str, int] = {}
        for _ in range(repeat):  # alternated: the machine's load moves
            for name, read in (("before", lambda: read_old(bus, old_subject)), ("after", lambda: read_new(bus, new))):
                t = time.perf_counter()
                got[name] = await read()
                times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batches": batches, "foreign": foreign, "read": got, "runs_s": {k: [round(x, 3) for x in v]
                                                                            for k, v in times.items()},
            "median_s": {k: round(v, 3) for k, v in med.items()}, "after_over_before": round(med["after"] /
                                                                                        med["before"], 3),
            "loadavg": os.getloadavg()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, default=20000)
    p.add_argument("--foreign", type=int, default=0)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = 14222 + os.getpid() % 1000
        server = subprocess.Popen([str(NATS_SERVER), "-js", "-sd", tmp, "-p", str(port), "-a", "127.0.0.1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.0)
            print(json.dumps(asyncio.run(measure(f"nats://127.0.0.1:{port}", args.batches, args.foreign,
                                                 args.repeat))))
        finally:
            server.kill()
            server.wait()


if __name__ == "__main__":
    main()
