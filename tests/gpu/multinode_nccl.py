"""Multi-node DDP over NCCL, run by hand on a machine with NVIDIA GPUs and torch (tests/gpu/test_multinode_nccl.py
runs it under pytest, marked `gpu`).

Starts the embedded stack (`incl up --agents 2`: two local agents on this machine stand in for two nodes) and
submits a 2-node job, `resources: {nodes: 2, gpus: 1}`, whose `run:` is the plain torchrun line

    torchrun --nnodes $NNODES --nproc-per-node $NPROC_PER_NODE --node-rank $NODE_RANK \
             --master-addr $MASTER_ADDR --master-port $MASTER_PORT train.py

around the stock DDP script below (a tiny Linear model, 5 steps, gradients all-reduced), with the NCCL backend.
Passes when the job succeeds and its 2 processes print ranks 0 and 1 and the same parameter checksum.

Both local agents see every GPU of the host and may hand the same one to both ranks, which NCCL refuses
("Duplicate GPU detected"). So with 2 GPUs or more, rank k's node is given GPU k (`CUDA_VISIBLE_DEVICES=$NODE_RANK`,
what separate hosts give for free); with one GPU both ranks share it, which only NCCL >= 2.30 allows
(NCCL_MULTI_RANK_GPU_ENABLE=1, set here); an older NCCL makes the check answer "cannot run here".

Prints a JSON summary; exit 0 pass, 1 fail, 2 cannot run here (no GPU, no torch, one GPU and an old NCCL).

    python tests/gpu/multinode_nccl.py [--timeout 300]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TORCHRUN = ("torchrun --nnodes $NNODES --nproc-per-node $NPROC_PER_NODE --node-rank $NODE_RANK "
            "--master-addr $MASTER_ADDR --master-port $MASTER_PORT train.py")

# A stock DDP script: nothing in it knows about INCL (the same one tests/e2e/test_multinode_torch.py runs with
# gloo on CPU). Each rank trains on its own data, so the parameters agree at the end only if the gradients were
# all-reduced; the checksum is printed in full precision.
DDP_SCRIPT = r"""
import os
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

dist.init_process_group(backend=os.environ.get("DDP_BACKEND", "gloo"))
rank, world = dist.get_rank(), dist.get_world_size()
cuda = dist.get_backend() == "nccl"
device = torch.device("cuda", int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count()) if cuda else None
if cuda:
    torch.cuda.set_device(device)
torch.manual_seed(1234 + rank)  # different initial weights on purpose: DDP broadcasts rank 0's
model = torch.nn.Linear(8, 1).to(device)
ddp = DDP(model, device_ids=[device] if cuda else None)
opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
g = torch.Generator().manual_seed(rank)
for step in range(5):
    x, y = torch.randn(16, 8, generator=g).to(device), torch.randn(16, 1, generator=g).to(device)
    opt.zero_grad()
    torch.nn.functional.mse_loss(ddp(x), y).backward()
    opt.step()
checksum = sum(float(p.detach().double().sum()) for p in model.parameters())
print(f"RANK {rank} WORLD {world} NODE {os.environ['GROUP_RANK']} CHECKSUM {checksum!r}", flush=True)
dist.destroy_process_group()
"""

RANK_LINE = re.compile(rb"RANK (\d+) WORLD (\d+) NODE (\d+) CHECKSUM (\S+)")
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED", "LOST")


def ranks_seen(lines: list[bytes]) -> dict[int, tuple[int, int, str]]:
    """The RANK line of each process (a multi-node job's log lines may carry a rank prefix):
    global rank -> (world size, node, checksum)."""
    out = {}
    for line in lines:
        if m := RANK_LINE.search(line):
            out[int(m[1])] = (int(m[2]), int(m[3]), m[4].decode())
    return out


def can_run() -> str | None:
    try:
        import torch
        import torch.distributed as dist
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if not dist.is_nccl_available():
        return "this torch has no NCCL"
    if not (Path(sys.executable).parent / "torchrun").exists():
        return f"no torchrun next to {sys.executable}"
    return None


def nccl_version() -> str:
    import torch

    v = torch.cuda.nccl.version()
    return ".".join(map(str, v)) if isinstance(v, tuple) else str(v)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def incl(*args: str, env: dict[str, str], check: bool = True, timeout: float = 60) -> str:
    done = subprocess.run([sys.executable, "-m", "incl.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"incl {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def job_spec(work: Path, gpus: int) -> dict:
    bin_dir = str(Path(sys.executable).parent)
    env = {"DDP_BACKEND": "nccl", "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "/usr/bin:/bin")]),
           "NCCL_DEBUG": "WARN"}
    if gpus < 2:
        env["NCCL_MULTI_RANK_GPU_ENABLE"] = "1"  # both ranks on the one GPU (NCCL >= 2.30)
    run = TORCHRUN if gpus < 2 else f"export CUDA_VISIBLE_DEVICES=$NODE_RANK; {TORCHRUN}"
    return {"name": "multinode-nccl", "workdir": str(work), "run": run, "env": env,
            "resources": {"nodes": 2, "gpus": 1}}


def run_check(timeout: float) -> dict:
    import torch

    gpus = torch.cuda.device_count()
    home = Path(tempfile.mkdtemp(prefix="incl-nccl-check-"))
    env = {**os.environ, "INCL_HOME": str(home), "INCL_USER": "gpu-check"}
    env.pop("INCL_NATS_URL", None)
    work = home / "job"
    work.mkdir()
    (work / "train.py").write_text(DDP_SCRIPT)
    (work / "incl.yaml").write_text(json.dumps(job_spec(work, gpus)))  # JSON is YAML
    state, log = None, ""
    try:
        incl("up", "--agents", "2", "--port", str(free_port()), env=env, timeout=120)
        job_id = json.loads(incl("submit", "-f", str(work / "incl.yaml"), "--json", env=env))["id"]
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = json.loads(incl("show", job_id, "--json", env=env))["state"]
            if state in TERMINAL:
                break
            time.sleep(1.0)
        log = incl("logs", job_id, env=env, check=False)
    finally:
        incl("down", env=env, check=False)
        shutil.rmtree(home, ignore_errors=True)
    return {"gpus": gpus, "nccl": nccl_version(), "state": state, "log": log}


def verdict(res: dict) -> tuple[int, dict]:
    log = res.pop("log")
    seen = ranks_seen(log.encode().splitlines())
    if res["state"] != "SUCCEEDED" and "Duplicate GPU detected" in log:
        return 2, {"result": "skipped", "reason": f"one GPU and NCCL {res['nccl']}, which refuses two ranks on "
                                                  "one GPU (NCCL >= 2.30 or 2 GPUs needed)", **res}
    checks = {
        "job_succeeded": res["state"] == "SUCCEEDED",
        "ranks_0_and_1": sorted(seen) == [0, 1],
        "world_of_2": {w for w, _, _ in seen.values()} == {2},
        "one_rank_per_node": sorted(n for _, n, _ in seen.values()) == [0, 1],
        "same_checksum": len({c for _, _, c in seen.values()}) == 1,
    }
    ok = all(checks.values())
    out = {"result": "pass" if ok else "fail", "checks": checks, "ranks": seen, **res}
    if not ok:
        out["log_tail"] = log.splitlines()[-40:]
    return (0 if ok else 1), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for the job")
    opts = parser.parse_args()
    if reason := can_run():
        print(json.dumps({"result": "skipped", "reason": reason}))
        return 2
    code, summary = verdict(run_check(opts.timeout))
    print(json.dumps(summary, indent=2))
    return code


if __name__ == "__main__":
    sys.exit(main())
