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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gpu"))
from multinode_nccl import DDP_SCRIPT, ranks_seen  # the stock DDP script, one copy for both

pytest.importorskip("torch")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# What a user runs on every node by hand, verbatim but for --nproc-per-node: NPROC_PER_NODE is the GPUs per
# node (1 without GPUs), and this CPU job wants 2 processes per node.
TORCHRUN = ("torchrun --nnodes $NNODES --nproc-per-node 2 --node-rank $NODE_RANK "
            "--master-addr $MASTER_ADDR --master-port $MASTER_PORT train.py")


def path_with_torchrun() -> str:
    """The test interpreter's bin folder first, so that the job's shell finds its `torchrun`."""
    return os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "/usr/bin:/bin")])


async def test_torchrun_from_the_run_line_trains_a_stock_ddp_script_across_two_nodes(cluster: Cluster,
                                                                                     tmp_path: Path) -> None:
    cluster.start_controller()
    cluster.start_agent("a1", cpus=2)
    cluster.start_agent("a2", cpus=2)
    await cluster.wait_agents(2)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "train.py").write_text(DDP_SCRIPT)
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
