#!/usr/bin/env python3
"""The Job page's charts and logs in headless Chromium (issue 14), against a real stack, with TensorBoard and
MLflow's UIs on the same 1,000,000-point metric side by side.

    PYTHONPATH=... python bench/web_ui.py [--parts chart,live,logs,peers] [--points 1000000] [--runs 5]

* chart: a job logs one metric of `--points` points (one `incl.log` call each: the SDK has no batch call);
  then the first load of its Job page after the job ended (cold: the server reads the metric stream) and
  `--runs` loads after it (a fresh browser context each, the server keeping the points it read):
  navigation start -> the chart drawn (uPlot's `draw` hook with the server's reduced points), and the same
  moment as the peers get it (the chart's pixels stop changing); then two drags on the chart, each timed from
  the mouse-up to the redraw with the range the server sent.
* live: a job logs its own `time.time()` every `--live-interval` s with the page open; per point, the delay
  from that time to the draw that first shows it (one clock: one host).
* logs: a job prints `--rate` lines/s for `--seconds` s with the page open and following; the longest gap
  between animation frames and the Long Tasks API's entries while it runs; then the downloaded log must hold
  every line once, in order.
* peers: bench/web_ui_peers.py in the peers' own venv (`--peers-python`, default `.peers/bin/python`; see
  bench/setup_web_peers.sh) writes the same series to a TensorBoard event file and an MLflow run, starts
  `tensorboard` and `mlflow ui`, and the same browser times their chart.

The browser is Debian's chromium (/usr/bin/chromium) through Playwright, as in the tests; bench/web_ui_hook.js
is injected before the page's scripts. Prints a table; the JSON goes to bench/results/web_ui.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from incl_side import USER, Stack, free_port  # noqa: E402
from stats import summary  # noqa: E402
from web_ui_browser import Browser, stable_chart  # noqa: E402

from incl.bus.client import Client  # noqa: E402
from incl.cli.stack import wait_port  # noqa: E402
from incl.proto.messages import TERMINAL  # noqa: E402
from incl.proto.spec import load_spec  # noqa: E402

# The series every side logs: a decaying loss with a slow wave and a saw-tooth of noise (deterministic).
SERIES = "1.0 / (1.0 + i / 20000.0) + 0.05 * math.sin(i / 5000.0) + 0.02 * ((i * 7919) % 1000) / 1000.0"

CHART_JOB = f"""
import incl, math, sys, time
n = int(sys.argv[1])
t = time.time()
for i in range(n):
    incl.log({{"loss": {SERIES}}}, step=i)
print(f"logged {{n}} points in {{time.time() - t:.3f}} s", flush=True)
"""

LIVE_JOB = """
import incl, sys, time
n, every = int(sys.argv[1]), float(sys.argv[2])
time.sleep(float(sys.argv[3]))  # the page opens meanwhile
for i in range(n):
    incl.log({"t": time.time()}, step=i)
    time.sleep(every)
"""

# Lines numbered 0..n-1, written `rate` a second in slices of 10 ms (a slice late is not made up by bursts
# larger than one slice's worth at a time, so the rate is at most `rate`).
LOGS_JOB = """
import sys, time
rate, seconds = int(sys.argv[1]), float(sys.argv[2])
n, per = int(rate * seconds), max(1, rate // 100)
time.sleep(float(sys.argv[3]))
out, i, t0 = sys.stdout, 0, time.time()
while i < n:
    k = min(per, n - i)
    out.write("".join(f"line {j:09d} " + "x" * 40 + "\\n" for j in range(i, i + k)))
    out.flush()
    i += k
    ahead = t0 + i / rate - time.time()
    if ahead > 0:
        time.sleep(ahead)
print(f"wrote {n} lines in {time.time() - t0:.3f} s", file=sys.stderr, flush=True)
"""


def on_own_loop(coro: Any) -> Any:
    """Run a coroutine on a loop of its own, in a thread (Playwright's sync API holds this thread's loop)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def log(*a: object) -> None:
    print("[web_ui]", *a, file=sys.stderr, flush=True)


def http_json(url: str, timeout: float = 120.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


async def submit(url: str, run: str, name: str) -> str:
    async with Client(url, timeout=30.0) as client:
        return (await client.submit(load_spec({"run": run, "name": name}), USER)).id


async def wait_state(url: str, job_id: str, ended: bool, timeout: float) -> str:
    async with Client(url, timeout=30.0) as client:
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = (await client.job(job_id)).state
            if (state in TERMINAL) if ended else (str(state) == "RUNNING" or state in TERMINAL):
                return str(state)
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{job_id} not {'ended' if ended else 'running'} in {timeout} s")


class WebStack:
    """`incl up` (one local agent) and `python -m incl.web` beside it, as bench/web_jobs_page.py does."""

    def __init__(self) -> None:
        self.stack = Stack(1, 8, keep=False)
        self.web: subprocess.Popen | None = None
        self.base = ""

    def __enter__(self) -> WebStack:
        self.stack.up()
        port = free_port()
        env = {**os.environ, "INCL_HOME": str(self.stack.home)}
        self.web = subprocess.Popen([sys.executable, "-m", "incl.web", "--nats", self.stack.url, "--port", str(port)],
                                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_port(port, 30):
            raise RuntimeError("the web server did not start")
        self.base = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.web is not None:
            self.web.terminate()
            self.web.wait(10)
        self.stack.down()

    def run_job(self, script: str, argv: list[str], name: str, work: Path) -> str:
        path = work / f"{name}.py"
        path.write_text(script)
        return on_own_loop(submit(self.stack.url, f"{sys.executable} {path} {' '.join(argv)}", name))

    def log_text(self, job_id: str) -> str:
        with urllib.request.urlopen(f"{self.base}/api/jobs/{job_id}/logs", timeout=300) as r:
            return r.read().decode()


# ------------------------------------------------------------------------------------------------- chart

def chart_part(ws: WebStack, browser: Browser, args: argparse.Namespace, work: Path) -> dict:
    t = time.time()
    job = ws.run_job(CHART_JOB, [str(args.points)], "metric-1m", work)
    state = on_own_loop(wait_state(ws.stack.url, job, True, 1800))
    job_s = time.time() - t
    text = ws.log_text(job)
    log(f"1M job {state} in {job_s:.1f} s: {text.strip()}")
    logged_s = float(text.split(" in ")[1].split()[0])
    url = f"{ws.base}/jobs/{job}"
    # The first load after the job ended is the cold one: the server reads the metric stream (and keeps what it
    # read, incl.web.pointcache); the loads after it, and the peers', are timed as a person reopening the chart.
    cold = browser.incl_load(url)
    log(f"INCL cold load: {cold}")
    t = time.time()
    body = http_json(f"{ws.base}/api/jobs/{job}/metrics?points=2000")
    api_s = time.time() - t
    total = body["metrics"]["loss"]["total"]
    if total != args.points:
        raise RuntimeError(f"the server has {total} points of {args.points}")
    loads = []
    for k in range(args.runs):
        loads.append(browser.incl_load(url))
        log(f"INCL load {k + 1}/{args.runs}: {loads[-1]}")
    stable = [stable_chart(browser, url, "/metrics", ".chart .u-wrap") for _ in range(args.runs)]
    log(f"INCL stable: {stable}")
    return {"job": job, "state": state, "points": total, "logging_s": logged_s, "job_s": round(job_s, 1),
            "api_metrics_2000_s": round(api_s, 3), "cold": cold, "loads": loads, "stable": stable,
            "drawn_ms_median": statistics.median(x["drawn_ms"] for x in loads),
            "zoom1_ms_median": statistics.median(x["zoom1_ms"] for x in loads),
            "zoom2_ms_median": statistics.median(x["zoom2_ms"] for x in loads),
            "stable_ms_median": statistics.median(x["stable_ms"] for x in stable)}


# -------------------------------------------------------------------------------------------------- live

def live_part(ws: WebStack, browser: Browser, args: argparse.Namespace, work: Path) -> dict:
    job = ws.run_job(LIVE_JOB, [str(args.live_points), str(args.live_interval), "3"], "live", work)
    on_own_loop(wait_state(ws.stack.url, job, False, 60))
    duration = 3 + args.live_points * args.live_interval * 1.5 + 10
    res = browser.live(f"{ws.base}/jobs/{job}", args.live_points, duration)
    on_own_loop(wait_state(ws.stack.url, job, True, 120))
    lat = res.pop("latency_ms")
    return {"job": job, **res, "latency_ms": summary(lat)}


# -------------------------------------------------------------------------------------------------- logs

def logs_part(ws: WebStack, browser: Browser, args: argparse.Namespace, work: Path) -> dict:
    n = int(args.rate * args.seconds)
    job = ws.run_job(LOGS_JOB, [str(args.rate), str(args.seconds), "3"], "lines", work)
    on_own_loop(wait_state(ws.stack.url, job, False, 60))
    res = browser.follow_logs(f"{ws.base}/jobs/{job}", 3 + args.seconds + 60)
    state = on_own_loop(wait_state(ws.stack.url, job, True, 300))
    t = time.time()
    text = ws.log_text(job)
    download_s = time.time() - t
    lines = text.splitlines()
    wrote = [ln for ln in lines if ln.startswith("wrote ")]
    numbered = [ln for ln in lines if ln.startswith("line ")]
    want = [f"line {j:09d} " + "x" * 40 for j in range(n)]
    missing = len(set(want) - set(numbered))
    return {"job": job, "state": state, "lines": n, "rate": args.rate, "job_says": wrote[0] if wrote else None,
            "downloaded": len(numbered), "in_order_once": numbered == want, "missing": missing,
            "extra": len(numbered) - (n - missing), "download_s": round(download_s, 2), **res}


# ------------------------------------------------------------------------------------------------- peers

def peers_part(args: argparse.Namespace, browser: Browser, work: Path) -> dict:
    """The peers' data written and their servers started by web_ui_peers.py in their own venv; the same
    browser times their charts here."""
    out: dict[str, Any] = {}
    for peer in args.peers.split(","):
        port = free_port()
        proc = subprocess.Popen([args.peers_python, str(HERE / "web_ui_peers.py"), peer, str(work / peer),
                                 str(args.points), str(port), SERIES], stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            ready = json.loads(proc.stdout.readline() or "{}")  # one line once the data is written and served
            if "url" not in ready:
                raise RuntimeError(f"{peer} did not start")
            log(f"{peer}: {ready}")
            runs = []
            for _ in range(args.runs):
                try:
                    runs.append(browser.peer_load(peer, ready))
                except Exception as exc:  # noqa: BLE001  (a peer that never settles is a result, not a crash)
                    runs.append({"error": f"{type(exc).__name__}: {exc}"[:300]})
                log(f"{peer} load: {runs[-1]}")
            ok = [r["stable_ms"] for r in runs if "stable_ms" in r]
            out[peer] = {**ready, "loads": runs, "stable_ms_median": statistics.median(ok) if ok else None}
        finally:
            os.killpg(proc.pid, signal.SIGTERM)  # mlflow ui's huey consumers outlive their parent: the group
            time.sleep(3)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(20)
    return out


def save(res: dict, out: Path) -> None:
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")


def table(res: dict) -> str:
    rows = ["| | INCL | TensorBoard | MLflow |", "| --- | ---: | ---: | ---: |"]
    c, p = res.get("chart", {}), res.get("peers", {})

    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:,.0f} ms"

    inc = c.get("stable_ms_median")
    tb = p.get("tensorboard", {}).get("stable_ms_median")
    mf = p.get("mlflow", {}).get("stable_ms_median")
    rows.append(f"| chart's pixels final (median) | {ms(inc)} | {ms(tb)} | {ms(mf)} |")
    if inc and (tb or mf):
        rows.append(f"| × INCL | 1 | {tb / inc if tb else 0:.1f}× | {mf / inc if mf else 0:.1f}× |")
    if "cold" in c:
        rows.append(f"| uPlot draw hook, cold first load | {ms(c['cold']['drawn_ms'])} | | |")
    rows.append(f"| uPlot draw hook (median) | {ms(c.get('drawn_ms_median'))} | | |")
    rows.append(f"| zoom 1 / zoom 2 redraw | {ms(c.get('zoom1_ms_median'))} / {ms(c.get('zoom2_ms_median'))} | | |")
    for name, tag in (("tensorboard", "TensorBoard"), ("mlflow", "MLflow")):
        if name in p:
            rows.append(f"| writing {tag}: {p[name].get('write_s')} s, data served after {p[name].get('ready_s')} s | | | |")
    if "live" in res:
        lat = res["live"]["latency_ms"]
        rows.append(f"| live: incl.log → drawn p50 / p99 (n={lat['n']}) | {lat['p50']:.0f} / {lat['p99']:.0f} ms | | |")
    if "logs" in res:
        lg = res["logs"]
        rows.append(f"| {lg['rate']:,} lines/s: longest frame, long tasks max | {lg['longest_frame_ms']:.0f} ms, "
                    f"{lg['longtask_max_ms']:.0f} ms | | |")
        rows.append(f"| downloaded log: all lines once in order | {lg['in_order_once']} (missing {lg['missing']}) | | |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", default="chart,live,logs,peers")
    p.add_argument("--points", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--live-points", type=int, default=300)
    p.add_argument("--live-interval", type=float, default=0.05)
    p.add_argument("--rate", type=int, default=100_000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--peers", default="tensorboard,mlflow")
    p.add_argument("--peers-python", default=str(HERE.parent / ".peers" / "bin" / "python"))
    p.add_argument("--out", default=str(HERE / "results" / "web_ui.json"))
    p.add_argument("--shots", default=None, help="a folder for screenshots of the pages at the end of each part")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    res: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                           "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    work = Path(tempfile.mkdtemp(prefix="incl-webui-", dir="/tmp"))
    shots = Path(args.shots) if args.shots else None
    if shots:
        shots.mkdir(parents=True, exist_ok=True)
    with Browser(HERE / "web_ui_hook.js", shots) as browser:
        if parts & {"chart", "live", "logs"}:
            with WebStack() as ws:
                for name, fn in (("chart", chart_part), ("live", live_part), ("logs", logs_part)):
                    if name in parts:
                        res[name] = fn(ws, browser, args, work)
                        res[f"load_after_{name}"] = os.getloadavg()
                        log(name, json.dumps(res[name])[:2000])
                        save(res, Path(args.out))
        if "peers" in parts:
            res["peers"] = peers_part(args, browser, work)
    res["load_after"] = os.getloadavg()
    subprocess.run(["rm", "-rf", str(work)], check=False)
    out = Path(args.out)
    save(res, out)
    print(table(res))
    print(f"(JSON: {out})")


if __name__ == "__main__":
    main()
