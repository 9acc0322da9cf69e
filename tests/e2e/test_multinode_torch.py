"""A stock PyTorch DDP script, launched by `torchrun` from a 2-node job's `run:` on local agents, trains unchanged:
gloo on CPU, 2 nodes x 2 processes, every process ends with the same parameters. Skipped where torch is not
importable (it is not a test dependency); tests/gpu/multinode_nccl.py runs the same with NCCL on a GPU."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from conftest import Cluster

from incl.proto.messages import JobState

pytest.importorskip("torch")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# What a user runs on every node by hand, verbatim but for --nproc-per-node: NPROC_PER_NODE is the GPUs per
# node (1 without GPUs), and this CPU job wants 2 processes per node.
TORCHRUN = ("torchrun --nnodes $NNODES --nproc-per-node 2 --node-rank $NODE_RANK "
            "--master-addr $MASTER_ADDR --master-port $MASTER_PORT train.py")

# A stock DDP script: nothing in it knows about INCL. Each rank trains on its own data, so the parameters agree
# at the end only if the gradients were all-reduced; the checksum is printed in full precision.
TRAIN = r"""
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


def path_with_torchrun() -> str:
    """The test interpreter's bin folder first, so that the job's shell finds its `torchrun`."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])


def ranks_seen(lines: list[bytes]) -> dict[int, tuple[int, int, str]]:
    """RANK line of each process: global rank -> (world size, node, checksum)."""
    out = {}
    for line in lines:
        if line.startswith(b"RANK "):
            _, rank, _, world, _, node, _, checksum = line.decode().split()
            out[int(rank)] = (int(world), int(node), checksum)
    return out


async def test_torchrun_from_the_run_line_trains_a_stock_ddp_script_across_two_nodes(cluster: Cluster,
                                                                                     tmp_path: Path) -> None:
    cluster.start_controller()
    cluster.start_agent("a1", cpus=2)
    cluster.start_agent("a2", cpus=2)
    await cluster.wait_agents(2)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "train.py").write_text(TRAIN)
    job = await cluster.submit(TORCHRUN, resources={"nodes": 2, "cpus": 2}, workdir=str(tmp_path / "w"),
                               env={"PATH": path_with_torchrun(), "OMP_NUM_THREADS": "1"})
    done = await cluster.wait_done(job.id, timeout=240)
    lines = await cluster.log_lines(job.id)
    assert done.state is JobState.SUCCEEDED, (done.reason, lines[-40:])
    seen = ranks_seen(lines)
    assert sorted(seen) == [0, 1, 2, 3], lines
    assert {world for world, _, _ in seen.values()} == {4}
    assert sorted(node for _, node, _ in seen.values()) == [0, 0, 1, 1]  # 2 processes on each node
    assert len({checksum for _, _, checksum in seen.values()}) == 1, seen  # gradients were all-reduced
