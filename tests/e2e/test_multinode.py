"""Multi-node jobs on local agents (real nats-server, controller, agents and processes): ranks rendezvous over
TCP at MASTER_ADDR:MASTER_PORT; all or nothing placement; one failing node stops the gang, which resumes whole."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from conftest import Cluster, wait_for

from incl.proto.messages import JobState

pytestmark = pytest.mark.slow

# An all-reduce of the ranks over stdlib sockets: rank 0 listens at MASTER_ADDR:MASTER_PORT, every other rank
# sends its rank, rank 0 sends the sum back to all. Each prints what it saw.
ALLREDUCE = r"""
import json, os, socket, time
rank, n = int(os.environ['NODE_RANK']), int(os.environ['NNODES'])
addr, port = os.environ['MASTER_ADDR'], int(os.environ['MASTER_PORT'])
seen = {k: os.environ[k] for k in ('NODE_RANK', 'NNODES', 'MASTER_ADDR', 'MASTER_PORT', 'INCL_NUM_NODES',
                                    'INCL_NODE_RANK', 'INCL_NODE_IPS', 'NPROC_PER_NODE', 'INCL_RDZV_ENDPOINT')}
print('ENV', json.dumps(seen), flush=True)
if rank == 0:
    srv = socket.create_server((addr, port))
    conns = [srv.accept()[0] for _ in range(n - 1)]
    total = rank + sum(int(c.recv(64)) for c in conns)
    for c in conns:
        c.sendall(str(total).encode())
else:
    for _ in range(200):
        try:
            c = socket.create_connection((addr, port))
            break
        except OSError:
            time.sleep(0.05)
    c.sendall(str(rank).encode())
    total = int(c.recv(64))
print('SUM', total, flush=True)
"""


async def test_a_three_node_job_rendezvouses_and_all_reduces(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_controller(log_level="debug")
    for a in ("a1", "a2", "a3"):
        cluster.start_agent(a, cpus=2)
    await cluster.wait_agents(3)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "allreduce.py").write_text(ALLREDUCE)
    job = await cluster.submit("python3 allreduce.py", resources={"nodes": 3, "cpus": 1},
                               workdir=str(tmp_path / "w"))
    done = await cluster.wait_done(job.id, timeout=60)
    assert done.state is JobState.SUCCEEDED, (done.reason, done.current)
    cur = done.current
    assert cur is not None and [n.rank for n in cur.nodes] == [0, 1, 2]
    assert sorted(n.agent_id for n in cur.nodes) == ["a1", "a2", "a3"]
    assert all(n.state is JobState.SUCCEEDED for n in cur.nodes)
    lines = [line for line in await cluster.log_lines(job.id)]
    sums = [line for line in lines if line.startswith(b"SUM")]
    assert sums == [b"SUM 3"] * 3, lines
    envs = [json.loads(line.removeprefix(b"ENV ")) for line in lines if line.startswith(b"ENV")]
    assert sorted(e["NODE_RANK"] for e in envs) == ["0", "1", "2"]
    assert {(e["NNODES"], e["MASTER_ADDR"], e["MASTER_PORT"]) for e in envs} == {
        ("3", "127.0.0.1", str(cur.nodes[0].port))}
    assert all(e["INCL_NODE_RANK"] == e["NODE_RANK"] and e["INCL_NUM_NODES"] == "3" for e in envs)
    assert {e["INCL_RDZV_ENDPOINT"] for e in envs} == {f"127.0.0.1:{cur.nodes[0].port}"}


async def test_a_gang_waits_with_its_reason_and_starts_only_when_every_node_can(cluster: Cluster) -> None:
    cluster.start_controller()
    cluster.start_agent("a1", cpus=2)
    cluster.start_agent("a2", cpus=2)
    await cluster.wait_agents(2)
    job = await cluster.submit("echo rank $NODE_RANK", resources={"nodes": 3, "cpus": 1})

    async def waiting() -> str | None:
        j = await cluster.job(job.id)
        return j.reason if j.state is JobState.QUEUED and j.reason and "1 of 3 nodes" in j.reason else None

    reason = await wait_for(waiting, 20, "the gang to wait with its reason")
    assert "waiting for 1 of 3 nodes" in reason
    await asyncio.sleep(1.0)
    assert (await cluster.job(job.id)).attempts == []  # never a partial gang
    cluster.start_agent("a3", cpus=2)
    done = await cluster.wait_done(job.id, timeout=40)
    assert done.state is JobState.SUCCEEDED and len(done.attempts) == 1
    assert sorted(line for line in await cluster.log_lines(job.id)) == [b"rank 0", b"rank 1", b"rank 2"]
