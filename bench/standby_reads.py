#!/usr/bin/env python3
"""Reads from a standby controller: their latency, and how long reads go unanswered around a kill -9 of the leader.

    PYTHONPATH=<tree>/build/pkg .venv/bin/python bench/standby_reads.py [--reads 200] [--kills 3] [--base]

Each run is a real stack: nats-server, controllers c1 and c2 (one leads, one stands by), one agent, 30 finished
jobs. `--base`: the code on PYTHONPATH is from before standbys answered reads (no latency phase: a standby answered
nothing).

    latency      `jobs.get` and `jobs.list` back to back, `--reads` of each: answered by the leader; then with the
                 leader paused (SIGSTOP, a lease long enough that nobody takes over) answered by the standby, by a
                 client with the default `hedge_after` (0.25 s: the leader is given that long) and by one with 0
                 (asks any controller at once: what the standby's answer itself takes).
    watch lag    one connection writes a key `--puts` times (10 ms apart), another follows the bucket's watch (what a
                 standby's copy follows): the time from sending each write to its arrival at the watch, against the
                 writer's own round trip for its acknowledgement; how often, and by how much, the watch saw a write
                 only after the writer had its acknowledgement (then a read sent at once could miss it).
    kill -9      a reader sends `jobs.get` back to back (2 s timeout each); the leader is killed; "unanswered" is the
                 longest time between two answers around the kill, "takeover" when the lease changed hands.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))

from conftest import CONTROLLER_CFG, Cluster, Daemon, NatsServer, wait_for  # noqa: E402
from stats import median  # noqa: E402

from incl.bus.client import Client  # noqa: E402
from incl.bus.connection import connect  # noqa: E402
from incl.bus.kv import Bucket  # noqa: E402
from incl.bus.streams import ensure_buckets  # noqa: E402
from incl.controller import leader  # noqa: E402
from incl.proto import subjects  # noqa: E402

PY = sys.executable


def start(cluster: Cluster, cid: str, **overrides: Any) -> Daemon:
    cfg = cluster._config(f"controller-{cid}", {
        **CONTROLLER_CFG, "log_level": "info", "nats_url": cluster.nats.url,
        "store_url": f"file://{cluster.tmp / 'store'}", "controller_id": cid, "metrics_port": None, **overrides})
    return Daemon(cid, [PY, "-m", "incl.controller", "--config", str(cfg)], cluster.tmp / f"{cid}.log",
                  cluster.env).start()


async def holder(client: Client) -> str | None:
    try:
        found = await leader.holder(Bucket(await client.bus.jetstream.key_value(subjects.LEADER_BUCKET)))
    except Exception:  # noqa: BLE001 - not created yet
        return None
    return found.controller_id if found else None


async def stack(tmp: Path, **overrides: Any) -> tuple[NatsServer, Cluster, dict[str, Daemon], str, list[str]]:
    nats = NatsServer(tmp).start()
    cluster = Cluster(tmp, nats)
    daemons = {cid: start(cluster, cid, **overrides) for cid in ("c1", "c2")}
    cluster.start_agent("a1", cpus=4)
    await cluster.wait_agents(1)
    job_ids = [(await cluster.submit("true", name=f"j{n}")).id for n in range(30)]
    for job_id in job_ids:
        await cluster.wait_done(job_id)
    async with cluster.client() as c:
        first = await wait_for(lambda: holder(c), what="a leader")
    return nats, cluster, daemons, first, job_ids


def stop(nats: NatsServer, cluster: Cluster, daemons: dict[str, Daemon]) -> None:
    for d in daemons.values():
        if d.proc is not None and d.running:
            os.kill(d.proc.pid, signal.SIGCONT)
        d.stop()
    cluster.close()
    nats.stop()


async def timed_reads(c: Client, job_id: str, n: int) -> tuple[float, float]:
    """Median seconds of `jobs.get` and of `jobs.list`, `n` each."""
    gets, lists = [], []
    for _ in range(n):
        t = time.perf_counter()
        await c.job(job_id)
        gets.append(time.perf_counter() - t)
        t = time.perf_counter()
        await c.jobs()
        lists.append(time.perf_counter() - t)
    return median(gets), median(lists)


async def latency(tmp: Path, reads: int) -> dict[str, float]:
    # A lease nobody takes over within the run: the paused leader keeps it, the standby keeps standing by.
    times = {"leader_ttl": 600.0, "leader_renew": 1.0, "leader_margin": 0.5}
    nats, cluster, daemons, first, job_ids = await stack(tmp, **times)
    try:
        async with Client(nats.url, timeout=5.0) as c, Client(nats.url, timeout=5.0, hedge_after=0.0) as at_once:
            by_leader = await timed_reads(c, job_ids[0], reads)
            paused = daemons[first].proc
            assert paused is not None
            os.kill(paused.pid, signal.SIGSTOP)
            try:
                assert (await c.ping()).controller_id != first  # the standby answers
                hedged = await timed_reads(c, job_ids[0], reads)
                by_standby = await timed_reads(at_once, job_ids[0], reads)
            finally:
                os.kill(paused.pid, signal.SIGCONT)
    finally:
        stop(nats, cluster, daemons)
    return {"leader_get_ms": by_leader[0] * 1e3, "leader_list_ms": by_leader[1] * 1e3,
            "paused_hedged_get_ms": hedged[0] * 1e3, "paused_hedged_list_ms": hedged[1] * 1e3,
            "standby_get_ms": by_standby[0] * 1e3, "standby_list_ms": by_standby[1] * 1e3}


async def kill_gap(tmp: Path) -> dict[str, float]:
    nats, cluster, daemons, first, job_ids = await stack(tmp)
    other = "c2" if first == "c1" else "c1"
    answered: list[float] = []
    failed = 0
    try:
        async with Client(nats.url, timeout=2.0) as c, Client(nats.url, timeout=2.0) as watcher:
            done = asyncio.Event()

            async def reader() -> None:
                nonlocal failed
                while not done.is_set():
                    try:
                        await c.job(job_ids[0])
                        answered.append(time.monotonic())
                    except Exception:  # noqa: BLE001 - counted: a read that got no answer
                        failed += 1
                        await asyncio.sleep(0.01)  # NATS says at once that nothing serves: no busy loop

            task = asyncio.create_task(reader())
            await asyncio.sleep(1.0)
            daemons[first].kill()
            killed = time.monotonic()
            await wait_for(lambda: _is(watcher, other), timeout=20, interval=0.02, what="the takeover")
            took = time.monotonic() - killed
            await asyncio.sleep(2.0)
            done.set()
            await task
    finally:
        stop(nats, cluster, daemons)
    around = [t for t in answered if killed - 2 < t]
    gaps = [b - a for a, b in itertools.pairwise(around)]
    return {"takeover_s": took, "unanswered_s": max(gaps), "failed_reads": failed}


async def watch_lag(tmp: Path, puts: int) -> dict[str, float]:
    nats = NatsServer(tmp).start()
    try:
        async with await connect(nats.url, "writer", connect_timeout=2, reconnect_wait=0.1, request_timeout=5) as w, \
                await connect(nats.url, "watcher", connect_timeout=2, reconnect_wait=0.1, request_timeout=5) as r:
            writer = (await ensure_buckets(w))[subjects.JOBS_BUCKET]
            watched = (await ensure_buckets(r))[subjects.JOBS_BUCKET]
            arrived: dict[str, float] = {}
            caught_up = asyncio.Event()

            async def follow() -> None:
                async for change in watched.watch():
                    if change is None:
                        caught_up.set()
                    else:
                        arrived[change.key] = time.perf_counter()

            following = asyncio.create_task(follow())
            await caught_up.wait()
            sent: dict[str, float] = {}
            acked: dict[str, float] = {}
            for n in range(puts):
                sent[f"k{n}"] = time.perf_counter()
                await writer.put(f"k{n}", b"x" * 2000)
                acked[f"k{n}"] = time.perf_counter()
                await asyncio.sleep(0.01)
            await wait_for(lambda: len(arrived) >= puts, what="every write watched")
            following.cancel()
    finally:
        nats.stop()
    from_send = [(arrived[k] - sent[k]) * 1e3 for k in sent]
    past_ack = [(arrived[k] - acked[k]) * 1e3 for k in acked]
    return {"put_to_watch_median_ms": median(from_send), "put_to_watch_max_ms": max(from_send),
            "ack_round_trip_median_ms": median([(acked[k] - sent[k]) * 1e3 for k in sent]),
            "watched_after_ack_share": sum(1 for x in past_ack if x > 0) / len(past_ack),
            "watched_after_ack_max_ms": max(past_ack)}


async def _is(c: Client, cid: str) -> bool:
    return await holder(c) == cid


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reads", type=int, default=200)
    ap.add_argument("--kills", type=int, default=3)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--puts", type=int, default=0, help="measure the watch lag over this many writes")
    ap.add_argument("--base", action="store_true", help="the code on PYTHONPATH predates standby reads")
    args = ap.parse_args()
    out: dict[str, Any] = {"host": platform.node(), "load": os.getloadavg(), "base": args.base}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if not args.base and not args.no_latency:
            (tmp / "latency").mkdir()
            out["latency"] = await latency(tmp / "latency", args.reads)
            print(json.dumps(out["latency"]), flush=True)
        if args.puts:
            (tmp / "lag").mkdir()
            out["watch"] = await watch_lag(tmp / "lag", args.puts)
            print(json.dumps(out["watch"]), flush=True)
        kills = []
        for k in range(args.kills):
            sub = tmp / f"kill-{k}"
            sub.mkdir()
            kills.append(await kill_gap(sub))
            print(json.dumps(kills[-1]), flush=True)
        out["kills"] = kills
        if kills:
            out["kill_median"] = {key: median([k[key] for k in kills]) for key in kills[0]}
    out["load_after"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
