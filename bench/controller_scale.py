#!/usr/bin/env python3
"""Controller scale: N simulated agents, 8 GPUs each, heartbeating as the controller paces them.

Measures the controller's CPU and the heartbeat-to-state lag at N = 500, 2,000 and 5,000 (or as given).
Targets (issue 16): 2,000 agents within 30 % of one core, 10,000 within 50 % with a dead agent found within
3 heartbeat intervals (``--detect``), lag p99 < 1 s. The controller's base interval here is 1 s; past
``max_heartbeats_per_second`` (its default, or ``--max-hps``) it stretches the interval it gives each agent
(``incl.controller.pacing``), and the simulated agents obey it as ``incl.agent`` does. ``--max-hps 0``
gives the fixed 1 s clock of earlier runs (no pacing), for side-by-side figures.

    .venv/bin/python bench/controller_scale.py                        # N = 500, 2000, 5000, one stack each
    .venv/bin/python bench/controller_scale.py --n 2000 --window 30
    .venv/bin/python bench/controller_scale.py --n 5000 --sim-procs 2  # when one simulator saturates a core
    .venv/bin/python bench/controller_scale.py --n 2000 --profile 20 --profile-register   # + py-spy
    .venv/bin/python bench/controller_scale.py --n 2000 --jobs 5000    # with 5,000 finished jobs on record
    .venv/bin/python bench/controller_scale.py --n 2000 10000 --detect --label paced   # + liveness detection
    .venv/bin/python bench/controller_scale.py --n 2000 --max-hps 0 --label fixed      # the unpaced 1 s clock

One JSON line per N on stdout, then a table; progress on stderr. Results are merged (by N, simulator
processes, jobs and --label) into ``bench/results/controller_scale.json``.

The stack (fresh for every N)
-----------------------------
* a real ``nats-server -js`` (the binary next to this interpreter) on a free port, store in a temp dir;
* a real controller, ``python -m incl.controller --config cfg.yaml`` with ``heartbeat_interval: 1.0``,
  ``agent_lost_after: 10``, ``log_level: warning``; everything else at its default;
* the simulated agents: ``--sim-procs`` processes (default 1) of this script in ``--worker`` mode, each one
  asyncio loop with ``--conns`` NATS connections (default 4) shared round-robin by its agents.

Each simulated agent registers (``RegisterRequest``: 8 GPUs of 80 GiB, a list of 8 ``GpuInfo``), then sends
a ``HeartbeatRequest`` every interval the last reply gave, agent i first at ``i/N`` of its interval (so the N
heartbeats are spread evenly, across processes too), each carrying a fresh ``GpuTelemetry`` of 8
``GpuStats`` (utilization, memory, power, temperature, one sample). It uses the agent's own call,
``incl.bus.connection.Bus.request``, with the agent's default timeout (5 s), and awaits the reply before its
next beat (a beat whose slot has passed is skipped and counted); a reply with ``registered=False`` makes it
register again, as ``incl.agent`` does. The simulated agents run no jobs: ``running`` is empty and the GPUs
carry no job ids (``--jobs`` puts finished jobs in the jobs bucket before the controller starts instead).

What is measured (over ``--window`` seconds, ``--warmup`` seconds after every agent has registered, or
after ``--register-timeout`` seconds if they have not: the run is then marked INCOMPLETE)
---------------------------------------------------------------------------------------------------
* controller CPU: delta of utime+stime in ``/proc/<pid>/stat`` over the window's wall time, in % of one
  core; the same for nats-server and each simulator process; and µs of controller CPU per heartbeat answered;
* heartbeat-to-state lag: from just before ``request()`` to its reply, for the beats sent in the window.
  The controller replies once it has applied the heartbeat to its state (``Agents.heartbeat`` runs before
  the reply is encoded), so this bounds the time to state from above; it includes the simulator's own
  event-loop delay, which is why the simulator's CPU and its firing delay (slot -> send) are reported.
  A timed-out beat counts as a failure and, in the percentiles, as a lag of the timeout (5 s);
* after the window: ``ListAgentsRequest`` once (is every agent alive, how stale is its ``last_seen``,
  how big and slow is the reply), the controller's RSS and its warnings.

The host's load is recorded with each run (``/proc/loadavg``, and ``others_cpu_pct``: the busy jiffies of
``/proc/stat`` less this stack's, in % of one core; ``contended`` above 50 %): on a shared machine the lag
figures move with it, the CPU figures much less. ``--profile S`` runs ``py-spy record`` on the controller for
S seconds after the window (so that its CPU does not count), ``--profile-register`` during registration;
the summary gives self and inclusive time per function and the share of each area (INCL handler, nats-py,
event loop, scheduler pass).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from stats import percentile, summary  # noqa: E402  (bench/stats.py)

from incl.bus.connection import Bus, connect  # noqa: E402
from incl.proto import errors, subjects  # noqa: E402
from incl.proto.codec import Decoder, encode  # noqa: E402
from incl.proto.messages import (  # noqa: E402
    AgentInfo,
    Envelope,
    ErrorReply,
    HeartbeatReply,
    HeartbeatRequest,
    ListAgentsReply,
    ListAgentsRequest,
    PingReply,
    PingRequest,
    RegisterReply,
    RegisterRequest,
    Resources,
)
from incl.proto.telemetry import GpuInfo, GpuStats, GpuTelemetry  # noqa: E402

NATS_SERVER = Path(sys.executable).parent / "nats-server"
RESULTS = HERE / "results" / "controller_scale.json"
PY_SPY = "/tmp/pyspy/bin/py-spy"
INTERVAL = 1.0  # heartbeat_interval in the controller's config
TIMEOUT = 5.0  # the agent's default request_timeout
GPUS = 8
GPU_MEM = 80 * 1024**3
GPU_MODEL = "NVIDIA H100 80GB HBM3"
TARGET_N, TARGET_CPU_PCT, TARGET_P99_MS = 2000, 30.0, 1000.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(*a: object) -> None:
    print("[controller_scale]", *a, file=sys.stderr, flush=True)


# --- the simulated agents (worker process) ------------------------------------------------------------------


def agent_id(i: int) -> str:
    return f"sim-{i:05d}"


def agent_info(i: int) -> AgentInfo:
    gpus = [GpuInfo(index=g, uuid=f"GPU-{i:05d}-{g}", model=GPU_MODEL, memory_total=GPU_MEM) for g in range(GPUS)]
    return AgentInfo(agent_id=agent_id(i), hostname=f"gpu-node-{i:05d}", provider="bench",
                     capacity=Resources(cpus=208, memory=2 * 1024**4, gpus=GPUS, gpu_model=GPU_MODEL),
                     gpus=gpus, version="bench")


def telemetry(rng: random.Random, start: float, end: float) -> GpuTelemetry:
    """One heartbeat window of 8 busy-looking GPUs: every reading NVML gives on an H100."""
    stats = []
    for g in range(GPUS):
        util = rng.uniform(0, 100)
        mem_util = rng.uniform(0, 60)
        stats.append(GpuStats(index=g, samples=1, util_gpu_mean=util, util_gpu_max=min(100.0, util + rng.uniform(0, 10)),
                              util_mem_mean=mem_util, util_mem_max=min(100.0, mem_util + rng.uniform(0, 10)),
                              memory_used=rng.randrange(GPU_MEM // 4, GPU_MEM), memory_total=GPU_MEM,
                              power_w=rng.uniform(90, 700), temperature_c=float(rng.randrange(30, 85))))
    return GpuTelemetry(start=start, end=end, gpus=stats)


class Tally:
    """What one simulator saw for the beats it sent inside the measurement window."""

    def __init__(self) -> None:
        self.window: tuple[float, float] | None = None
        self.lags: list[float] = []  # seconds, replies only
        self.fire_delays: list[float] = []  # slot -> send, seconds
        self.intervals: list[float] = []  # the heartbeat interval each reply gave
        self.timeouts = self.errors = self.unregistered = self.skipped = self.reregistered = 0
        self.error_kinds: collections.Counter[str] = collections.Counter()

    def inside(self, ts: float) -> bool:
        return self.window is not None and self.window[0] <= ts < self.window[1]


class SimAgent:
    """One agent's life, as `incl.agent.app` lives it: register, then heartbeat; registers again whenever
    a reply says the controller does not know it (`registered=False`)."""

    def __init__(self, i: int, n: int, bus: Bus, tally: Tally) -> None:
        self.i, self.bus, self.tally = i, bus, tally
        self.share = i / n  # agent i's first beat is this share of its interval in: N beats spread evenly
        self.interval = INTERVAL  # the controller's latest word (each reply sets it, as `incl.agent` obeys it)
        self.rng = random.Random(i)
        self.last = time.time()

    async def register(self, attempts: int = 3) -> bool:
        for _ in range(attempts):
            try:
                req = RegisterRequest(meta=Envelope.new(agent_id(self.i)), info=agent_info(self.i))
                reply = await self.bus.request(subjects.agent_api(agent_id(self.i), subjects.REGISTER), req, RegisterReply, TIMEOUT)
                self.interval = reply.heartbeat_interval
                return True
            except errors.InclError as exc:
                log(f"register {agent_id(self.i)} failed: {exc}")
        return False

    async def live(self, sem: asyncio.Semaphore, registered: list[int], stop: asyncio.Event) -> None:
        async with sem:  # a bounded number of registrations in flight, like agents booting over time
            ok = not stop.is_set() and await self.register()
        registered.append(ok)
        if ok:
            await self.beat_forever(stop)

    async def beat_forever(self, stop: asyncio.Event) -> None:
        slot = time.time() + self.share * self.interval
        while not stop.is_set():
            delay = slot - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if stop.is_set():
                return
            if await self._beat(slot) is False:
                if self.tally.inside(slot):
                    self.tally.reregistered += 1
                await self.register()
            now, slot = time.time(), slot + self.interval
            while slot < now:  # the reply came after the next slot: that beat is skipped, as an agent would
                if self.tally.inside(slot):
                    self.tally.skipped += 1
                slot += self.interval

    async def _beat(self, slot: float) -> bool | None:
        """One heartbeat: its `registered` flag, None if it failed."""
        now = time.time()
        req = HeartbeatRequest(meta=Envelope.new(agent_id(self.i)), agent_id=agent_id(self.i),
                               telemetry=telemetry(self.rng, self.last, now))
        self.last, sent, t = now, time.time(), time.perf_counter()
        try:
            reply = await self.bus.request(subjects.agent_api(agent_id(self.i), subjects.HEARTBEAT), req, HeartbeatReply, TIMEOUT)
        except errors.Unavailable:
            reply, kind = None, "timeout"
        except Exception as exc:  # noqa: BLE001  a failure is counted, never fatal
            reply, kind = None, type(exc).__name__
        lag = time.perf_counter() - t
        tally = self.tally
        if tally.inside(sent):
            tally.fire_delays.append(sent - slot)
            if reply is None and kind == "timeout":
                tally.timeouts += 1
            elif reply is None:
                tally.errors += 1
                tally.error_kinds[kind] += 1
            else:
                tally.lags.append(lag)
                tally.unregistered += not reply.registered
                tally.intervals.append(reply.heartbeat_interval)
        if reply is not None:
            self.interval = reply.heartbeat_interval
        return None if reply is None else reply.registered


async def worker(args: argparse.Namespace) -> None:
    """Simulate agents [first, first+count) of N; protocol with the parent on stdin/stdout (JSON lines):
    out {"registered": ...} once every agent has registered; in "t0 t1" (the window); in EOF: stop;
    out the tally."""
    buses = [await connect(args.url, f"incl-scale-sim-{args.first}-{c}", connect_timeout=5.0, reconnect_wait=0.5,
                           request_timeout=TIMEOUT) for c in range(args.conns)]
    tally = Tally()
    agents = [SimAgent(i, args.n, buses[k % len(buses)], tally)
              for k, i in enumerate(range(args.first, args.first + args.count))]
    sem, registered, stop = asyncio.Semaphore(args.register_concurrency), [], asyncio.Event()

    async def report_registration() -> None:
        t, last = time.time(), 0.0
        while len(registered) < len(agents):
            await asyncio.sleep(0.05)
            if time.time() - last >= 5.0:
                last = time.time()
                print(json.dumps({"progress": sum(registered), "of": len(agents)}), flush=True)
        print(json.dumps({"registered": sum(registered), "of": len(agents), "seconds": round(time.time() - t, 3)}),
              flush=True)

    async def follow_parent() -> None:
        line = await asyncio.to_thread(sys.stdin.readline)  # "t0 t1": the measurement window
        tally.window = tuple(map(float, line.split()))  # type: ignore[assignment]
        await asyncio.to_thread(sys.stdin.read)  # EOF: stop; every beat in flight ends within the timeout
        stop.set()

    async with asyncio.TaskGroup() as tg:
        for a in agents:
            tg.create_task(a.live(sem, registered, stop))
        tg.create_task(report_registration())
        await follow_parent()
    for bus in buses:
        await bus.close()
    print(json.dumps({
        "lags": tally.lags, "fire_delays": tally.fire_delays, "intervals": tally.intervals, "timeouts": tally.timeouts, "errors": tally.errors,
        "error_kinds": dict(tally.error_kinds), "unregistered": tally.unregistered, "skipped": tally.skipped,
        "reregistered": tally.reregistered,
    }), flush=True)


# --- the stack (parent process) -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def host_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all cores."""
    vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = vals[3] + vals[4]
    return sum(vals) - idle, sum(vals)


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


class Stack:
    """nats-server, the controller and the simulators, as real processes; stop() ends every one of them."""

    def __init__(self, tmp: Path, n: int, jobs: int, max_hps: float | None = None) -> None:
        self.tmp, self.n, self.jobs, self.max_hps = tmp, n, jobs, max_hps
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}  # type: ignore[type-arg]

    def _spawn(self, name: str, argv: list[str], **kw) -> subprocess.Popen:  # type: ignore[no-untyped-def,type-arg]
        with open(self.tmp / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(argv, stderr=out, stdout=kw.pop("stdout", out), **kw)
        self.procs[name] = proc
        return proc

    def start_nats(self) -> None:
        self._spawn("nats", [str(NATS_SERVER), "-js", "-sd", str(self.tmp / "store"), "-a", "127.0.0.1",
                             "-p", str(self.port)], stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        raise RuntimeError("nats-server did not start")

    def start_controller(self) -> None:
        cfg = self.tmp / "controller.yaml"
        paced = {} if self.max_hps is None else {"max_heartbeats_per_second": self.max_hps or 1e9}
        if self.max_hps == 0:  # the fixed clock of earlier runs: no pacing, no jitter
            paced["heartbeat_jitter"] = 0.0
        cfg.write_text(json.dumps({"nats_url": self.url, "controller_id": "bench", "heartbeat_interval": INTERVAL,
                                   "agent_lost_after": 10.0, "log_level": "warning", **paced}))  # JSON is YAML
        self._spawn("controller", [sys.executable, "-m", "incl.controller", "--config", str(cfg)],
                    stdin=subprocess.DEVNULL)
        asyncio.run(wait_ping(self.url))

    def start_sims(self, procs: int, conns: int, register_concurrency: int) -> list[subprocess.Popen]:  # type: ignore[type-arg]
        sims, per = [], -(-self.n // procs)
        for p in range(procs):
            first, count = p * per, min(per, self.n - p * per)
            sims.append(self._spawn(f"sim{p}", [
                sys.executable, __file__, "--worker", "--url", self.url, "--n", str(self.n), "--first", str(first),
                "--count", str(count), "--conns", str(conns), "--register-concurrency", str(register_concurrency),
            ], stdin=subprocess.PIPE, stdout=subprocess.PIPE))
        return sims

    def stop(self) -> None:
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM if not name.startswith("sim") else signal.SIGKILL)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def warnings(self) -> dict[str, int]:
        """The controller's warning/error events, by name (it logs JSON lines at level warning)."""
        counts: collections.Counter[str] = collections.Counter()
        for line in (self.tmp / "controller.log").read_text(errors="replace").splitlines():
            try:
                counts[json.loads(line).get("event", "?")] += 1
            except (ValueError, AttributeError):
                counts["<non-json line>"] += 1
        return dict(counts)


async def wait_ping(url: str, timeout: float = 30.0) -> None:
    async with await connect(url, "incl-scale-ping", connect_timeout=2.0, reconnect_wait=0.2,
                             request_timeout=1.0) as bus:
        deadline = time.monotonic() + timeout
        while True:
            try:
                await bus.request(subjects.user_api("bench", subjects.PING), PingRequest(meta=Envelope.new("bench")), PingReply, 1.0)
                return
            except errors.Unavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)


async def preload_jobs(url: str, count: int) -> None:
    """Put `count` finished jobs in the jobs bucket before the controller starts (it loads them all)."""
    from incl.bus.streams import ensure_buckets
    from incl.proto.messages import Attempt, Job, JobState
    from incl.proto.spec import load_spec

    async with await connect(url, "incl-scale-preload", connect_timeout=2.0, reconnect_wait=0.2,
                             request_timeout=10.0) as bus:
        kv = (await ensure_buckets(bus))[subjects.JOBS_BUCKET]
        spec, now = load_spec({"run": "python train.py", "resources": {"gpus": 8}}), time.time()
        for k in range(count):
            job_id = f"job{k:07d}"
            att = Attempt(number=1, agent_id=agent_id(k), state=JobState.SUCCEEDED, assigned_at=now - 60,
                          started_at=now - 59, ended_at=now - 1, exit_code=0)
            job = Job(id=job_id, spec=spec, user="bench", state=JobState.SUCCEEDED, submitted_at=now - 61,
                      updated_at=now - 1, attempts=[att], exit_code=0)
            await kv.put(job_id, encode(job))


async def check_agents(url: str, n: int) -> dict:
    """One `incl agents` listing after the window, page by page: does the controller's state hold every agent,
    fresh? (Under a stretched heartbeat interval, last_seen may be as old as one interval.)"""
    bus = await connect(url, "incl-scale-check", connect_timeout=2.0, reconnect_wait=0.2, request_timeout=10.0)
    t, views, size, pages, after = time.perf_counter(), [], 0, 0, None
    try:
        while True:  # raw, to measure the replies' size
            data = await bus.request_raw(subjects.user_api("bench", subjects.LIST_AGENTS), encode(ListAgentsRequest(
                meta=Envelope.new("bench"), after=after)), timeout=10.0)
            reply = Decoder(ListAgentsReply | ErrorReply).decode(data)
            if not isinstance(reply, ListAgentsReply):
                return {"ok": False, "error": f"{reply.code}: {reply.message}",
                        "seconds": round(time.perf_counter() - t, 3)}
            views += reply.agents
            size, pages = max(size, len(data)), pages + 1
            if reply.next is None:
                break
            after = reply.next
    except Exception as exc:  # noqa: BLE001  reported, not fatal
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}", "seconds": round(time.perf_counter() - t, 3)}
    finally:
        await bus.close()
    seconds, now = time.perf_counter() - t, time.time()
    alive = [v for v in views if v.record.state == "alive" and v.record.info.agent_id != "probe-agent"]
    stale = [now - v.record.last_seen for v in alive]
    return {"ok": len(alive) == n, "alive": len(alive), "with_telemetry": sum(v.telemetry is not None for v in alive),
            "last_seen_age_max_s": round(max(stale), 3) if stale else None, "pages": pages,
            "largest_reply_bytes": size, "seconds": round(seconds, 3)}


async def detect_loss(url: str) -> dict:
    """A probe agent registers, beats as told, then goes silent; a second process of it asks to register every
    0.25 s with another instance, which the controller refuses while the first counts as alive: the first
    accepted register is the moment the silent one was declared lost."""
    bus = await connect(url, "incl-scale-probe", connect_timeout=2.0, reconnect_wait=0.2, request_timeout=TIMEOUT)
    try:
        probe = "probe-agent"
        info = AgentInfo(agent_id=probe, hostname="probe", capacity=Resources(cpus=1, memory=1 << 30))
        reply = await bus.request(subjects.agent_api(probe, subjects.REGISTER), RegisterRequest(meta=Envelope.new(probe), info=info,
                                                                     instance="first"), RegisterReply, TIMEOUT)
        interval = reply.heartbeat_interval
        for _ in range(2):
            await asyncio.sleep(interval)
            beat = await bus.request(subjects.agent_api(probe, subjects.HEARTBEAT), HeartbeatRequest(
                meta=Envelope.new(probe), agent_id=probe, instance="first"), HeartbeatReply, TIMEOUT)
            interval = beat.heartbeat_interval
        silent_from = time.time()
        while True:
            await asyncio.sleep(0.25)
            try:
                await bus.request(subjects.agent_api(probe, subjects.REGISTER), RegisterRequest(meta=Envelope.new(probe), info=info,
                                                                     instance="second"), RegisterReply, TIMEOUT)
                break
            except errors.Conflict:
                continue
        seconds = time.time() - silent_from
        return {"interval_s": round(interval, 2), "lost_after_s": round(seconds, 2),
                "intervals": round(seconds / interval, 2)}
    finally:
        await bus.close()


class Lines:
    """JSON lines from a simulator's stdout, read with select() and our own buffer: a buffered readline would
    hide a second line already read from the pipe from the next select()."""

    def __init__(self, proc: subprocess.Popen) -> None:  # type: ignore[type-arg]
        assert proc.stdout is not None
        self.proc, self.fd, self.buf = proc, proc.stdout.fileno(), bytearray()

    def until(self, key: str, deadline: float) -> tuple[dict | None, dict]:
        """The first line holding `key` before `deadline`, or None; and the last line read."""
        last: dict = {}
        while True:
            while b"\n" not in self.buf:
                ready, _, _ = select.select([self.fd], [], [], max(0.0, deadline - time.time()))
                if not ready:
                    return None, last
                chunk = os.read(self.fd, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"simulator {self.proc.pid} exited ({self.proc.wait()}): see its log")
                self.buf += chunk
            line, _, rest = bytes(self.buf).partition(b"\n")
            self.buf = bytearray(rest)
            last = json.loads(line)
            if key in last:
                return last, last


def sleep_until(ts: float) -> None:
    time.sleep(max(0.0, ts - time.time()))


# --- one run ------------------------------------------------------------------------------------------------


class Meter:
    """CPU ticks of named processes and of the host, between two snapshots."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.start = self._snap()

    def _snap(self) -> tuple[float, dict[str, int], tuple[int, int]]:
        return time.time(), {k: cpu_ticks(p) for k, p in self.pids.items()}, host_ticks()

    def stop(self) -> dict:
        (w0, c0, (b0, t0)), (w1, c1, (b1, t1)) = self.start, self._snap()
        wall = w1 - w0
        pct = {k: round(100.0 * (c1[k] - c0[k]) / CLK_TCK / wall, 1) for k in self.pids}
        busy = (b1 - b0) / max(1, t1 - t0)  # fraction of all cores
        others = busy * (os.cpu_count() or 1) * 100.0 - sum(pct.values())
        return {"wall_s": round(wall, 2), "cpu_pct": pct, "host_busy_pct_of_all_cores": round(100.0 * busy, 1),
                "others_cpu_pct": round(max(0.0, others), 1)}  # what the host's other processes used, % of a core


def run_one(args: argparse.Namespace, n: int) -> dict:
    """One fresh stack at N agents: register them all, measure a window, then check and profile."""
    tmp = Path(tempfile.mkdtemp(prefix=f"incl-scale-{n}-"))
    stack = Stack(tmp, n, args.jobs, args.max_hps)
    log(f"N={n}: stack in {tmp}, load average {loadavg():.2f}")
    result: dict = {"n": n, "gpus_per_agent": GPUS, "sim_procs": args.sim_procs, "conns_per_sim": args.conns,
                    "jobs_on_record": args.jobs, "max_hps": args.max_hps, "label": args.label, "window_s": args.window, "load_avg_start": loadavg(),
                    "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    spies: list[Spy] = []
    try:
        stack.start_nats()
        if args.jobs:
            asyncio.run(preload_jobs(stack.url, args.jobs))
        stack.start_controller()
        ctl = stack.procs["controller"].pid
        if args.profile_register:
            spies.append(Spy(args.py_spy, ctl, f"controller_register_n{n}_jobs{args.jobs}"))
        sims = stack.start_sims(args.sim_procs, args.conns, args.register_concurrency)
        pipes = [Lines(s) for s in sims]
        result.update(register_phase(pipes, args.register_timeout))
        if args.profile_register:
            result["profile_register"] = spies[-1].stop()
        log(f"N={n}: {result['registered']} agents registered in {result['register_s']} s"
            + ("" if result["registration_complete"] else " (INCOMPLETE: measuring anyway)"))
        result.update(measure_window(args, stack, sims))
        if args.profile:
            spies.append(Spy(args.py_spy, ctl, f"controller_n{n}_jobs{args.jobs}"))
            time.sleep(args.profile)
            result["profile"] = spies[-1].stop()
        result["controller_rss_mb"] = rss_mb(ctl)
        if args.detect:
            result["detection"] = asyncio.run(detect_loss(stack.url))
        result["list_agents"] = asyncio.run(check_agents(stack.url, n))  # under load: last_seen must be fresh
        result.update(tally(stop_sims(pipes), args.window, n))
        result["controller_warnings"] = stack.warnings()
    except Exception as exc:  # noqa: BLE001  a run that breaks is a result too
        log(f"N={n}: run failed: {exc!r}")
        result["error"] = repr(exc)
    finally:
        for spy in spies:
            spy.stop()
        stack.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    verdict(result)
    return result


def register_phase(pipes: list[Lines], timeout: float) -> dict:
    t = time.time()
    got = [p.until("registered", t + timeout) for p in pipes]
    done = all(reg is not None for reg, _ in got)
    count = sum(reg["registered"] if reg else last.get("progress", 0) for reg, last in got)
    return {"registered": count, "registration_complete": done, "register_s": round(time.time() - t, 2)}


def measure_window(args: argparse.Namespace, stack: Stack, sims: list[subprocess.Popen]) -> dict:  # type: ignore[type-arg]
    t0 = time.time() + args.warmup
    t1 = t0 + args.window
    for s in sims:
        s.stdin.write(f"{t0!r} {t1!r}\n".encode())  # type: ignore[union-attr]
        s.stdin.flush()  # type: ignore[union-attr]
    sleep_until(t0)
    meter = Meter({"controller": stack.procs["controller"].pid, "nats": stack.procs["nats"].pid,
                   **{f"sim{k}": s.pid for k, s in enumerate(sims)}})
    sleep_until(t1)
    return {**meter.stop(), "load_avg_end": loadavg()}


def stop_sims(pipes: list[Lines]) -> list[dict]:
    for p in pipes:
        p.proc.stdin.close()  # type: ignore[union-attr]
    outs = [p.until("lags", time.time() + TIMEOUT + 60)[0] for p in pipes]
    if any(o is None for o in outs):
        raise RuntimeError("a simulator did not report its tally")
    return outs  # type: ignore[return-value]


def tally(outs: list[dict], window: float, n: int) -> dict:
    lags = [x for o in outs for x in o["lags"]]
    timeouts = sum(o["timeouts"] for o in outs)
    errs = sum(o["errors"] for o in outs)
    with_failures = lags + [TIMEOUT] * (timeouts + errs)
    fire = [x for o in outs for x in o["fire_delays"]]
    sent = len(lags) + timeouts + errs
    intervals = [x for o in outs for x in o["intervals"]]
    mean_interval = sum(intervals) / len(intervals) if intervals else INTERVAL
    out = {
        "beats_sent": sent, "beats_expected": int(n * window / mean_interval), "replies": len(lags),
        "interval_s": {"p50": round(percentile(intervals, 50), 2), "max": round(max(intervals), 2)} if intervals else {},
        "timeouts": timeouts, "errors": errs, "unregistered_replies": sum(o["unregistered"] for o in outs),
        "skipped_beats": sum(o["skipped"] for o in outs), "reregistered": sum(o["reregistered"] for o in outs),
        "error_kinds": dict(sum((collections.Counter(o["error_kinds"]) for o in outs), collections.Counter())),
        "lag_ms": {k: round(v * 1000, 1) for k, v in summary(with_failures, None).items() if k != "n"}
        if with_failures else {},
        "lag_over_1s": sum(x >= 1.0 for x in with_failures),
        "sim_fire_delay_ms": {"p50": round(percentile(fire, 50) * 1000, 1), "p99": round(percentile(fire, 99) * 1000, 1)}
        if fire else {},
    }
    out["heartbeats_per_s"] = round(sent / window, 1)
    return out


CONTENDED_PCT = 50.0  # other processes used more than half a core during the window: lag figures are suspect


def verdict(r: dict) -> None:
    cpu, lag = r.get("cpu_pct", {}).get("controller"), r.get("lag_ms", {}).get("p99")
    r.pop("controller_us_per_beat", None)
    if cpu is not None and r.get("replies", 0) >= 0.5 * r.get("beats_expected", 0) > 0:  # robust to a busy host
        r["controller_us_per_beat"] = round(cpu / 100.0 * r["window_s"] / r["replies"] * 1e6, 1)
    r["contended"] = r.get("others_cpu_pct", 0.0) > CONTENDED_PCT
    sims = [v for k, v in r.get("cpu_pct", {}).items() if k.startswith("sim")]
    r["sim_saturated"] = any(v >= 85.0 for v in sims)
    r["meets_target"] = (cpu is not None and lag is not None and cpu <= TARGET_CPU_PCT and lag < TARGET_P99_MS
                         and r.get("timeouts", 1) == r.get("errors", 1) == r.get("skipped_beats", 1) == 0
                         and r.get("registration_complete", True) and "error" not in r)


# --- profiling ----------------------------------------------------------------------------------------------


class Spy:
    """`py-spy record` on the controller until stop(); collapsed stacks kept under bench/results/profiles/.
    Non-blocking sampling at 200 Hz; run outside the measurement window, its own CPU would count there."""

    def __init__(self, py_spy: str, pid: int, name: str) -> None:
        self.out = HERE / "results" / "profiles" / f"{name}.txt"
        self.out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [py_spy, "record", "--nonblocking", "-r", "200", "-p", str(pid), "-f", "raw", "-o", str(self.out)]
        log("profiling:", " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output: str | None = None

    def stop(self) -> dict:
        """Stop sampling (SIGINT makes py-spy write its file) and summarize; idempotent."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.output, _ = self.proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.output, _ = self.proc.communicate()
        if not self.out.exists():
            return {"error": (self.output or "").strip()[-500:]}
        return {"file": str(self.out.relative_to(ROOT)), **summarize_collapsed(self.out)}


IDLE_LEAVES = ("EpollSelector.select", "select", "poll")  # the event loop waiting in epoll: not work

# Where the controller's time goes, by area; a sample counts for the first area any frame of its stack names.
# (py-spy's stacks of asyncio callbacks are often cut short, so areas are found by function, not by root.)
AREAS = [
    ("scheduler pass (Agents.slots/_usable, GpuTelemetry.unhealthy)", {
        "Controller._schedule_once", "Agents.slots", "Agents._usable", "GpuTelemetry.unhealthy", "Agents.alive",
        "plan", "Jobs.queued", "Jobs.resend_stale_assignments"}),
    ("INCL handler (decode, Agents.heartbeat/register)", {
        "Api.handle", "Api.heartbeat", "Agents.heartbeat", "Agents.register", "Decoder.decode", "Agents._stop_list",
        "GpuWatch.observe", "GpuTelemetry.job_utilization", "Jobs.on_agent", "Records.get", "Records.put",
        "Records.__iter__", "encode"}),
    ("nats-py: reply publish", {"Msg.respond", "Client.publish", "Client._send_publish", "pub_cmd",
                                "Client._flush_pending"}),
    ("nats-py: flusher, socket write", {"Client._flusher", "StreamWriter.writelines", "WriteTransport.writelines",
                                        "_SelectorSocketTransport.write", "TcpTransport.writelines"}),
    ("nats-py: socket read, parse", {
        "Client._read_loop", "Parser.parse", "Client._process_msg", "Client._build_message",
        "_SelectorSocketTransport._read_ready", "_SelectorSocketTransport._read_ready__data_received",
        "StreamReader.read", "StreamReaderProtocol.data_received", "StreamReader.feed_data", "TcpTransport.read"}),
    ("nats-py: subscription queue", {"Subscription._wait_for_msgs", "Queue.get", "Queue.put_nowait",
                                     "Queue._wakeup_next", "Queue.get_nowait"}),
    ("liveness loop", {"Controller._watch_liveness", "Deadlines.expired", "Deadlines.next_due", "Agents.expire"}),
]


def _frame_name(frame: str) -> str:
    """'handle (incl/controller/api.py:71)' -> 'handle (controller/api.py)'; drops line numbers."""
    name, _, loc = frame.partition(" (")
    path = loc.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/lib/python3.11/", str(ROOT) + "/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})"


def _area(names: set[str]) -> str:
    return next((area for area, keys in AREAS if names & keys), "asyncio event loop (run_once, handles, timers)")


def summarize_collapsed(path: Path, top: int = 25) -> dict:
    """Self and inclusive time per function, and time per area, in % of the samples where the controller
    was not idle in epoll."""
    self_: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    areas: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [_frame_name(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        c = int(count)
        total += c
        names = {f.split(" (")[0] for f in frames}
        if frames[-1].split(" (")[0] in IDLE_LEAVES:
            idle += c
            continue
        self_[frames[-1]] += c
        for f in set(frames):
            incl[f] += c
        areas[_area(names)] += c
    busy = total - idle
    pct = lambda c: round(100.0 * c / max(1, busy), 1)  # noqa: E731  percent of the busy samples
    return {"samples": total, "idle_samples": idle,
            "areas_pct": [[a, pct(c)] for a, c in areas.most_common()],
            "top_self_pct": [[f, pct(c)] for f, c in self_.most_common(top)],
            "top_inclusive_pct": [[f, pct(c)] for f, c in incl.most_common(top)]}


# --- output -------------------------------------------------------------------------------------------------


def save(results: list[dict]) -> None:
    """Merge into bench/results/controller_scale.json, one entry per (n, sim_procs, jobs_on_record, label)."""
    key = lambda r: (r["n"], r["sim_procs"], r.get("jobs_on_record", 0), r.get("label", ""))  # noqa: E731
    old = json.loads(RESULTS.read_text()).get("runs", []) if RESULTS.exists() else []
    for r in old:
        verdict(r)  # older entries get the fields added since
    runs = {key(r): r for r in old}
    runs.update({key(r): r for r in results})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "controller_scale",
        "target": {"n": TARGET_N, "controller_cpu_pct_max": TARGET_CPU_PCT, "lag_p99_ms_max": TARGET_P99_MS},
        "host": {"cores": os.cpu_count(), "python": sys.version.split()[0]},
        "runs": [runs[k] for k in sorted(runs)],
    }, indent=1) + "\n")


def table(results: list[dict]) -> str:
    head = ("N", "label", "sims", "jobs", "registered (s)", "ctl CPU %", "us/beat", "nats %", "sim %", "beats/s", "lag p50", "p99", "max ms",
            "fail", "skip", "others %", "target")
    rows = [head]
    for r in results:
        cpu = r.get("cpu_pct", {})
        sims = "+".join(f"{v:g}" for k, v in cpu.items() if k.startswith("sim"))
        lag = r.get("lag_ms", {})
        target = ("PASS" if r["meets_target"] else "MISS") if r["n"] == TARGET_N else ("ok" if r["meets_target"] else "-")
        reg = f"{r.get('registered', '?')}{'' if r.get('registration_complete', True) else ' INCOMPLETE'} ({r.get('register_s', '?')})"
        rows.append((r["n"], r.get("label", "") or "-", r["sim_procs"], r.get("jobs_on_record", 0), reg,
                     cpu.get("controller", "?"),
                     r.get("controller_us_per_beat", "?"),
                     cpu.get("nats", "?"), sims + (" SAT" if r.get("sim_saturated") else ""),
                     r.get("heartbeats_per_s", "?"), lag.get("p50", "?"), lag.get("p99", "?"), lag.get("max", "?"),
                     r.get("timeouts", 0) + r.get("errors", 0), r.get("skipped_beats", "?"),
                     f"{r.get('others_cpu_pct', '?')}{' !' if r.get('contended') else ''}", target))
    widths = [max(len(str(row[c])) for row in rows) for c in range(len(head))]
    return "\n".join("  ".join(str(v).rjust(w) for v, w in zip(row, widths, strict=False)) for row in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[500, 2000, 5000], help="agent counts, one stack each")
    ap.add_argument("--window", type=float, default=30.0, help="measurement window, seconds")
    ap.add_argument("--warmup", type=float, default=5.0, help="seconds between the last registration and the window")
    ap.add_argument("--sim-procs", type=int, default=1, help="simulator processes")
    ap.add_argument("--conns", type=int, default=4, help="NATS connections per simulator process")
    ap.add_argument("--register-concurrency", type=int, default=64)
    ap.add_argument("--register-timeout", type=float, default=170.0)
    ap.add_argument("--jobs", type=int, default=0, help="finished jobs put on record before the controller starts")
    ap.add_argument("--profile", type=float, default=0.0, help="py-spy the controller this long after the window")
    ap.add_argument("--profile-register", action="store_true", help="py-spy the controller while agents register")
    ap.add_argument("--py-spy", default=PY_SPY)
    ap.add_argument("--max-hps", type=float, default=None,
                    help="the controller's max_heartbeats_per_second (default: its own; 0: unlimited, a fixed 1 s)")
    ap.add_argument("--detect", action="store_true",
                    help="after the window, time how long the controller takes to find one silent agent lost")
    ap.add_argument("--label", default="", help="kept with the results: repeated runs with distinct labels all stay")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep each run's temp dir (logs, NATS store)")
    # worker mode (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.n = args.n[0]
        asyncio.run(worker(args))
        return
    results = []
    for n in args.n:
        r = run_one(args, n)
        print(json.dumps({k: v for k, v in r.items() if not k.startswith("profile")}), flush=True)
        results.append(r)
    if not args.no_save:
        save(results)
    print(table(results), flush=True)
    for r in results:
        for key in ("profile_register", "profile"):
            p = r.get(key)
            if p:
                print(f"\nN={r['n']} {key} ({p.get('samples')} samples, {p.get('idle_samples')} idle, {p.get('file')})"
                      + (f" ERROR {p['error']}" if "error" in p else ", areas, % of the busy samples:"), flush=True)
                for f, pc in p.get("areas_pct", []):
                    print(f"  {pc:5.1f}%  {f}", flush=True)
                print("  top functions, self time:", flush=True)
                for f, pc in p.get("top_self_pct", [])[:12]:
                    print(f"  {pc:5.1f}%  {f}", flush=True)

if __name__ == "__main__":
    main()
