"""GPU check, run by hand on a machine with an NVIDIA GPU and torch (not collected by pytest).

Starts the embedded stack (`incl up`), submits a job that keeps the GPU busy with a bf16 matmul loop for
BUSY seconds and then holds it idle for IDLE seconds, with `gpu_idle: {threshold: 10, window: 30s}` and a
`notify:` webhook served here. It polls `incl show JOB --json` and `incl agents --json` for the utilization
the agent reports, and records the idle alerts the webhook receives.

Passes when the reported utilization is above 80 % while the job is busy, and the idle alert fires once,
in the idle phase. Prints a JSON summary; exit 0 pass, 1 fail, 2 cannot run here (no GPU, no torch).

    python tests/gpu/gpu_check.py [--busy 60] [--idle 90]
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

JOB = """\
import sys, time
import torch

busy, idle = float(sys.argv[1]), float(sys.argv[2])
a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
print(f"busy for {busy:g}s", flush=True)
end = time.time() + busy
while time.time() < end:
    for _ in range(20):
        c = a @ b
    torch.cuda.synchronize()
print(f"idle for {idle:g}s, still holding the GPU", flush=True)
time.sleep(idle)
print("done", flush=True)
"""


class Recorder(http.server.BaseHTTPRequestHandler):
    """Plays Slack's incoming webhook: records each post with the time it arrived."""

    posts: ClassVar[list[tuple[float, dict[str, Any]]]] = []  # shared by the handler instances on purpose

    def do_POST(self) -> None:  # http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Recorder.posts.append((time.time(), json.loads(body or b"{}")))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def incl_binary() -> str:
    beside = Path(sys.executable).parent / "incl"
    found = str(beside) if beside.exists() else shutil.which("incl")
    if not found:
        raise SystemExit("the `incl` command is not installed next to this Python")
    return found


def incl(*args: str, env: dict[str, str], check: bool = True, timeout: float = 60) -> str:
    done = subprocess.run([incl_binary(), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"incl {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def walk(value: Any) -> Any:
    """Every dict inside a JSON value."""
    if isinstance(value, dict):
        yield value
        for v in value.values():
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)


def job_utilization(agents: Any, job_id: str) -> float | None:
    """The job's GPU utilization from `incl agents --json`: the mean over its GPUs' heartbeat means."""
    values = [
        d["util_gpu_mean"]
        for d in walk(agents)
        if job_id in (d.get("job_ids") or []) and d.get("util_gpu_mean") is not None
    ]
    return statistics.fmean(values) if values else None


def idle_alerts(posts: list[tuple[float, dict[str, Any]]]) -> list[tuple[float, str]]:
    out = []
    for ts, body in posts:
        text = json.dumps(body)
        if "idle GPUs" in text or ":zzz:" in text:
            out.append((ts, "idle"))
        elif "using its GPUs again" in text:
            out.append((ts, "busy_again"))
    return out


def can_run() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=float, default=60)
    parser.add_argument("--idle", type=float, default=90)
    parser.add_argument("--poll", type=float, default=2)
    opts = parser.parse_args()
    if reason := can_run():
        print(json.dumps({"result": "skipped", "reason": reason}))
        return 2

    home = Path(tempfile.mkdtemp(prefix="incl-gpu-check-"))
    env = {**os.environ, "INCL_HOME": str(home), "INCL_USER": "gpu-check"}
    env.pop("INCL_NATS_URL", None)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{server.server_address[1]}/services/gpu-check/not-a-secret"
    work = home / "job"
    work.mkdir()
    (work / "job.py").write_text(JOB)
    spec = {
        "name": "gpu-check",
        "workdir": str(work),
        "run": f"{sys.executable} job.py {opts.busy:g} {opts.idle:g}",
        "resources": {"gpus": 1},
        "gpu_idle": {"threshold": 10, "window": "30s", "grace": "0s", "action": "notify"},
        "notify": {"webhook": hook, "events": ["idle"]},
    }
    (work / "incl.yaml").write_text(json.dumps(spec))  # JSON is YAML

    samples: list[tuple[float, float]] = []
    states: list[tuple[float, str]] = []
    try:
        incl("up", "--agents", "1", "--port", str(free_port()), env=env, timeout=120)
        job_id = json.loads(incl("submit", "-f", str(work / "incl.yaml"), "--json", env=env))["id"]
        deadline = time.time() + opts.busy + opts.idle + 180
        while time.time() < deadline:
            job = json.loads(incl("show", job_id, "--json", env=env))
            states.append((time.time(), job["state"]))
            if job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
                break
            util = job_utilization(json.loads(incl("agents", "--json", env=env)), job_id)
            if util is not None:
                samples.append((time.time(), util))
            time.sleep(opts.poll)
    finally:
        incl("down", env=env, check=False)
        server.shutdown()

    return verdict(samples, states, idle_alerts(Recorder.posts))


def verdict(
    samples: list[tuple[float, float]], states: list[tuple[float, str]], alerts: list[tuple[float, str]]
) -> int:
    busy = [(t, u) for t, u in samples if u >= 50]
    busy_end = busy[-1][0] if busy else None
    # Utilization while busy: the samples from the first to the last busy one, less the ramp at each end.
    inside = [u for t, u in samples if busy and busy[0][0] < t < busy[-1][0]]
    busy_util = statistics.median(inside) if inside else (busy[0][1] if busy else 0.0)
    idle = [t for t, kind in alerts if kind == "idle"]
    checks = {
        "busy_utilization_above_80": busy_util > 80,
        "one_idle_alert": len(idle) == 1,
        "alert_in_idle_phase": bool(idle) and busy_end is not None and all(t > busy_end for t in idle),
        "job_succeeded": bool(states) and states[-1][1] == "SUCCEEDED",
    }
    summary = {
        "result": "pass" if all(checks.values()) else "fail",
        "checks": checks,
        "busy_util_median": round(busy_util, 1),
        "busy_end": busy_end,
        "idle_alerts": idle,
        "alerts": alerts,
        "samples": [(round(t, 1), round(u, 1)) for t, u in samples],
        "final_state": states[-1][1] if states else None,
    }
    print(json.dumps(summary, indent=2))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
