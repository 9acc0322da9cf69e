#!/usr/bin/env python3
"""Soak: many trivial jobs over a long time, with every daemon's resident memory sampled each minute.

    .venv/bin/python bench/soak.py --minutes 60 --n 100000 [--agents 4] [--out bench/results/soak.jsonl]

The stack is the one the other benches start (bench/incl_side.py's `Stack`: `incl up` in a private INCL_HOME
under /tmp, on a free port, with authentication), here with `--agents 4` local agents and the web server on. The
client is the in-process `incl.bus.client.Client`. It submits `--n` jobs running `true`, paced at a steady rate
(n / (minutes x 60) per second, each submit at its slot in the schedule, at most `--in-flight` submits
outstanding), so that load is the same from the first minute to the last.

Every `--sample` seconds (60) it writes one JSON line to `--out` as it goes (a partial run is still data):
per stack process (controller, local-0.., nats, web, and this client) its VmRSS and VmHWM from /proc/PID/status,
in KiB, and its count of open fds; the jobs submitted, not yet terminal (one `jobs(states=not terminal)` call),
and done (submitted - not terminal); the size of the JetStream store on disk; the host's load average.

At the end it waits for the last jobs, lists them all (page by page) and checks that every one is SUCCEEDED
with exactly one attempt; then it writes a summary line: per process the RSS after warm-up (minute
`--warmup`, default 10, or a third of a shorter run), the mean of the last three samples, the least-squares
slope of RSS against jobs done after warm-up (MiB per 10,000 jobs) and a verdict: "flat" when the fitted
growth over the whole run after warm-up is under 5 MiB or 5% of the warm RSS, else "GROWS". The nats-server
holds the JetStream store, which grows with the jobs by design: its verdict is reported, but read it as that.
The summary is also printed on stdout as one JSON object.

With `--restart`, the controller is then stopped and started again on the same buckets (`incl up` restarts
what died) and its RSS sampled three times, 20 s apart: a fresh process holding the same records, so what the
long run left behind beyond them shows.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from incl_side import NOT_TERMINAL, USER, Stack, free_port  # noqa: E402

from incl.bus.client import Client  # noqa: E402
from incl.proto.messages import JobState  # noqa: E402
from incl.proto.spec import load_spec  # noqa: E402


def log(*a: object) -> None:
    print("[soak]", time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


class WebStack(Stack):
    """The benches' stack with the web server on (Stack.up starts it with `--web-port 0`)."""

    def _incl(self, *argv: str, timeout: float):
        if argv and argv[0] == "up":
            i = argv.index("--web-port")
            argv = (*argv[:i + 1], str(free_port()), *argv[i + 2:])
        return super()._incl(*argv, timeout=timeout)


def proc_sample(pid: int) -> dict | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    out: dict = {"fds": fds}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM", "Threads"):
            out[key.lower()] = int(rest.split()[0])
    return out


def dir_kib(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):  # gone meanwhile
                total += os.stat(os.path.join(root, f)).st_blocks * 512
    return total // 1024


class Soak:
    def __init__(self, stack: Stack, args: argparse.Namespace) -> None:
        self.stack, self.args = stack, args
        self.out = Path(args.out)
        self.submitted = 0
        self.errors = 0
        self.ids: list[str] = []
        self.samples: list[dict] = []
        self.t0 = time.time()

    def write(self, obj: dict) -> None:
        with self.out.open("a") as f:
            f.write(json.dumps(obj) + "\n")

    async def sample(self, client: Client) -> dict:
        try:
            live = len(await client.jobs(states=NOT_TERMINAL, user=USER))
        except Exception as e:  # noqa: BLE001 - a slow listing is a data point, not the end of the soak
            log("listing failed:", repr(e))
            live = None
        procs = {name: proc_sample(pid) for name, pid in self.stack.pids.items()}
        procs["client"] = proc_sample(os.getpid())
        row = {
            "t": round(time.time() - self.t0, 1), "minute": round((time.time() - self.t0) / 60, 2),
            "submitted": self.submitted, "submit_errors": self.errors, "not_terminal": live,
            "done": None if live is None else self.submitted - live,
            "store_kib": dir_kib(self.stack.home / "nats"), "loadavg": os.getloadavg()[0], "procs": procs,
        }
        self.samples.append(row)
        self.write(row)
        rss = " ".join(f"{k}={v['vmrss'] // 1024}M" for k, v in procs.items() if v)
        log(f"min {row['minute']:.1f} submitted={self.submitted} live={live} load={row['loadavg']:.1f} {rss}")
        return row

    async def sampler(self, client: Client, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.sample(client)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.args.sample)

    async def submit_all(self, client: Client) -> None:
        spec = load_spec({"run": "true"})
        period = self.args.minutes * 60 / self.args.n
        gate = asyncio.Semaphore(self.args.in_flight)
        start = time.monotonic()

        async def one() -> None:
            try:
                self.ids.append((await client.submit(spec, USER)).id)
            except Exception as e:  # noqa: BLE001
                self.errors += 1
                log("submit failed:", repr(e))
            finally:
                gate.release()

        async with asyncio.TaskGroup() as tg:
            for i in range(self.args.n):
                delay = start + i * period - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                await gate.acquire()
                self.submitted += 1
                tg.create_task(one())

    async def run(self) -> dict:
        async with Client(self.stack.url, timeout=60.0, name="soak") as client:
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.sampler(client, stop))
                await self.submit_all(client)
                log(f"all {self.submitted} submitted; waiting for the last")
                deadline = time.time() + self.args.drain
                while time.time() < deadline:
                    if not await client.jobs(states=NOT_TERMINAL, user=USER):
                        break
                    await asyncio.sleep(2)
                stop.set()
            await self.sample(client)
            check = await self.check(client)
        out = self.summary(check)
        if self.args.restart:
            out["restarted_controller"] = await self.restarted()
            self.write({"restart": out["restarted_controller"]})
        return out

    async def restarted(self) -> dict:
        """The controller's RSS before and after a restart on the same buckets: what it holds for the jobs it has
        records of (rebuilt at start) against what a long run alone left behind."""
        name = "controller"
        before = proc_sample(self.stack.pids[name])
        os.kill(self.stack.pids[name], signal.SIGTERM)
        while proc_sample(self.stack.pids[name]) is not None:
            await asyncio.sleep(0.2)
        p = await asyncio.to_thread(self.stack._incl, "up", "--web-port", "0", timeout=180)
        state = json.loads((self.stack.home / "stack.json").read_text())
        self.stack.pids = {proc["name"]: proc["pid"] for proc in state["procs"]}
        log(f"controller restarted ({p.returncode}): {p.stdout.strip()[-200:]}")
        after = []
        for _ in range(3):
            await asyncio.sleep(20)
            after.append(proc_sample(self.stack.pids[name]))
            log(f"restarted controller: {after[-1]}")
        return {"before": before, "after": after}

    async def check(self, client: Client) -> dict:
        jobs = await client.jobs(user=USER)
        states: dict[str, int] = {}
        multi = 0
        for j in jobs:
            states[str(j.state)] = states.get(str(j.state), 0) + 1
            multi += len(j.attempts) != 1
        ids = set(self.ids)
        return {"listed": len(jobs), "submitted_ok": len(self.ids), "distinct_ids": len(ids),
                "states": states, "jobs_not_one_attempt": multi,
                "all_succeeded_once": (states.get(str(JobState.SUCCEEDED), 0) == self.args.n == len(jobs)
                                       and multi == 0 and len(ids) == len(self.ids) == self.args.n)}

    def summary(self, check: dict) -> dict:
        warm_min = self.args.warmup if self.args.warmup is not None else self.args.minutes / 3
        after = [s for s in self.samples if s["minute"] >= warm_min and s["done"] is not None]
        per: dict[str, dict] = {}
        for name in self.samples[0]["procs"]:
            pts = [(s["done"], s["procs"][name]["vmrss"] / 1024) for s in after if s["procs"].get(name)]
            if len(pts) < 3:
                continue
            warm = pts[0][1]
            last = sum(p[1] for p in pts[-3:]) / 3
            slope = fit_slope(pts)  # MiB per job
            growth = slope * (pts[-1][0] - pts[0][0])
            per[name] = {"warm_rss_mib": round(warm, 1), "last3_rss_mib": round(last, 1),
                         "max_hwm_mib": round(max(s["procs"][name]["vmhwm"] for s in after
                                                  if s["procs"].get(name)) / 1024, 1),
                         "slope_mib_per_10k_jobs": round(slope * 10_000, 3),
                         "fitted_growth_mib": round(growth, 1),
                         "fds_warm_last": [after[0]["procs"][name]["fds"], after[-1]["procs"][name]["fds"]],
                         "verdict": "flat" if growth < max(5.0, 0.05 * warm) else "GROWS"}
        out = {"summary": True, "n": self.args.n, "minutes": self.args.minutes, "agents": self.args.agents,
               "warmup_minute": warm_min, "wall_s": round(time.time() - self.t0, 1), "check": check, "procs": per,
               "store_kib_end": self.samples[-1]["store_kib"]}
        self.write(out)
        return out


def fit_slope(pts: list[tuple[float, float]]) -> float:
    n = len(pts)
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    return 0.0 if sxx == 0 else sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--cpus", type=float, default=64.0, help="CPUs each agent offers (trivial jobs ask 1)")
    p.add_argument("--in-flight", type=int, default=32, help="most submits outstanding at once")
    p.add_argument("--sample", type=float, default=60.0, help="seconds between samples")
    p.add_argument("--warmup", type=float, default=None, help="minute after which growth counts (default: a third)")
    p.add_argument("--drain", type=float, default=600.0, help="seconds to wait for the last jobs")
    p.add_argument("--out", default=str(HERE / "results" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"))
    p.add_argument("--keep", action="store_true", help="keep the stack's INCL_HOME")
    p.add_argument("--restart", action="store_true",
                   help="at the end, restart the controller on the same buckets and sample its RSS again")
    args = p.parse_args()

    def _term(signum, _frame):  # run the `finally` (incl down) on SIGTERM/SIGHUP too
        raise KeyboardInterrupt(signum)

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGHUP, _term)
    stack = WebStack(args.agents, args.cpus, keep=args.keep)
    try:
        stack.up()
        log(f"stack pids {stack.pids}; writing {args.out}")
        soak = Soak(stack, args)
        soak.write({"start": time.time(), "args": vars(args), "pids": stack.pids, "home": str(stack.home),
                    "host_cpus": os.cpu_count()})
        out = asyncio.run(soak.run())
        print(json.dumps(out, indent=1))
        return 0 if out["check"]["all_succeeded_once"] else 1
    finally:
        stack.down()


if __name__ == "__main__":
    sys.exit(main())
