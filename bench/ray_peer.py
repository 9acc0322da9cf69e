#!/usr/bin/env python3
"""Peer benchmark: Ray Jobs (``ray job submit`` path) against a local Ray head.

Run with the isolated benchmark venv (see bench/setup_peers.sh):

    .bench-venv/bin/python bench/ray_peer.py --mode dispatch   --n 200
    .bench-venv/bin/python bench/ray_peer.py --mode throughput --n 200
    .bench-venv/bin/python bench/ray_peer.py --mode logs       --lines 1000000

(throughput --n 1000 takes ~20-30 min at Ray's <1 job/s here; the default
--budget-s 540 stops measuring after 9 min and reports what completed with
"complete": false.)

Prints exactly ONE JSON object on stdout; everything else (Ray CLI chatter,
progress) goes to stderr.

Isolation
---------
Ray binds several internal ports on every interface even when told to use
127.0.0.1 (with ray 2.60 and the flags below, every listener seen was on
127.0.0.1; the result's "listeners" field records them), so the whole Ray
side runs inside a private network + PID (+ mount, for /proc) namespace::

    unshare --net --pid --fork --mount-proc --kill-child  <this script>

Inside, only ``lo`` exists (brought up here), so nothing can listen on, or
talk to, a non-loopback address of the host. Our process is PID 1 of the new
PID namespace: when it exits the kernel kills every remaining Ray process, so
a crash never leaks a Ray cluster. PID 1 only reaps zombies; the measurement
runs in a forked child. Needs root, or unprivileged user namespaces (then
``--user --map-root-user`` is added automatically). The outer process stays
as unshare's parent and forwards SIGTERM/SIGINT/SIGHUP to the namespace's
PID 1 (unshare itself ignores them), so ``kill``/``timeout`` stop Ray cleanly.

Measurements (all wall-clock, ``time.time()``; same host so one clock):

* dispatch   -- N sequential trivial jobs. Latency = from just before
  ``submit_job()`` to the moment the entrypoint process starts (the entrypoint
  is ``python -c 'import time,sys;open(sys.argv[1],"w").write(repr(time.time()))' FILE``,
  so it includes one interpreter start-up; the same command run directly,
  without Ray, is reported as ``direct_entrypoint_ms`` for calibration).
  Each job is waited on (status polled) before the next. ``--warmup`` jobs are
  run first and not counted.
* throughput -- N trivial jobs (entrypoint ``true``) submitted back to back,
  then wait for all to reach a terminal state. jobs/s = N / (last completion
  - first submit). Submission uses the Ray Jobs Python SDK
  (``ray.job_submission.JobSubmissionClient.submit_job``), which is the normal
  programmatic path and exactly what ``ray job submit --no-wait`` does over
  HTTP, minus a 1.5-2 s `ray` CLI start-up per job (measured here) that would penalise Ray
  unfairly. Last completion is taken from Ray's own ``end_time`` of each job
  (ms resolution); the time our poller noticed it is reported as well.
* logs       -- one job printing N lines of 100 bytes (incl. newline); a
  follower (``tail_job_logs``) started right after submit counts lines;
  lines/s = N / (last line received - first chunk received); the rate
  including job start-up (from submit) is reported too. Checks every line
  arrived, in order, intact.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from stamp import STAMP_CODE, direct_entrypoint_baseline, read_stamp, stamp_entrypoint  # noqa: E402
from stats import rate, summary  # noqa: E402

NS_ENV = "INCL_RAY_PEER_IN_NS"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
GCS_PORT = 6379
DASH_PORT = 8265
DASH_URL = f"http://127.0.0.1:{DASH_PORT}"

_real_stdout_fd: int | None = None


def log(*a) -> None:
    print("[ray_peer]", *a, file=sys.stderr, flush=True)


def emit(obj: dict) -> None:
    """Write the single result object to the real stdout."""
    data = (json.dumps(obj, sort_keys=False) + "\n").encode()
    fd = _real_stdout_fd if _real_stdout_fd is not None else sys.stdout.fileno()
    os.write(fd, data)


# --------------------------------------------------------------------------
# namespace handling
# --------------------------------------------------------------------------

def reexec_in_namespace(argv: list[str]) -> int:
    unshare = shutil.which("unshare")
    if not unshare:
        log("unshare (util-linux) not found; refusing to run Ray outside a private netns")
        return 2
    if not shutil.which("ip"):
        log("'ip' (iproute2) not found; cannot bring lo up inside the namespace")
        return 2
    cmd = [unshare, "--net", "--pid", "--fork", "--mount-proc", "--kill-child"]
    if os.geteuid() != 0:
        cmd += ["--user", "--map-root-user"]
    cmd += [sys.executable, str(Path(__file__).resolve()), *argv]
    env = dict(os.environ)
    env[NS_ENV] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    # Not exec: unshare ignores SIGTERM/SIGINT while it waits, so `kill` or
    # `timeout` on this script would do nothing. We stay as the parent and
    # forward the signal to the namespace's PID 1 (our inner copy), which
    # stops Ray cleanly; if that takes too long, SIGKILL unshare and
    # --kill-child takes the whole namespace down with it.
    proc = subprocess.Popen(cmd, env=env)
    state = {"deadline": None}

    def ns_init_pid() -> int | None:
        try:
            kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            return int(kids[0]) if kids else None
        except (OSError, ValueError):
            return None

    def forward(sig, _frm):
        target = ns_init_pid()
        if target is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, sig)
        if state["deadline"] is None:
            state["deadline"] = time.time() + 30.0

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if state["deadline"] is not None and time.time() > state["deadline"]:
                log("namespace did not stop within 30 s of the signal; killing it")
                proc.kill()


def namespace_init(args) -> int:
    """We are PID 1 of a fresh pid+net namespace: set up lo, fork the bench,
    reap everything, exit with the bench's status (which kills the rest)."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # /sys/class/net still shows the host's sysfs; /proc/net/dev is per-netns.
    ifaces = sorted(ln.split(":")[0].strip()
                    for ln in Path("/proc/net/dev").read_text().splitlines()[2:] if ":" in ln)
    if ifaces != ["lo"]:
        log(f"refusing to run: namespace has interfaces {ifaces}, expected only ['lo']")
        return 3
    pid = os.fork()
    if pid == 0:
        def _interrupt(sig, _frm):
            # first SIGTERM/SIGINT/SIGHUP: unwind (the finally blocks stop Ray)
            for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(s, signal.SIG_IGN)
            raise KeyboardInterrupt(f"signal {sig}")

        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, _interrupt)
        rc = 1
        try:
            rc = bench_main(args)
        except BaseException as e:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            emit({"peer": "ray", "mode": args.mode, "error": f"{type(e).__name__}: {e}"})
            rc = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
    # PID 1: forward termination to the bench so it can run `ray stop`.
    def _fwd(sig, _frm):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, _fwd)
    status = 1
    while True:
        try:
            wpid, wst = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if wpid == pid:
            status = os.waitstatus_to_exitcode(wst)
            break
    # Returning from PID 1 SIGKILLs every remaining process in the namespace.
    return status if status >= 0 else 128 - status


# --------------------------------------------------------------------------
# Ray cluster lifecycle
# --------------------------------------------------------------------------

class RssSampler(threading.Thread):
    """Samples total PSS of every process in the (private) PID namespace,
    excluding the benchmark driver itself and PID 1."""

    def __init__(self, exclude: set[int], period: float = 1.0):
        super().__init__(daemon=True)
        self.exclude = exclude
        self.period = period
        self.peak_kb = 0
        self.peak_procs = 0
        self.last_kb = 0
        self._stop = threading.Event()

    @staticmethod
    def snapshot(exclude: set[int]) -> tuple[int, dict[str, int]]:
        total = 0
        by_name: dict[str, int] = {}
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) in exclude:
                continue
            # PSS (proportional set size) so shared libraries mapped by many
            # Ray worker processes are not counted once per process.
            try:
                name = Path(f"/proc/{d}/comm").read_text().strip()
                rss = 0
                with open(f"/proc/{d}/smaps_rollup") as f:
                    for line in f:
                        if line.startswith("Pss:"):
                            rss = int(line.split()[1])
                            break
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            total += rss
            by_name[name] = by_name.get(name, 0) + rss
        return total, by_name

    def run(self) -> None:
        while not self._stop.is_set():
            kb, by = self.snapshot(self.exclude)
            self.last_kb = kb
            if kb > self.peak_kb:
                self.peak_kb, self.peak_procs = kb, len(by)
            self._stop.wait(self.period)

    def stop(self) -> None:
        self._stop.set()


def ray_bin() -> str:
    cand = Path(sys.executable).parent / "ray"
    return str(cand) if cand.exists() else (shutil.which("ray") or "ray")


def ray_env() -> dict:
    env = dict(os.environ)
    env.pop(NS_ENV, None)
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(k, None)
    # the job entrypoints resolve `python` / `ray` from PATH: prefer the venv
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def start_ray(args, temp_dir: str) -> dict:
    cmd = [
        ray_bin(), "start", "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={GCS_PORT}",
        f"--num-cpus={args.num_cpus}",
        "--num-gpus=0",
        f"--object-store-memory={args.object_store_mb * 1024 * 1024}",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={DASH_PORT}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
    ]
    log("starting:", " ".join(shlex.quote(c) for c in cmd))
    t0 = time.time()
    subprocess.run(cmd, check=True, env=ray_env(), stdout=sys.stderr, stderr=sys.stderr,
                   stdin=subprocess.DEVNULL, timeout=180)
    t1 = time.time()
    # `ray start` returns before the job API is necessarily serving.
    deadline = t1 + 180
    while True:
        try:
            with urllib.request.urlopen(f"{DASH_URL}/api/version", timeout=2) as r:
                r.read()
            break
        except Exception:  # noqa: BLE001 - not up yet, whatever the error
            if time.time() > deadline:
                raise RuntimeError("Ray dashboard/job API did not come up within 180 s") from None
            time.sleep(0.05)
    t2 = time.time()
    return {"ray_start_s": round(t1 - t0, 3), "job_api_ready_s": round(t2 - t0, 3)}


def stop_ray() -> float:
    t0 = time.time()
    try:
        r = subprocess.run([ray_bin(), "stop", "--force"], env=ray_env(), capture_output=True,
                           text=True, stdin=subprocess.DEVNULL, timeout=120)
        tail = (r.stdout + r.stderr).strip().splitlines()[-1:]  # very chatty otherwise
        log(f"ray stop rc={r.returncode}:", tail[0][-200:] if tail else "")
    except Exception as e:  # noqa: BLE001
        log("ray stop failed:", e)
    return round(time.time() - t0, 3)


def kill_namespace_stragglers(grace: float = 2.0) -> int:
    """SIGKILL every process of our private PID namespace except PID 1 and
    ourselves (only ever called inside the namespace), then wait for them."""
    me = os.getpid()
    assert me != 1 and os.environ.get(NS_ENV) == "1"

    def others() -> list[int]:
        pids = []
        for d in os.listdir("/proc"):
            if d.isdigit() and int(d) not in (1, me):
                try:
                    if Path(f"/proc/{d}/stat").read_text().split(") ")[-1][:1] != "Z":
                        pids.append(int(d))
                except OSError:
                    pass
        return pids

    victims = others()
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.time() + grace
    while others() and time.time() < deadline:
        time.sleep(0.05)
    return len(victims)


def check_listeners() -> list[str]:
    """List listening TCP sockets (inside the netns) bound to a non-loopback
    address. There is no non-loopback interface in here, so 0.0.0.0/:: can
    only ever be reached via lo; we still report them for the record."""
    out = []
    for fn, fam in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        try:
            lines = Path(fn).read_text().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            parts = ln.split()
            if parts[3] != "0A":  # LISTEN
                continue
            addr_hex, port_hex = parts[1].split(":")
            raw = bytes.fromhex(addr_hex)
            if fam == socket.AF_INET:
                addr = socket.inet_ntop(fam, raw[::-1])
            else:
                addr = socket.inet_ntop(fam, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            out.append(f"{addr}:{int(port_hex, 16)}")
    return sorted(set(out))


# --------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------



def job_status(client, sid: str) -> str:
    st = client.get_job_status(sid)
    return str(getattr(st, "value", st))


def mode_dispatch(client, args, work: Path, deadline: float) -> dict:
    lat_ms, total_ms, submit_ms, states = [], [], [], {}
    warm_ms = []
    missing = 0
    n_total = args.warmup + args.n
    for i in range(n_total):
        if time.time() > deadline:
            log(f"dispatch: time budget exhausted after {len(lat_ms)} measured jobs")
            break
        f = work / f"stamp{i}"
        ep = stamp_entrypoint(sys.executable, str(f))
        t0 = time.time()
        sid = client.submit_job(entrypoint=ep)
        t1 = time.time()
        while True:
            st = job_status(client, sid)
            if st in TERMINAL:
                break
            time.sleep(args.poll)
        t2 = time.time()
        ts = read_stamp(f)
        if i < args.warmup:
            if ts is not None:
                warm_ms.append(round((ts - t0) * 1000, 1))
            continue
        states[st] = states.get(st, 0) + 1
        submit_ms.append((t1 - t0) * 1000)
        total_ms.append((t2 - t0) * 1000)
        if ts is None:
            missing += 1
        else:
            lat_ms.append((ts - t0) * 1000)
        if (i - args.warmup + 1) % 20 == 0:
            log(f"dispatch: {i - args.warmup + 1}/{args.n} last={lat_ms[-1] if lat_ms else None:.0f}ms")
    s = summary(lat_ms)
    return {
        "n": len(lat_ms),
        "n_requested": args.n,
        "p50_ms": s.get("p50"),
        "p99_ms": s.get("p99"),
        "mean_ms": s.get("mean"),
        "dispatch_ms": s,
        "submit_call_ms": summary(submit_ms),
        "submit_to_terminal_seen_ms": summary(total_ms),
        "warmup_ms": warm_ms,
        "missing_stamps": missing,
        "job_states": states,
        "entrypoint": "python -c '" + STAMP_CODE + "' FILE",
    }


def mode_throughput(client, args, work: Path, deadline: float) -> dict:
    from concurrent.futures import ThreadPoolExecutor

    n = args.n
    ids: list[str] = []
    submit_err = 0
    t_first = time.time()
    if args.concurrency <= 1:
        for i in range(n):
            if time.time() > deadline:
                log(f"throughput: time budget exhausted while submitting ({len(ids)} submitted)")
                break
            try:
                ids.append(client.submit_job(entrypoint="true"))
            except Exception as e:  # noqa: BLE001
                submit_err += 1
                log("submit failed:", e)
            if (i + 1) % 100 == 0:
                log(f"throughput: submitted {i + 1}/{n} ({time.time() - t_first:.1f}s)")
    else:
        with ThreadPoolExecutor(args.concurrency) as ex:
            ids.extend(ex.map(lambda _: client.submit_job(entrypoint="true"), range(n)))
    t_submitted = time.time()
    pending = set(ids)
    final: dict[str, dict] = {}
    last_seen = t_submitted
    last_log = 0.0
    while pending:
        if time.time() > deadline:
            log(f"throughput: time budget exhausted, {len(pending)} jobs still pending")
            break
        time.sleep(args.tput_poll)
        now = time.time()
        for j in client.list_jobs():
            sid = j.submission_id
            if sid in pending:
                st = str(getattr(j.status, "value", j.status))
                if st in TERMINAL:
                    pending.discard(sid)
                    final[sid] = {"status": st, "start_time": j.start_time, "end_time": j.end_time}
                    last_seen = now
        if now - last_log > 10:
            last_log = now
            log(f"throughput: {len(final)}/{len(ids)} done ({now - t_first:.1f}s)")
    states: dict[str, int] = {}
    for v in final.values():
        states[v["status"]] = states.get(v["status"], 0) + 1
    ends = [v["end_time"] for v in final.values() if v["end_time"]]
    last_end = max(ends) / 1000.0 if ends else last_seen
    wall = last_end - t_first
    wall_seen = last_seen - t_first
    done = len(final)
    return {
        "n": done,
        "n_requested": n,
        "complete": not pending and done == n,
        "jobs_per_s": round(rate(done, wall), 3),
        "wall_s": round(wall, 3),
        "jobs_per_s_poller": round(rate(done, wall_seen), 3),
        "wall_s_poller": round(wall_seen, 3),
        "submit_wall_s": round(t_submitted - t_first, 3),
        "submit_per_s": round(rate(len(ids), t_submitted - t_first), 3),
        "submit_errors": submit_err,
        "job_states": states,
        "submit_concurrency": args.concurrency,
        "entrypoint": "true",
        "client": "ray.job_submission.JobSubmissionClient.submit_job (SDK)",
    }


def mode_logs(client, args, work: Path, deadline: float) -> dict:
    n = args.lines
    # 9-digit index + space + 89 'x' + '\n' = 100 bytes per line
    code = (
        "import sys\n"
        "w=sys.stdout.write\n"
        "pad='x'*89\n"
        f"for i in range({n}):\n"
        "    w('%09d %s\\n' % (i, pad))\n"
        "sys.stdout.flush()\n"
    )
    script = work / "emit_lines.py"
    script.write_text(code)
    ep = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"

    async def follow(sid: str, t0: float) -> dict:
        count = 0
        bad = 0
        expect = 0
        buf = ""
        t_first = None
        t_last = None
        chunks = 0
        nbytes = 0
        bad_samples: list[str] = []
        async for chunk in client.tail_job_logs(sid):
            now = time.time()
            chunks += 1
            nbytes += len(chunk)
            if t_first is None:
                t_first = now
            buf += chunk
            parts = buf.split("\n")
            buf = parts.pop()
            for line in parts:
                if len(line) == 99 and line[:9].isdigit() and int(line[:9]) == expect:
                    expect += 1
                    count += 1
                    t_last = now
                elif line.strip():
                    bad += 1
                    if len(bad_samples) < 5:
                        bad_samples.append(line[:200])
            if time.time() > deadline:
                log("logs: time budget exhausted while following")
                break
        return {"count": count, "bad": bad, "t_first": t_first, "t_last": t_last,
                "chunks": chunks, "bytes": nbytes, "trailing": len(buf),
                "bad_samples": bad_samples}

    t0 = time.time()
    sid = client.submit_job(entrypoint=ep)
    res = asyncio.run(follow(sid, t0))
    st = job_status(client, sid)
    t_last = res["t_last"] or time.time()
    t_first = res["t_first"] or t_last
    return {
        "lines": n,
        "received": res["count"],
        # every payload line arrived, in order, intact (foreign lines, e.g.
        # anything Ray itself writes to the job log, are counted separately)
        "all_received": res["count"] == n,
        "foreign_lines": res["bad"],
        "foreign_samples": res["bad_samples"],
        # lines/s while streaming: first chunk received -> last payload line
        "lines_per_s": round(rate(res["count"], t_last - t_first), 1),
        # including job start: submit -> last payload line
        "lines_per_s_from_submit": round(rate(res["count"], t_last - t0), 1),
        "mb_per_s": round(rate(res["bytes"] / 1e6, t_last - t_first), 2),
        "submit_to_first_chunk_s": round(t_first - t0, 3),
        "submit_to_last_line_s": round(t_last - t0, 3),
        "chunks": res["chunks"],
        "bytes": res["bytes"],
        "job_state": st,
        "follower": "JobSubmissionClient.tail_job_logs",
    }


def bench_main(args) -> int:
    global _real_stdout_fd
    # keep fd 1 for the single JSON result; route every other write to stderr
    _real_stdout_fd = os.dup(1)
    os.dup2(2, 1)

    import ray  # import error -> hint below
    from ray.job_submission import JobSubmissionClient

    t_begin = time.time()
    load_start = os.getloadavg()
    deadline = t_begin + args.budget_s
    temp_dir = tempfile.mkdtemp(prefix="rp", dir="/tmp")  # short: Ray uses unix sockets
    work = Path(tempfile.mkdtemp(prefix="rpw", dir="/tmp"))
    result: dict = {"peer": "ray", "mode": args.mode}
    sampler = None
    try:
        if args.mode == "dispatch":
            result["direct_entrypoint_ms"] = direct_entrypoint_baseline(sys.executable, work)
        result.update(start_ray(args, temp_dir))
        log(f"ray up: {result}")
        sampler = RssSampler(exclude={1, os.getpid()})
        result["pss_idle_mb"] = round(RssSampler.snapshot({1, os.getpid()})[0] / 1024, 1)
        sampler.start()
        client = JobSubmissionClient(DASH_URL)
        result["listeners"] = check_listeners()
        t_m = time.time()
        if args.mode == "dispatch":
            result.update(mode_dispatch(client, args, work, deadline))
        elif args.mode == "throughput":
            result.update(mode_throughput(client, args, work, deadline))
        elif args.mode == "logs":
            result.update(mode_logs(client, args, work, deadline))
        result["measure_wall_s"] = round(time.time() - t_m, 3)
    finally:
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)  # let the cleanup finish
        if sampler is not None:
            sampler.stop()
            result["pss_peak_mb"] = round(sampler.peak_kb / 1024, 1)
            result["procs_at_peak"] = sampler.peak_procs
        result["ray_stop_s"] = stop_ray()
        # Anything still alive in this private PID namespace was started by
        # us (Ray stragglers can rewrite files in temp_dir after `ray stop`);
        # end them before removing the temp dir.
        result["stragglers_killed"] = kill_namespace_stragglers()
        if not args.keep_temp:
            shutil.rmtree(temp_dir, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
        else:
            result["temp_dir"] = temp_dir
    result.update({
        "ray_version": ray.__version__,
        "config": {"num_cpus": args.num_cpus, "object_store_mb": args.object_store_mb,
                   "poll_s": args.poll, "tput_poll_s": args.tput_poll,
                   "submit_concurrency": args.concurrency, "warmup": args.warmup if args.mode == "dispatch" else None},
        "total_wall_s": round(time.time() - t_begin, 3),
        "host": {"nproc": os.cpu_count(), "python": platform.python_version(),
                 "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "namespace": "unshare --net --pid --fork --mount-proc (lo only)",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t_begin)),
    })
    emit(result)
    return 0


def parse_args(argv: list[str]):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=["dispatch", "throughput", "logs"], required=True)
    p.add_argument("--n", type=int, default=200, help="jobs (dispatch/throughput)")
    p.add_argument("--lines", type=int, default=1_000_000, help="lines (logs mode)")
    p.add_argument("--warmup", type=int, default=2, help="uncounted jobs before dispatch")
    p.add_argument("--poll", type=float, default=0.02, help="dispatch status poll period, s")
    p.add_argument("--tput-poll", type=float, default=0.25, help="throughput list_jobs poll period, s")
    p.add_argument("--concurrency", type=int, default=1, help="throughput submit threads")
    p.add_argument("--num-cpus", type=int, default=1)
    p.add_argument("--object-store-mb", type=int, default=100)
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="stop measuring after this long and report what was done")
    p.add_argument("--keep-temp", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        log(f"ray is not importable from {sys.executable}; run bench/setup_peers.sh and use "
            ".bench-venv/bin/python")
        return 2
    if os.environ.get(NS_ENV) != "1":
        return reexec_in_namespace(argv)
    if os.getpid() != 1:
        log("expected to be PID 1 of a private PID namespace; refusing")
        return 3
    return namespace_init(args)


if __name__ == "__main__":
    sys.exit(main())
