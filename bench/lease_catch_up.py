#!/usr/bin/env python3
"""What a new term of the same controller costs after a short lapse: catching its records up against reading
them all again, on one store, alternating.

    .venv/bin/python bench/lease_catch_up.py --n 20000 --changes 200 [--rounds 3]

A fresh nats-server with JetStream (the binary next to this interpreter, a free port, a temp store) gets `--n`
ended job records (the soak's trivial jobs: one attempt, a ten-line tail) written straight into the jobs bucket.
One controller's records are loaded (`Stores.load`), then each round: another writer changes `--changes` records
(as another leader would during the lapse), and the same records are brought up to date (`Stores.catch_up`),
timed, then a fresh set is loaded whole (`Stores.load`, what every new term did before), timed. Prints one JSON
line per round and the medians, with the load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from incl.bus.connection import connect
from incl.bus.streams import ensure_buckets
from incl.controller import state, wiring
from incl.controller.config import ControllerConfig
from incl.proto import subjects
from incl.proto.codec import encode
from incl.proto.messages import Job, JobState
from incl.proto.spec import load_spec

NATS_SERVER = Path(sys.executable).parent / "nats-server"


def ended_job(i: int, now: float) -> Job:
    job = Job(id=f"j-{i:08x}", spec=load_spec({"run": "true", "name": "soak"}), user="soak", state=JobState.QUEUED,
              submitted_at=now + i, updated_at=now)
    job = state.running(state.assign(job, "local-0", now, None, "k" * 24), 1, now, started_at=now)
    return state.exited(job, 1, now, exit_code=0, reason=None, cancelled=False,
                        tail=[f"line {k} of a trivial job's output" for k in range(10)], ended_at=now)


async def main(url: str, n: int, changes: int, rounds: int) -> None:
    cfg = ControllerConfig()
    bus = await connect(url, "catchup", connect_timeout=5, reconnect_wait=0.5, request_timeout=10)
    buckets = await ensure_buckets(bus)
    kv = buckets[subjects.JOBS_BUCKET]
    now = time.time()
    for k in range(0, n, 500):
        await asyncio.gather(*(kv.put(f"j-{i:08x}", encode(ended_job(i, now))) for i in range(k, min(k + 500, n))))
    kept = wiring.records(buckets, ended_jobs=cfg.ended_jobs_in_memory)
    await kept.load()
    rows = []
    for r in range(rounds):
        base = r * changes
        await asyncio.gather(*(kv.put(f"j-{i:08x}", encode(ended_job(i, now + 1))) for i in range(base, base + changes)))
        t = time.monotonic()
        changed = await kept.catch_up(cfg.request_timeout)
        catch_up_s = time.monotonic() - t
        fresh = wiring.records(buckets, ended_jobs=cfg.ended_jobs_in_memory)
        t = time.monotonic()
        await fresh.load()
        load_s = time.monotonic() - t
        row = {"round": r, "records": n, "changed": changed, "catch_up_s": round(catch_up_s, 3),
               "load_s": round(load_s, 3), "load_avg": [round(x, 2) for x in os.getloadavg()]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(json.dumps({"median_catch_up_s": statistics.median(float(r["catch_up_s"]) for r in rows),
                      "median_load_s": statistics.median(float(r["load_s"]) for r in rows)}), flush=True)
    await bus.close()


def run() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--changes", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    store = tempfile.mkdtemp(prefix="catchup-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([str(NATS_SERVER), "-js", "-sd", store, "-a", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        asyncio.run(main(f"nats://127.0.0.1:{port}", args.n, args.changes, args.rounds))
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(store, ignore_errors=True)


if __name__ == "__main__":
    run()
