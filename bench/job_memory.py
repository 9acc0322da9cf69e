#!/usr/bin/env python3
"""The controller's memory for its job records, and the cost of listing them, by code tree, side by side.

    .venv/bin/python bench/job_memory.py --n 20000 --trees /work/wt-head:/work/wt-memory [--rounds 3]

For each round, for each tree in turn (alternating: HEAD, new, HEAD, new...), a fresh nats-server with JetStream
(the binary next to this interpreter, a free port, a temp store) and one child process whose `incl` package comes
from that tree (`TREE/build/pkg` first on its path). The child runs, in process, what a controller does with each
job: the job service's own submit (`Jobs.submit`), then one compare-and-set write that takes the job through
ASSIGNED, RUNNING and SUCCEEDED with a ten-line tail (the records of the soak's trivial jobs, about 1.6 KB each in
memory), `--in-flight` jobs side by side, with a scheduling pass's `Jobs.live()` every 1,000 jobs (the
controller's index of jobs not over is pruned there), and samples its VmRSS every quarter of `--n`. A second child, a fresh
process, then loads the store as a new leader does (`Stores.load`: the records a restart holds; RSS before and
after), and pages through every job as `incl ls` does (page after page of the API's listing code, 500 a page),
timed. The tree's config decides
how many ended jobs it keeps (`ended_jobs_in_memory`, 2000 by default, where it exists).

One JSON line per child on stdout; then, per tree, the medians over rounds. RSS in MiB, after `gc.collect()`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
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

NATS_SERVER = Path(sys.executable).parent / "nats-server"
PASS = 1000  # jobs between two scheduling passes of the bench (the controller's run at every submit and event)


def rss_mib() -> float:
    gc.collect()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def child(url: str, n: int, in_flight: int) -> dict[str, object]:
    """One tree's run (in the child: its `incl` is the tree's)."""
    import inspect

    from incl.bus.connection import connect
    from incl.bus.streams import StreamLimits, ensure_buckets, ensure_streams
    from incl.controller import state, wiring
    from incl.controller.config import ControllerConfig
    from incl.controller.jobs import JobChanges, Jobs
    from incl.proto.spec import load_spec

    keys = tempfile.mkdtemp(prefix="jobmem-key-")  # the vault's key file, removed with the run
    cfg = ControllerConfig(secrets_key_file=str(Path(keys) / "secrets.key"))
    bounded = "ended_jobs" in inspect.signature(wiring.records).parameters
    kw = {"ended_jobs": cfg.ended_jobs_in_memory} if bounded else {}
    bus = await connect(url, "jobmem", connect_timeout=5, reconnect_wait=0.5, request_timeout=10)
    await ensure_streams(bus, StreamLimits())
    buckets = await ensure_buckets(bus)
    stores = wiring.records(buckets, **kw)
    await stores.load()
    jobs = Jobs(cfg, stores.jobs, bus, shapes=list, wake=asyncio.Event(), changes=JobChanges())
    spec = load_spec({"run": "true", "name": "soak"})
    tail = [f"line {i} of a trivial job's output" for i in range(10)]
    base = rss_mib()
    samples: list[tuple[int, float]] = [(0, base)]
    sem = asyncio.Semaphore(in_flight)

    def done(j, now: float):  # type: ignore[no-untyped-def]
        j = state.running(state.assign(j, "local-0", now, None, "k" * 24), 1, now, started_at=now)
        return state.exited(j, 1, now, exit_code=0, reason=None, cancelled=False, tail=tail, ended_at=now)

    async def one() -> None:
        async with sem:
            job = await jobs.submit(spec, "soak")
            now = time.time()
            await jobs._update(job.id, lambda j: done(j, now))

    started = time.monotonic()
    step = max(n // 4, 1)
    for k in range(0, n, PASS):
        await asyncio.gather(*(one() for _ in range(min(PASS, n - k))))
        jobs.live()  # a scheduling pass, as the controller runs at every submit and event (it prunes its index)
        if (k + PASS) // step > k // step or k + PASS >= n:
            samples.append((min(k + PASS, n), rss_mib()))
    run_s = time.monotonic() - started
    await bus.close()
    shutil.rmtree(keys, ignore_errors=True)
    return {"bounded": bounded, "n": n, "run_s": round(run_s, 1), "held_after_run": len(stores.jobs),
            "rss_mib": [(k, round(r, 1)) for k, r in samples], "growth_mib": round(samples[-1][1] - base, 1)}


async def restart(url: str) -> dict[str, object]:
    """A new leader's load of the store, in a fresh process (the child's own, after connecting, as base)."""
    import inspect

    from incl.bus.connection import connect
    from incl.bus.streams import ensure_buckets
    from incl.controller import wiring
    from incl.controller.config import ControllerConfig

    cfg = ControllerConfig()
    bounded = "ended_jobs" in inspect.signature(wiring.records).parameters
    kw = {"ended_jobs": cfg.ended_jobs_in_memory} if bounded else {}
    bus = await connect(url, "jobmem", connect_timeout=5, reconnect_wait=0.5, request_timeout=10)
    buckets = await ensure_buckets(bus)
    stores = wiring.records(buckets, **kw)
    before = rss_mib()
    t = time.monotonic()
    await stores.load()
    load_s = time.monotonic() - t
    loaded = rss_mib()
    listed, list_s = await listing(stores, bounded, cfg.request_timeout)
    await bus.close()
    return {"held_after_load": len(stores.jobs), "load_growth_mib": round(loaded - before, 1),
            "load_s": round(load_s, 2), "listed": listed, "list_s": round(list_s, 2)}


async def listing(stores, bounded: bool, timeout: float) -> tuple[int, float]:  # type: ignore[no-untyped-def]
    """Every job, page by page, as the API's `list_jobs` pages them (every job visible)."""
    from incl.controller.paging import page

    started = time.monotonic()
    after, listed = None, 0
    while True:
        if bounded:
            from incl.controller.joblisting import list_page

            chosen, after = await list_page(stores.jobs, lambda _: True, after, None, 512 * 1024, timeout)
        else:
            chosen, after = page(list(stores.jobs), lambda j: f"{j.submitted_at:020.6f}/{j.id}", after, None,
                                 512 * 1024)
        listed += len(chosen)
        if after is None:
            return listed, time.monotonic() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_run(tree: str, n: int, in_flight: int) -> dict[str, object]:
    store = tempfile.mkdtemp(prefix="jobmem-")
    port = free_port()
    server = subprocess.Popen([str(NATS_SERVER), "-js", "-sd", store, "-a", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        env = os.environ | {"PYTHONPATH": str(Path(tree) / "build" / "pkg")}
        result: dict[str, object] = {"tree": tree}
        for phase in ("run", "restart"):
            out = subprocess.run([sys.executable, __file__, "--child", f"nats://127.0.0.1:{port}", "--phase", phase,
                                  "--n", str(n), "--in-flight", str(in_flight)],
                                 env=env, capture_output=True, text=True, check=True)
            result |= json.loads(out.stdout.strip().splitlines()[-1])
        result["load_avg"] = [round(x, 2) for x in os.getloadavg()]
        return result
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(store, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--trees", default="", help="code trees to compare, separated by ':'")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--in-flight", type=int, default=32)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--phase", default="run", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.child, args.n, args.in_flight) if args.phase == "run"
                                     else restart(args.child))))
        return
    trees = args.trees.split(":")
    results: dict[str, list[dict[str, object]]] = {t: [] for t in trees}
    for _ in range(args.rounds):
        for tree in trees:
            result = one_run(tree, args.n, args.in_flight)
            print(json.dumps(result), flush=True)
            results[tree].append(result)
    for tree, runs in results.items():
        med = {k: statistics.median(float(r[k]) for r in runs)  # type: ignore[arg-type]
               for k in ("growth_mib", "load_growth_mib", "load_s", "list_s", "run_s")}
        print(json.dumps({"tree": tree, "rounds": len(runs), "median": med}), flush=True)


if __name__ == "__main__":
    main()
