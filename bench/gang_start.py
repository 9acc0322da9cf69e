#!/usr/bin/env python3
"""Gang start: submit -> every rank's process started, for multi-node jobs of N = 2, 4, 8, 16 ranks on warm
local agents, against starting the same N processes by hand over SSH.

    .venv/bin/python bench/gang_start.py [--repeat 10] [--sizes 2,4,8,16]

Prints a table and writes everything to ``bench/results/gang_start.json`` (``--out``).

The stack: ``incl up --agents 16 --cpus 1`` in a private INCL_HOME on a free port (bench/incl_side.py's Stack),
so a job of N nodes (``resources: {nodes: N, cpus: 1}``) takes N distinct agents, one rank each, as on N hosts.
16 agents is the largest N; they are Python processes of ~60 MB and idle between jobs, which a small host
carries (their heartbeats cost little). Warm: ``--warmup`` uncounted gangs of each size run first.

Each rank's command is the dispatch benchmark's stamp (bench/stamp.py), its file named by its rank:
``PY -c 'import time,sys;open(sys.argv[1],"w").write(repr(time.time()))' DIR/$NODE_RANK``, so "started" means
an interpreter is running the rank's first line, as a torchrun would be. Per gang, with t0 taken just before
``Client.submit()`` (one host, one clock):
  * last   = max(stamps) - t0          submit -> every rank's process started (the target: p50 <= 100 ms at N=8)
  * spread = max(stamps) - min(stamps) first -> last rank started (the target: p99 <= 50 ms)
  * spawned = the agents' own spawn times (attempt.nodes[k].started_at), last - t0: without the interpreter.
Each gang is waited on (polling every 20 ms) before the next is submitted.

The reference, what a user does without INCL: open a shell and, for each node, start the rank over SSH in
the background (``ssh nodeK 'torchrun ... --node-rank K' &``). Measured here as:
  * ssh      -- a real ``ssh`` per rank to a private sshd on 127.0.0.1 (started here when /usr/sbin/sshd exists;
    key auth, a fresh connection each, no ControlMaster: what a plain loop does), all started from one
    process in sequence without waiting, the same stamp command run remotely. Localhost SSH has no network
    round trips, so on real hosts this reference is slower, not faster.
  * local    -- the same loop without ssh (``subprocess.Popen`` of the stamp command, through a shell): the
    floor of any launcher on this host, what every figure above pays for the interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from incl_side import Stack, free_port, wait_terminal  # noqa: E402
from stamp import STAMP_CODE  # noqa: E402
from stats import summary  # noqa: E402

from incl.bus.client import Client, current_user  # noqa: E402
from incl.proto.messages import JobState  # noqa: E402
from incl.proto.spec import load_spec  # noqa: E402

SSHD = Path("/usr/sbin/sshd")


def default_job_python() -> str:
    """The system's python3: it starts in ~10 ms where a virtual environment with editable installs takes
    60-80 ms here, which would bury the launcher's own cost under the interpreter's on every side alike."""
    return "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def log(*a: object) -> None:
    print("[gang_start]", *a, file=sys.stderr, flush=True)


def stamp_cmd(py: str, folder: Path, rank: str) -> str:
    return f"{shlex.quote(py)} -c {shlex.quote(STAMP_CODE)} {shlex.quote(str(folder))}/{rank}"


def read_stamps(folder: Path, n: int, timeout: float = 10.0) -> list[float] | None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        files = list(folder.iterdir())
        if len(files) == n:
            try:
                return [float(f.read_text()) for f in files]
            except ValueError:  # a rank is still writing
                pass
        time.sleep(0.005)
    return None


class GangStack(Stack):
    """bench/incl_side.py's stack, with a longer start-up wait: 16 agents on a small, busy host."""

    def _incl(self, *argv: str, timeout: float) -> subprocess.CompletedProcess:
        if argv[0] == "up":
            argv, timeout = (*argv, "--timeout", "240"), 300
        return super()._incl(*argv, timeout=timeout)


async def incl_gangs(url: str, n: int, reps: int, warmup: int, py: str, work: Path) -> dict:
    last, spread, spawned, states = [], [], [], {}
    async with Client(url, timeout=30.0) as client:
        for i in range(warmup + reps):
            folder = work / f"incl-{n}-{i}"
            folder.mkdir()
            spec = load_spec({"run": stamp_cmd(py, folder, "$NODE_RANK"), "resources": {"nodes": n, "cpus": 1}})
            t0 = time.time()
            job = await client.submit(spec, current_user())
            job = await wait_terminal(client, job.id, 0.02)
            stamps = read_stamps(folder, n)
            if i < warmup:
                continue
            states[str(job.state)] = states.get(str(job.state), 0) + 1
            if job.state is not JobState.SUCCEEDED or stamps is None:
                log(f"N={n} rep {i}: {job.state} {job.reason} stamps={stamps}")
                continue
            last.append((max(stamps) - t0) * 1000)
            spread.append((max(stamps) - min(stamps)) * 1000)
            cur = job.current
            if cur is not None and all(nd.started_at for nd in cur.nodes):
                spawned.append((max(nd.started_at for nd in cur.nodes) - t0) * 1000)
    return {"last_ms": summary(last), "spread_ms": summary(spread), "spawned_ms": summary(spawned),
            "job_states": states}


class Sshd:
    """A private sshd on 127.0.0.1 (its own host key, config and authorized key), for the SSH reference."""

    def __init__(self, folder: Path) -> None:
        self.dir, self.port = folder, free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> list[str]:
        """The ssh command prefix that reaches it (without the remote command)."""
        d = self.dir
        d.mkdir(mode=0o700)
        for key in ("host", "user"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)], check=True)
        shutil.copy(d / "user.pub", d / "authorized_keys")
        os.chmod(d / "authorized_keys", 0o600)
        Path("/run/sshd").mkdir(exist_ok=True)  # its privilege-separation folder
        (d / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\nPidFile {d / 'pid'}\n"
            f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\nUsePAM no\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nMaxStartups 100:30:200\nUseDNS no\n")
        self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(d / "sshd_config")],
                                     stdout=subprocess.DEVNULL, stderr=open(d / "sshd.log", "w"))  # noqa: SIM115
        cmd = ["ssh", "-q", "-p", str(self.port), "-i", str(d / "user"), "-o", "BatchMode=yes",
               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ControlMaster=no",
               "127.0.0.1"]
        deadline = time.time() + 10
        while subprocess.run([*cmd, "true"], capture_output=True).returncode != 0:
            if time.time() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"sshd did not answer: {(d / 'sshd.log').read_text()[-2000:]}")
            time.sleep(0.1)
        return cmd

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)


def by_hand(prefix: list[str] | None, n: int, reps: int, warmup: int, py: str, work: Path, name: str) -> dict:
    """N ranks started in sequence from one process, none waited for before the next (`cmd &` in a loop):
    through `ssh` when `prefix` is given, else directly through a shell."""
    last, spread = [], []
    for i in range(warmup + reps):
        folder = work / f"{name}-{n}-{i}"
        folder.mkdir()
        t0 = time.time()
        procs = [subprocess.Popen([*prefix, stamp_cmd(py, folder, str(k))] if prefix else
                                  stamp_cmd(py, folder, str(k)), shell=prefix is None, stdin=subprocess.DEVNULL)
                 for k in range(n)]
        for p in procs:
            p.wait(timeout=60)
        stamps = read_stamps(folder, n)
        if i < warmup or stamps is None:
            continue
        last.append((max(stamps) - t0) * 1000)
        spread.append((max(stamps) - min(stamps)) * 1000)
    return {"last_ms": summary(last), "spread_ms": summary(spread)}


def ratio(ref: float | None, ours: float | None) -> float | None:
    return round(ref / ours, 2) if ref and ours else None


def table(results: dict) -> str:
    refs = [r for r in ("ssh", "local") if r in next(iter(results.values()))]
    head = ["N", "INCL last p50", "p99", "spread p50", "p99", "spawned p50"]
    for r in refs:
        head += [f"{r} last p50", "p99", "spread p50", "x (p50)"]
    rows = [head]
    for n, res in results.items():
        inc = res["incl"]
        row = [n, inc["last_ms"].get("p50"), inc["last_ms"].get("p99"), inc["spread_ms"].get("p50"),
               inc["spread_ms"].get("p99"), inc["spawned_ms"].get("p50")]
        for r in refs:
            ref = res[r]
            row += [ref["last_ms"].get("p50"), ref["last_ms"].get("p99"), ref["spread_ms"].get("p50"),
                    ratio(ref["last_ms"].get("p50"), inc["last_ms"].get("p50"))]
        rows.append([f"{x:.1f}" if isinstance(x, float) else str(x) for x in row])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[2, 4, 8, 16])
    p.add_argument("--repeat", type=int, default=10, help="gangs measured per size")
    p.add_argument("--warmup", type=int, default=2, help="uncounted gangs per size first")
    p.add_argument("--job-python", default=default_job_python(),
                   help="interpreter of the stamp, for every side (default: the system python3)")
    p.add_argument("--no-ssh", action="store_true", help="skip the ssh reference")
    p.add_argument("--keep-home", action="store_true", help="keep the stack's INCL_HOME (its daemons' logs)")
    p.add_argument("--out", default=str(HERE / "results" / "gang_start.json"))
    args = p.parse_args()
    py = args.job_python
    work = Path(tempfile.mkdtemp(prefix="incl-gang-", dir="/tmp"))
    agents = max(args.sizes)
    stack, sshd = GangStack(agents, 1, keep=args.keep_home), None
    results: dict = {}
    t_begin = time.time()
    try:
        stack.up()
        prefix = None
        if SSHD.exists() and shutil.which("ssh") and not args.no_ssh:
            sshd = Sshd(work / "sshd")
            prefix = sshd.start()
        for n in args.sizes:
            log(f"N={n}: INCL")
            res = {"incl": asyncio.run(incl_gangs(stack.url, n, args.repeat, args.warmup, py, work))}
            if prefix:
                log(f"N={n}: ssh")
                res["ssh"] = by_hand(prefix, n, args.repeat, args.warmup, py, work, "ssh")
            res["local"] = by_hand(None, n, args.repeat, args.warmup, py, work, "local")
            results[str(n)] = res
            log(f"N={n}: INCL last p50 {res['incl']['last_ms'].get('p50')} ms")
    finally:
        if sshd:
            sshd.stop()
        stack.down()
        shutil.rmtree(work, ignore_errors=True)
    out = {"results": results, "config": {"agents": agents, "agent_cpus": 1, "repeat": args.repeat,
                                          "warmup": args.warmup, "job_python": py,
                                          "entrypoint": stamp_cmd("PY", Path("DIR"), "RANK"),
                                          "ssh": sshd is not None},
           "host": {"nproc": os.cpu_count(), "loadavg_end": os.getloadavg()},
           "incl_up_s": stack.up_s, "total_wall_s": round(time.time() - t_begin, 1),
           "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(t_begin))}
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(table(results))
    print(f"(ms; x = reference p50 / INCL p50; {args.repeat} gangs per size; written to {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
