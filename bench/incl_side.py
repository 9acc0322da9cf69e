#!/usr/bin/env python3
"""INCL side of the peer benchmarks (the peer is Ray Jobs, see bench/ray_peer.py).

Run with the project's venv, from anywhere:

    .venv/bin/python bench/incl_side.py --mode dispatch   --n 200
    .venv/bin/python bench/incl_side.py --mode throughput --n 1000
    .venv/bin/python bench/incl_side.py --mode logs       --lines 1000000

Prints exactly ONE JSON object on stdout; progress goes to stderr.

The stack
---------
Each run starts its own embedded stack with the real CLI, in a private ``INCL_HOME`` under /tmp and on a
free port: ``incl up --agents 4 --cpus 64 --port P`` (nats-server with JetStream, the controller, 4 local
agents), and always ends with ``incl down`` (also on an error, Ctrl-C or SIGTERM). ``--cpus 64`` makes each
agent offer 64 CPUs so that 1,000 trivial jobs, each asking the default 1 CPU, are limited by INCL and not
by the CPU request (4 x 64 = 256 jobs may run at once; the host has however many cores it has).

The client is the Python client ``incl.bus.client.Client`` used in-process (one NATS connection for the
whole run): the fair analogue of Ray's ``JobSubmissionClient``, which the Ray side uses; neither side pays a
CLI start-up per job.

Measurements (wall clock, ``time.time()``; one host, so one clock)
------------------------------------------------------------------
* dispatch   -- N sequential trivial jobs after ``--warmup`` uncounted ones. Latency = from just before
  ``Client.submit()`` to the moment the job's process starts, which it records by writing ``time.time()``
  into a file; the command is the Ray side's, byte for byte:
  ``PY -c 'import time,sys;open(sys.argv[1],"w").write(repr(time.time()))' FILE`` with PY the Ray side's
  interpreter (``.bench-venv/bin/python``) when present, so both pay the same interpreter start-up, which
  is reported on its own as ``direct_entrypoint_ms``. Each job is waited on (``Client.job()`` polled every
  ``--poll`` s, as the Ray side polls its status) before the next. The job record's own times split the
  latency into: client -> controller (submitted_at), scheduling (assigned_at), agent pick-up to process
  spawned (attempt started_at, the agent's JobRunning time), spawn -> command running (the stamp).
* throughput -- N jobs running ``true``, submitted as fast as possible, sequentially (``--concurrency 1``)
  or with up to C submits in flight (``asyncio.gather`` under a semaphore), each on a fresh stack; then
  wait until all are terminal by polling ``Client.jobs(states=<not terminal>, user=<this run>)``.
  jobs/s = N / (last completion - first submit), last completion being the latest attempt ``ended_at``
  (the agent's time of the exit); the time the poller saw it is reported as well. All must be SUCCEEDED.
* logs       -- one job printing N lines of 100 bytes (newline included), each carrying its sequence
  number and the producer's ``time.time()`` at write: ``'%09d %.6f %s\\n' % (i, time.time(), 'x'*71)``
  (the Ray side prints ``'%09d %s\\n' % (i, 'x'*89)``: same size and loop, plus one time.time() call).
  A follower (``Client.log_batches(job_id, follow=True)``) started right after submit checks every line
  arrives, intact, numbered 0..N-1 in order. lag = follower receive time - producer write time.
  lines/s = received / (last line received - first line written); the Ray side's definition (first chunk
  received -> last line received) is reported as ``lines_per_s_recv``.

Each mode also reports the CPU seconds each stack process (nats, controller, agents, incl. reaped job
processes) and this client spent during the measurement: the first place to look for a bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from stamp import STAMP_CODE, direct_entrypoint_baseline, read_stamp, stamp_entrypoint  # noqa: E402
from stats import rate, summary  # noqa: E402  (bench/stats.py, shared with the Ray side)

from incl.bus.client import Client, current_user  # noqa: E402
from incl.proto.messages import TERMINAL, JobState, Stream  # noqa: E402
from incl.proto.spec import load_spec  # noqa: E402

NOT_TERMINAL = [s for s in JobState if s not in TERMINAL]
USER = current_user()  # the stack has auth: a client speaks as the identity its credentials name
_real_stdout_fd: int | None = None


def log(*a: object) -> None:
    print("[incl_side]", *a, file=sys.stderr, flush=True)


def emit(obj: dict) -> None:
    data = (json.dumps(obj) + "\n").encode()
    os.write(_real_stdout_fd if _real_stdout_fd is not None else 1, data)


def default_job_python() -> str:
    peer = ROOT / ".bench-venv" / "bin" / "python"
    return str(peer) if peer.exists() else sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


# --------------------------------------------------------------------------
# the embedded stack, started and stopped with the real CLI
# --------------------------------------------------------------------------

class Stack:
    """`auth=False`: the benchmark starts a plain nats-server (no authentication) and `incl up --nats` on it, the
    same daemons without credentials: the side-by-side for what authentication costs."""

    def __init__(self, agents: int, cpus: float, keep: bool, auth: bool = True) -> None:
        self.agents, self.cpus, self.keep, self.auth = agents, cpus, keep, auth
        self.plain_nats: subprocess.Popen | None = None
        self.plain_url = ""
        self.home = Path(tempfile.mkdtemp(prefix="incl-bench-", dir="/tmp"))
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if k != "INCL_NATS_URL"}
        self.env["INCL_HOME"] = str(self.home)
        self.url = f"nats://127.0.0.1:{self.port}"
        self.up_s: float | None = None
        self.pids: dict[str, int] = {}
        self._started = False

    def _incl(self, *argv: str, timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "incl.cli", *argv], env=self.env, timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def up(self, tries: int = 3) -> None:
        self._started = True  # from here on, `down` must run whatever happens
        self.up_retries = 0
        for attempt in range(tries):
            t = time.time()
            where = ["--port", str(self.port)] if self.auth else ["--nats", self._start_plain_nats()]
            p = self._incl("up", "--agents", str(self.agents), *where, "--cpus", f"{self.cpus:g}", "--web-port", "0",
                           timeout=120)
            self.up_s = time.time() - t
            if p.returncode == 0:
                break
            # `incl up` reads /proc/PID/cmdline right after spawning; during the daemon's execve that file
            # is briefly empty, so `up` can take a live daemon for dead, stop the stack and fail. Retry.
            log(f"incl up failed ({p.returncode}), attempt {attempt + 1}/{tries}: {p.stdout.strip()}")
            self.up_retries += 1
            self.port = free_port()
        else:
            raise RuntimeError(f"incl up failed {tries} times ({p.returncode}): {p.stdout.strip()}")
        # The in-process client finds the local admin's credentials (which `incl up` made) under INCL_HOME.
        os.environ["INCL_HOME"] = str(self.home)
        state = json.loads((self.home / "stack.json").read_text())
        self.url = state["nats_url"]
        self.pids = {proc["name"]: proc["pid"] for proc in state["procs"]}
        if self.plain_nats is not None:
            self.pids["nats"] = self.plain_nats.pid
        log(f"stack up in {self.up_s:.1f}s at {self.url}, home {self.home}")

    def _start_plain_nats(self) -> str:
        from incl.cli.stack import nats_server_binary, wait_port

        if self.plain_nats is None:  # started once: a retried `incl up` reuses it
            self.plain_url = f"nats://127.0.0.1:{self.port}"
            store = self.home / "plain-nats"
            self.plain_nats = subprocess.Popen(
                [str(nats_server_binary()), "-js", "-sd", str(store), "-a", "127.0.0.1", "-p", str(self.port)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if not wait_port(self.port, 10.0):
                raise RuntimeError("the plain nats-server did not start")
        return self.plain_url

    def down(self) -> float | None:
        if not self._started:
            return None
        self._started = False
        t = time.time()
        try:
            p = self._incl("down", timeout=120)
            if p.returncode != 0:
                log("incl down:", p.stdout.strip())
        except subprocess.TimeoutExpired:
            log("incl down timed out")
        if self.plain_nats is not None:
            self.plain_nats.terminate()
            self.plain_nats.wait(30)
            self.plain_nats = None
        dt = time.time() - t
        if not self.keep:
            shutil.rmtree(self.home, ignore_errors=True)
        return dt

    @staticmethod
    def _stat(pid: int) -> tuple[int, int]:
        """(own utime+stime, reaped children's cutime+cstime) of one process, in clock ticks."""
        f = [int(x) for x in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:15]]
        return f[0] + f[1], f[2] + f[3]

    @staticmethod
    def _children(pid: int) -> list[int]:
        out: list[int] = []
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                out += [int(x) for x in (task / "children").read_text().split()]
        except OSError:
            pass
        return out

    def cpu_times(self) -> dict[str, tuple[float, float]]:
        """Per stack process: (its own CPU, the CPU of everything it started), seconds. "Everything it
        started" = its reaped children's totals plus the CPU of its live descendants (an agent's job
        processes may hang below a long-lived launcher, whose children's time only reaches the agent
        when the launcher itself exits)."""
        tck = os.sysconf("SC_CLK_TCK")
        out = {}
        for name, pid in self.pids.items():
            try:
                own, kids = self._stat(pid)
            except (OSError, IndexError, ValueError):
                continue
            todo = self._children(pid)
            while todo:
                child = todo.pop()
                try:
                    a, b = self._stat(child)
                except (OSError, IndexError, ValueError):
                    continue
                kids += a + b
                todo += self._children(child)
            out[name] = (own / tck, kids / tck)
        return out


class CpuMeter:
    """CPU seconds spent by each stack process and by this client between start() and stop()."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    @staticmethod
    def host_jiffies() -> tuple[int, int]:
        """(busy, total) jiffies of the whole host since boot, from /proc/stat."""
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = f[3] + (f[4] if len(f) > 4 else 0)
        return sum(f) - idle, sum(f)

    def writes(self) -> dict[str, int]:
        """Write syscalls (socket sends included) each stack process made since it started, /proc/PID/io."""
        out = {}
        for name, pid in self.stack.pids.items():
            try:
                io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
            except (OSError, ValueError):
                continue
            out[name] = int(io["syscw"])
        return out

    def start(self) -> None:
        self.t = time.time()
        self.a = self.stack.cpu_times()
        self.w = self.writes()
        self.me = time.process_time()
        self.h = self.host_jiffies()

    def stop(self) -> dict:
        wall = time.time() - self.t
        b = self.stack.cpu_times()
        own = {k: round(b[k][0] - self.a.get(k, (0.0, 0.0))[0], 2) for k in b}
        kids = {k: round(b[k][1] - self.a.get(k, (0.0, 0.0))[1], 2) for k in b}
        agents = [k for k in own if k.startswith("local-")]
        hb, ht = self.host_jiffies()
        busy = (hb - self.h[0]) / max(ht - self.h[1], 1)
        w = self.writes()
        return {"wall_s": round(wall, 2), "host_busy": round(busy, 3),
                "write_syscalls": {k: w[k] - self.w[k] for k in w if k in self.w},
                "host_busy_cores": round(busy * (os.cpu_count() or 1), 2),
                "client": round(time.process_time() - self.me, 2),
                "nats": own.get("nats"), "controller": own.get("controller"),
                "agents": round(sum(own[k] for k in agents), 2),
                "jobs_via_agents": round(sum(kids[k] for k in agents), 2),
                "per_process": own}


# --------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------

async def wait_terminal(client: Client, job_id: str, poll: float, timeout: float = 120.0):
    deadline = time.time() + timeout
    while True:
        job = await client.job(job_id)
        if job.state in TERMINAL or time.time() > deadline:
            return job
        await asyncio.sleep(poll)


async def mode_dispatch(client: Client, args, work: Path, meter: CpuMeter | None) -> dict:
    py = args.job_python
    lat, submit_call, total = [], [], []
    parts: dict[str, list[float]] = {"client_to_controller": [], "queue_to_assigned": [],
                                     "assigned_to_spawned": [], "spawned_to_running": []}
    warm, states, missing = [], {}, 0
    n_total = args.warmup + args.n
    for i in range(n_total):
        if i == args.warmup and meter:
            meter.start()
        f = work / f"stamp{i}"
        spec = load_spec({"run": stamp_entrypoint(py, str(f))})
        t0 = time.time()
        job = await client.submit(spec, USER)
        t1 = time.time()
        job = await wait_terminal(client, job.id, args.poll)
        t2 = time.time()
        ts = read_stamp(f)
        if i < args.warmup:
            warm.append(None if ts is None else round((ts - t0) * 1000, 1))
            continue
        states[str(job.state)] = states.get(str(job.state), 0) + 1
        submit_call.append((t1 - t0) * 1000)
        total.append((t2 - t0) * 1000)
        if ts is None:
            missing += 1
            continue
        lat.append((ts - t0) * 1000)
        att = job.current
        if att is not None and att.started_at:
            parts["client_to_controller"].append((job.submitted_at - t0) * 1000)
            parts["queue_to_assigned"].append((att.assigned_at - job.submitted_at) * 1000)
            parts["assigned_to_spawned"].append((att.started_at - att.assigned_at) * 1000)
            parts["spawned_to_running"].append((ts - att.started_at) * 1000)
        k = i - args.warmup + 1
        if k % 20 == 0:
            log(f"dispatch: {k}/{args.n} last={lat[-1]:.1f}ms")
    s = summary(lat)
    return {
        "n": len(lat), "n_requested": args.n,
        "p50_ms": s.get("p50"), "p99_ms": s.get("p99"), "mean_ms": s.get("mean"),
        "dispatch_ms": s,
        "breakdown_ms": {k: summary(v) for k, v in parts.items()},
        "submit_call_ms": summary(submit_call),
        "submit_to_terminal_seen_ms": summary(total),
        "warmup_ms": warm, "missing_stamps": missing, "job_states": states,
        "entrypoint": "PY -c '" + STAMP_CODE + "' FILE", "job_python": py,
        "direct_entrypoint_ms": direct_entrypoint_baseline(py, work),
        "poll_s": args.poll,
    }


async def throughput_once(client: Client, n: int, conc: int, poll: float, user: str, deadline: float) -> dict:
    spec = load_spec({"run": "true"})
    ids: list[str] = []
    errors = 0
    t_first = time.time()
    if conc <= 1:
        for _ in range(n):
            try:
                ids.append((await client.submit(spec, user)).id)
            except Exception as e:  # noqa: BLE001
                errors += 1
                log("submit failed:", repr(e))
    else:
        sem = asyncio.Semaphore(conc)

        async def one() -> str | None:
            async with sem:
                try:
                    return (await client.submit(spec, user)).id
                except Exception as e:  # noqa: BLE001
                    log("submit failed:", repr(e))
                    return None

        got = await asyncio.gather(*(one() for _ in range(n)))
        ids = [g for g in got if g]
        errors = n - len(ids)
    t_submitted = time.time()
    log(f"throughput c={conc}: {len(ids)} submitted in {t_submitted - t_first:.2f}s")
    last_seen = t_submitted
    last_log = 0.0
    pending = len(ids)
    while pending and time.time() < deadline:
        await asyncio.sleep(poll)
        live = await client.jobs(states=NOT_TERMINAL, user=user)
        now = time.time()
        if len(live) < pending:
            last_seen = now
        pending = len(live)
        if now - last_log > 5:
            last_log = now
            log(f"throughput c={conc}: {len(ids) - pending}/{len(ids)} done ({now - t_first:.1f}s)")
    mine = set(ids)  # the warm-up jobs ran as the same user: not counted
    final = [j for j in await client.jobs(user=user) if j.id in mine]
    states: dict[str, int] = {}
    ends = []
    for j in final:
        states[str(j.state)] = states.get(str(j.state), 0) + 1
        if j.current is not None and j.current.ended_at:
            ends.append(j.current.ended_at)
    done = sum(v for k, v in states.items() if JobState(k) in TERMINAL)
    last_end = max(ends) if ends else last_seen
    wall = last_end - t_first
    return {
        "n": done, "n_requested": n, "complete": pending == 0 and done == n,
        "all_succeeded": states.get("SUCCEEDED", 0) == n,
        "jobs_per_s": round(rate(done, wall), 3), "wall_s": round(wall, 3),
        "jobs_per_s_poller": round(rate(done, last_seen - t_first), 3),
        "wall_s_poller": round(last_seen - t_first, 3),
        "submit_wall_s": round(t_submitted - t_first, 3),
        "submit_per_s": round(rate(len(ids), t_submitted - t_first), 3),
        "submit_errors": errors, "job_states": states, "submit_concurrency": conc,
    }


async def mode_logs(client: Client, args, work: Path, meter: CpuMeter | None) -> dict:
    n = args.lines
    # The agent gives jobs PYTHONUNBUFFERED=1 (live logs), so by default every line is one write(2). With
    # --producer-buffer B the script writes through a B-byte buffer instead, as Ray's entrypoint does (its
    # stdout is a file, so Python buffers 8 KiB); the timestamp is then taken when the line is formatted.
    out = ("sys.stdout.write" if not args.producer_buffer else
           f"__import__('os').fdopen(1, 'w', buffering={args.producer_buffer}).write")
    code = (
        "import sys, time\n"
        f"w = {out}\n"
        "t = time.time\n"
        "pad = 'x' * 71\n"
        f"for i in range({n}):\n"
        "    w('%09d %.6f %s\\n' % (i, t(), pad))\n"
        "w.__self__.flush()\n"
    )
    script = work / "emit_lines.py"
    script.write_text(code)
    spec = load_spec({"run": f"{shlex.quote(args.job_python)} {shlex.quote(str(script))}"})
    # The follower keeps, per batch, its receive time and the batch's lines joined; numbering and lag are
    # checked after the stream ends, so that the measuring does not slow the follower (~2 us of Python per
    # line, which on 2 cores competes with the producer, the agent and NATS).
    received: list[tuple[float, bytes, int]] = []
    agent_ts = array("d")     # agent read time (LogLine.ts) of every stdout line, in order
    lag = array("d")          # follower receive - producer write, per line, seconds
    agent_lag = array("d")    # agent read - producer write
    foreign = batches = 0
    bad_samples: list[str] = []
    stdout = Stream.STDOUT
    if meter:
        meter.start()
    t0 = time.time()
    job = await client.submit(spec, USER)
    async for batch in client.log_batches(job.id, follow=True):
        now = time.time()
        batches += 1
        lines = batch.lines
        data = [ln.data for ln in lines if ln.stream is stdout]
        if len(data) != len(lines):
            for ln in lines:
                if ln.stream is not stdout:
                    foreign += 1
                    if len(bad_samples) < 5:
                        bad_samples.append(f"{ln.stream}: {ln.data[:200]!r}")
        agent_ts.extend([ln.ts for ln in lines if ln.stream is stdout])
        received.append((now, b"\n".join(data), len(data)))
    t_stream_end = time.time()
    cpu = meter.stop() if meter else None
    final = await client.job(job.id)
    # Check: every line intact (99 bytes + newline), numbered 0..n-1, in order, once.
    expect = valid = bad = order_errors = 0
    t_first_recv = t_last = t_first_written = None
    k = 0
    for now, blob, count in received:
        if not count:
            continue
        for d in blob.split(b"\n"):
            try:
                if len(d) != 99:
                    raise ValueError
                seq = int(d[:9])
                tp = float(d[10:27])
            except ValueError:
                bad += 1
                if len(bad_samples) < 5:
                    bad_samples.append(d[:120].decode("utf-8", "replace"))
                k += 1
                continue
            if seq != expect:
                order_errors += 1
            expect = seq + 1
            if valid == 0:
                t_first_written, t_first_recv = tp, now
            valid += 1
            lag.append(now - tp)
            agent_lag.append(agent_ts[k] - tp)
            k += 1
            t_last = now
    del received
    if t_last is None:
        t_last = t_stream_end
    lag_ms = summary([x * 1000 for x in lag])
    agent_ms = summary([x * 1000 for x in agent_lag])
    return {
        "lines": n, "received": valid, "lost": n - valid,
        "all_received": valid == n and order_errors == 0 and bad == 0 and expect == n,
        "order_errors": order_errors, "bad_lines": bad, "foreign_lines": foreign, "samples": bad_samples,
        "lines_per_s": round(rate(valid, t_last - (t_first_written or t0)), 1),
        "lines_per_s_recv": round(rate(valid, t_last - (t_first_recv or t0)), 1),
        "lines_per_s_from_submit": round(rate(valid, t_last - t0), 1),
        "lag_p50_ms": lag_ms.get("p50"), "lag_p99_ms": lag_ms.get("p99"),
        "lag_ms": lag_ms, "agent_read_lag_ms": agent_ms,
        "submit_to_first_line_written_s": r(None if t_first_written is None else t_first_written - t0),
        "submit_to_first_line_received_s": r(None if t_first_recv is None else t_first_recv - t0),
        "submit_to_last_line_s": r(t_last - t0),
        "producer_s": r(None if t_first_written is None or not lag else
                        (t_last - lag[-1]) - t_first_written),
        "batches": batches, "job_state": str(final.state),
        "follower": "Client.log_batches(job_id, follow=True)",
        "producer_buffer": args.producer_buffer or "unbuffered (PYTHONUNBUFFERED=1 from the agent)",
        "follower_done_s": r(t_stream_end - t0),
        "cpu_s": cpu,
    }


# --------------------------------------------------------------------------

def start_profilers(args, stack: Stack) -> list[subprocess.Popen]:
    """py-spy (sampling, --nonblocking) on the controller and local-0, raw collapsed stacks to --profile."""
    if not args.profile:
        return []
    out = Path(args.profile)
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for name in ("controller", "local-0", "nats"):
        if name == "nats" or name not in stack.pids:
            continue
        f = out / f"{args.mode}-c{args.concurrency}-{name}.txt"
        procs.append(subprocess.Popen([args.py_spy, "record", "--nonblocking", "-r", "200", "-f", "raw",
                                       "-p", str(stack.pids[name]), "-o", str(f)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(1.0)
    return procs


def stop_profilers(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.send_signal(signal.SIGINT)
    for p in procs:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


async def run_mode(args, stack: Stack, work: Path) -> dict:
    meter = CpuMeter(stack)
    async with Client(stack.url, timeout=30.0) as client:
        for _i in range(args.warmup_jobs):  # every mode: a warm stack (connections, imports, streams)
            j = await client.submit(load_spec({"run": "true"}), USER)
            await wait_terminal(client, j.id, 0.01)
        if args.mode == "dispatch":
            res = await mode_dispatch(client, args, work, meter)
        elif args.mode == "logs":
            res = await mode_logs(client, args, work, meter)
        else:
            meter.start()
            res = await throughput_once(client, args.n, args.concurrency, args.tput_poll,
                                        USER, time.time() + args.budget_s)  # a fresh stack: its only jobs
    if res.get("cpu_s") is None:
        res["cpu_s"] = meter.stop()
    return res


def bench_main(args) -> int:
    global _real_stdout_fd
    _real_stdout_fd = os.dup(1)
    os.dup2(2, 1)  # keep fd 1 for the JSON result
    t_begin = time.time()
    result: dict = {"peer": "incl", "mode": args.mode}
    work = Path(tempfile.mkdtemp(prefix="incl-bench-work-", dir="/tmp"))
    concs = [args.concurrency] if args.mode != "throughput" else args.concurrencies
    runs = []
    try:
        for c in concs:
            stack = Stack(args.agents, args.cpus, args.keep_home, auth=not args.no_auth)
            try:
                stack.up()
                args.concurrency = c
                profilers = start_profilers(args, stack)
                try:
                    res = asyncio.run(run_mode(args, stack, work))
                finally:
                    stop_profilers(profilers)
                res["incl_up_s"] = r(stack.up_s)
                res["incl_up_retries"] = stack.up_retries
                if args.keep_home:
                    res["incl_home"] = str(stack.home)
            finally:
                res_down = stack.down()
            res["incl_down_s"] = r(res_down)
            runs.append(res)
        if args.mode == "throughput":
            best = max(runs, key=lambda x: (x["complete"], x["jobs_per_s"]))
            result.update(best)
            result["runs"] = runs
        else:
            result.update(runs[0])
    except BaseException as e:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        result["error"] = f"{type(e).__name__}: {e}"
        if runs:
            result["runs"] = runs
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from importlib.metadata import version

    result.update({
        "incl_version": version("incl"),
        "config": {"agents": args.agents, "agent_cpus": args.cpus, "job_cpus": 1,
                   "warmup_jobs": args.warmup_jobs, "warmup": args.warmup if args.mode == "dispatch" else None},
        "client": "incl.bus.client.Client (Python, in-process, one NATS connection)",
        "total_wall_s": round(time.time() - t_begin, 3),
        "host": {"nproc": os.cpu_count(), "python": platform.python_version(),
                 "loadavg_end": os.getloadavg()},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t_begin)),
    })
    emit(result)
    return 0 if "error" not in result else 1


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["dispatch", "throughput", "logs"], required=True)
    p.add_argument("--n", type=int, default=200, help="jobs (dispatch/throughput)")
    p.add_argument("--lines", type=int, default=1_000_000, help="lines (logs mode)")
    p.add_argument("--warmup", type=int, default=5, help="uncounted dispatch jobs before measuring")
    p.add_argument("--warmup-jobs", type=int, default=3, help="`true` jobs run on each fresh stack first")
    p.add_argument("--poll", type=float, default=0.02, help="dispatch: job status poll period, s (Ray's)")
    p.add_argument("--tput-poll", type=float, default=0.1, help="throughput: jobs() poll period, s")
    p.add_argument("--concurrency", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--concurrencies", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32],
                   help="throughput: submits in flight, one fresh stack each (default 1,32); best reported")
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--cpus", type=float, default=64, help="CPUs each local agent offers (incl up --cpus)")
    p.add_argument("--job-python", default=default_job_python(),
                   help="interpreter of the dispatch/logs job (default: the Ray side's, for equal start-up)")
    p.add_argument("--budget-s", type=float, default=540.0, help="throughput: stop waiting after this long")
    p.add_argument("--producer-buffer", type=int, default=0,
                   help="logs: producer writes through a buffer of this many bytes (0: one write per line)")
    p.add_argument("--profile", metavar="DIR", help="py-spy the controller and agent local-0 into DIR")
    p.add_argument("--py-spy", default=os.environ.get("PY_SPY", shutil.which("py-spy") or "/tmp/pyspy/bin/py-spy"))
    p.add_argument("--keep-home", action="store_true", help="keep INCL_HOME (logs) for inspection")
    p.add_argument("--no-auth", action="store_true",
                   help="a plain nats-server without authentication (incl up --nats), to compare with auth on")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def _term(signum, _frame):  # run the `finally` (incl down) on SIGTERM/SIGHUP too
        raise KeyboardInterrupt(f"signal {signum}")

    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, _term)
    return bench_main(args)


if __name__ == "__main__":
    sys.exit(main())
