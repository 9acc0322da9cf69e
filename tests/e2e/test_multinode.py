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


# Steps with a checkpoint (rank 0's is the one stored; every rank restores it) and a line per step with the time,
# in a file per attempt and rank: attempt 1's ranks must all be gone before attempt 2's first step.
TRAIN = r"""
import os, signal, sys, time
rank, attempt = os.environ['NODE_RANK'], os.environ['INCL_ATTEMPT']
ckpt = os.path.join(os.environ['INCL_CHECKPOINT_DIR'], 'step')
step = int(open(ckpt).read()) if os.path.exists(ckpt) else 0
ticks = open(os.path.join(os.environ['TICKS'], f'{attempt}-{rank}'), 'a')
print(f'rank {rank} attempt {attempt} starts at {step}', flush=True)
def save(n):
    with open(ckpt + '.tmp', 'w') as f:
        f.write(str(n))
    os.replace(ckpt + '.tmp', ckpt)
def on_term(*_):
    save(step)
    print(f'rank {rank} SIGTERM at {step}', flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
while step < TOTAL:
    step += 1
    save(step)
    ticks.write(f'{time.time()} {step}\n'); ticks.flush()
    time.sleep(0.05)
print(f'rank {rank} finished {step}', flush=True)
"""


def ticks_of(folder: Path) -> dict[tuple[str, str], list[tuple[float, int]]]:
    out: dict[tuple[str, str], list[tuple[float, int]]] = {}
    for path in folder.iterdir():
        attempt, rank = path.name.split("-")
        out[(attempt, rank)] = [(float(t), int(s)) for t, s in (line.split() for line in path.read_text().splitlines())]
    return out


async def test_an_agent_killed_mid_run_stops_every_rank_and_the_gang_resumes_whole(cluster: Cluster,
                                                                                  tmp_path: Path) -> None:
    ticks = tmp_path / "ticks"
    ticks.mkdir()
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "train.py").write_text(TRAIN.replace("TOTAL", "120"))
    cluster.start_controller()
    for a in ("a1", "a2", "a3"):
        cluster.start_agent(a, cpus=2)
    await cluster.wait_agents(3)
    job = await cluster.submit("python3 train.py", resources={"nodes": 3, "cpus": 1}, workdir=str(tmp_path / "w"),
                               env={"TICKS": str(ticks)}, retry={"max_attempts": 2})
    running = await cluster.wait_state(job.id, {JobState.RUNNING}, timeout=30)
    assert running.current is not None
    await wait_for(lambda: len(list(ticks.iterdir())) == 3 and all(p.stat().st_size > 100 for p in ticks.iterdir()),
                   timeout=20, what="every rank past a few steps")
    victim = running.current.nodes[1].agent_id  # rank 1's agent: rank 0 saves the checkpoint when it is stopped
    cluster.agents[victim].kill()
    cluster.start_agent("a4", cpus=2)  # the spare
    done = await cluster.wait_done(job.id, timeout=90)
    assert done.state is JobState.SUCCEEDED, (done.reason, done.attempts)
    first, second = done.attempts
    assert first.state is JobState.LOST and second.state is JobState.SUCCEEDED
    assert {n.state for n in first.nodes} == {JobState.LOST, JobState.CANCELLED}
    assert sorted(n.agent_id for n in second.nodes) == sorted({"a1", "a2", "a3", "a4"} - {victim})
    seen = ticks_of(ticks)
    last_of_1 = max(t for (att, _), ts in seen.items() if att == "1" for t, _ in ts)
    first_of_2 = min(t for (att, _), ts in seen.items() if att == "2" for t, _ in ts)
    assert last_of_1 < first_of_2, "a rank of attempt 1 was alive when attempt 2 started"
    resumed_at = min(s for (att, _), ts in seen.items() if att == "2" for _, s in ts)
    assert resumed_at > 1  # from rank 0's checkpoint, not from scratch
    assert all(ts[-1][1] == 120 for (att, _), ts in seen.items() if att == "2")


async def test_a_spot_notice_on_one_node_preempts_the_whole_gang_without_using_an_attempt(
        cluster: Cluster, tmp_path: Path) -> None:
    from imds import FakeImds, Instance

    ticks = tmp_path / "ticks"
    ticks.mkdir()
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "train.py").write_text(TRAIN.replace("TOTAL", "100"))
    cluster.start_controller()
    async with FakeImds() as imds:
        for n in (1, 2):
            endpoint = await imds.add(Instance(instance_id=f"i-{n}", local_ipv4="127.0.0.1"))
            cluster.start_agent(f"i-{n}", cpus=2, provider="aws", metadata={"endpoint": endpoint},
                                spot={"poll_interval": 0.1}, spot_upload_reserve=1.0, docker={"enabled": False})
        await cluster.wait_agents(2)
        job = await cluster.submit("python3 train.py", resources={"nodes": 2, "cpus": 1},
                                   workdir=str(tmp_path / "w"), env={"TICKS": str(ticks)},
                                   retry={"max_attempts": 1})
        running = await cluster.wait_state(job.id, {JobState.RUNNING}, timeout=30)
        assert running.current is not None
        await wait_for(lambda: sum(1 for _ in ticks.iterdir()) == 2, timeout=20, what="both ranks stepping")
        noticed = running.current.nodes[1].agent_id
        imds.notice(noticed)

        async def preempted() -> bool:
            return (await cluster.job(job.id)).attempts[0].state is JobState.PREEMPTED

        await wait_for(preempted, 30, "the gang's attempt to end PREEMPTED")
        first = (await cluster.job(job.id)).attempts[0]
        assert {n.state for n in first.nodes} == {JobState.PREEMPTED, JobState.CANCELLED}
        cluster.agents[noticed].stop()  # EC2 takes the instance; a replacement comes
        endpoint = await imds.add(Instance(instance_id="i-3", local_ipv4="127.0.0.1"))
        cluster.start_agent("i-3", cpus=2, provider="aws", metadata={"endpoint": endpoint},
                            spot={"poll_interval": 0.1}, docker={"enabled": False})
        done = await cluster.wait_done(job.id, timeout=60)
    assert done.state is JobState.SUCCEEDED, (done.reason, done.attempts)
    assert [a.state for a in done.attempts] == [JobState.PREEMPTED, JobState.SUCCEEDED]  # max_attempts: 1, untouched
    assert noticed not in {n.agent_id for n in done.attempts[1].nodes}


async def test_forged_and_stale_rank_events_leave_the_gang_and_the_controller_running(cluster: Cluster,
                                                                                      tmp_path: Path) -> None:
    """While a 2-node gang runs: a JobReady with no usable port and a failing JobExited from an agent that holds
    no rank of it, rank events of another attempt, a JobReady for a single-node job and for an unknown job. The
    controller drops each (logged, no traceback) and the gang ends as its ranks say."""
    from test_resilience import publish_events

    from incl.proto.codec import encode
    from incl.proto.messages import JobExited, JobReady

    cluster.start_controller()
    cluster.start_agent("a1", cpus=2)
    cluster.start_agent("a2", cpus=2)
    await cluster.wait_agents(2)
    single = await cluster.wait_done((await cluster.submit("echo one")).id)
    job = await cluster.submit("sleep 2; echo rank $NODE_RANK", resources={"nodes": 2, "cpus": 1})
    await cluster.wait_state(job.id, {JobState.RUNNING}, timeout=30)
    await publish_events(
        cluster.nats.url,
        encode(JobReady(job_id=job.id, attempt=1, agent_id="intruder", rank=0, port=70000)),
        encode(JobExited(job_id=job.id, attempt=1, agent_id="intruder", exit_code=1, reason="forged")),
        encode(JobExited(job_id=job.id, attempt=5, agent_id="a1", exit_code=1)),
        encode(JobReady(job_id=single.id, attempt=1, agent_id="a1", rank=0, port=1234)),
        encode(JobReady(job_id="j-nosuchjob", attempt=1, agent_id="a1", rank=0, port=1234)),
    )
    done = await cluster.wait_done(job.id, timeout=30)
    assert done.state is JobState.SUCCEEDED and len(done.attempts) == 1, done.attempts
    assert await cluster.job(single.id) == single
    assert cluster.controller is not None and cluster.controller.running
    out = cluster.controller.output()
    assert "event_refused" in out and "event_stale" in out and "event_for_unknown_job" in out
    assert "Traceback" not in out
