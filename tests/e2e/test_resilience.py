"""Daemons that never die and never split (issue 9): poison and stale events, messages over the bus's limit,
duplicate and forged agents, lost exit events, idempotent submits. Real processes, a real NATS server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest
from conftest import AGENT_CFG, Cluster, Daemon, NatsServer, wait_for

from incl.bus.client import Client
from incl.bus.connection import Bus
from incl.proto import subjects
from incl.proto.codec import Decoder, encode
from incl.proto.errors import Conflict
from incl.proto.messages import (
    AgentInfo,
    DeadLetter,
    Envelope,
    JobExited,
    JobState,
    RegisterReply,
    RegisterRequest,
    Resources,
)

PY = sys.executable


async def publish_events(url: str, *payloads: bytes, agent: str = "intruder") -> None:
    async with Client(url, name=agent) as client:
        for data in payloads:
            await client.bus.publish_durable(subjects.events(agent), data)


async def dead_letters(url: str) -> list[DeadLetter]:
    """Every parked message, read from the dead-letter stream itself (not through the controller)."""
    async with Client(url) as client:
        pull = await client.bus.pull(subjects.DEAD_STREAM, f"{subjects.DEAD_PREFIX}.>", "test-dead-letters",
                                     ack_wait=30.0)
        return [Decoder(DeadLetter).decode(d.data) for d in await pull.fetch(100, timeout=1.0)]


async def test_poison_and_stale_events_leave_the_controller_applying_later_events(cluster: Cluster) -> None:
    """An event for an unknown job, a stale attempt's exit, an exit from an agent that does not hold the attempt,
    and bytes that are no event at all: the controller logs and drops or parks each, and goes on."""
    cluster.start_controller()
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    done = await cluster.wait_done((await cluster.submit("echo one")).id)
    assert done.state is JobState.SUCCEEDED
    running = await cluster.submit("sleep 3")
    await cluster.wait_state(running.id, {JobState.RUNNING})
    await publish_events(
        cluster.nats.url,
        encode(JobExited(job_id="j-nosuchjob", attempt=1, agent_id="intruder", exit_code=0)),
        encode(JobExited(job_id=done.id, attempt=7, agent_id="a1", exit_code=1)),
        encode(JobExited(job_id=running.id, attempt=1, agent_id="intruder", exit_code=1, reason="forged")),
        b"\xc1 not an event",
    )
    after = await cluster.wait_done(running.id, timeout=30)
    assert after.state is JobState.SUCCEEDED and len(after.attempts) == 1, after
    assert await cluster.job(done.id) == done  # finished jobs are unchanged
    later = await cluster.wait_done((await cluster.submit("echo two")).id)
    assert later.state is JobState.SUCCEEDED
    assert cluster.controller is not None and cluster.controller.running
    parked = await dead_letters(cluster.nats.url)
    assert [p.data for p in parked] == [b"\xc1 not an event"]
    assert "undecodable" in parked[0].error and parked[0].source == "controller-events"
    listed = cluster.cli("admin", "dead-letters")
    assert listed.returncode == 0 and "controller-events" in listed.stdout and "undecodable" in listed.stdout, listed
    out = cluster.controller.output()
    assert "event_for_unknown_job" in out and "event_stale" in out and "Traceback" not in out


async def test_long_output_lines_and_retries_keep_every_daemon_up_and_the_record_bounded(cluster: Cluster) -> None:
    """A job that prints 20 lines of 60 KB, then fails, retried: every exit event is under the bus limit, every
    attempt's tail is a few KB cut at a line boundary, and no daemon dies."""
    cluster.start_controller()
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    run = f"{PY} -c \"import sys; [print(str(i) + 'x' * 60000) for i in range(20)]; sys.exit(3)\""
    job = await cluster.submit(run, retry={"max_attempts": 3, "on_failure": True})
    done = await cluster.wait_done(job.id, timeout=60)
    assert done.state is JobState.FAILED and len(done.attempts) == 3, done.reason
    for attempt in done.attempts:
        assert attempt.exit_code == 3
        assert sum(len(line.encode()) + 1 for line in attempt.tail) <= 4096 + 100
        assert attempt.tail[-1].endswith("x" * 500) and "line cut" in attempt.tail[-1]
    assert cluster.agents["a1"].running and cluster.controller is not None and cluster.controller.running
    lines = await cluster.log_lines(job.id, attempt=3)
    assert b"".join(lines).count(b"x") == 20 * 60000  # the log itself keeps every byte


async def test_an_oversized_metric_line_is_dropped_with_a_note_and_the_agent_lives(cluster: Cluster) -> None:
    cluster.start_controller()
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    script = (
        "import incl, json, os, socket, time\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(os.environ['INCL_METRICS_SOCKET'])\n"
        "s.sendall(json.dumps({'ts': time.time(), 'step': 0, 'values': {'x' * 1036000: 1.0}}).encode() + b'\\n')\n"
        "s.close()\n"
        "incl.log({'loss': 0.5}, step=1)\n"
    )
    job = await cluster.submit(f"{PY} -c \"{script}\"")
    done = await cluster.wait_done(job.id, timeout=30)
    assert done.state is JobState.SUCCEEDED, done
    points = await cluster.metric_points(job.id)
    assert [(p.step, p.values) for p in points] == [(1, {"loss": 0.5})]
    notes = [line.data for b in await cluster.logs(job.id) for line in b.lines if line.stream == 3]
    assert any(b"metric point dropped" in n and b"over the 65536 byte limit" in n for n in notes), notes
    assert cluster.agents["a1"].running


async def test_forged_registers_and_a_duplicate_agent_cost_a_running_job_nothing(cluster: Cluster) -> None:
    """Registers for a live agent's id from another process are refused (Conflict) and mark nothing LOST."""
    cluster.start_controller()
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    job = await cluster.submit("sleep 4")
    await cluster.wait_state(job.id, {JobState.RUNNING})
    async with cluster.client() as client:
        info = AgentInfo(agent_id="a1", hostname="evil", capacity=Resources(cpus=1, memory=1 << 30))
        for n in range(3):
            with pytest.raises(Conflict, match="held by a live agent process"):
                await client.bus.request(subjects.agent_api("a1", subjects.REGISTER),
                                         RegisterRequest(meta=Envelope.new("evil"), info=info, instance=f"forged{n}"),
                                         RegisterReply, 5.0)
    cfg = cluster._config("a1-dup", {**AGENT_CFG, "agent_id": "a1", "nats_url": cluster.nats.url,
                                     "work_dir": str(cluster.tmp / "agents" / "a1-dup")})
    dup = Daemon("a1-dup", [PY, "-m", "incl.agent", "--config", str(cfg)], cluster.tmp / "dup.log",
                 cluster.env).start()  # a second process with the same id
    await wait_for(lambda: "held by a live agent process" in dup.output(), what="the duplicate to be refused")
    dup.stop()
    done = await cluster.wait_done(job.id, timeout=30)
    assert done.state is JobState.SUCCEEDED and len(done.attempts) == 1, done.attempts


async def test_a_job_whose_exit_event_was_lost_ends_instead_of_running_for_ever(cluster: Cluster) -> None:
    """The exit event is purged before the controller applies it: the agent no longer reports the attempt
    (running or ended), and the controller ends it with a reason and runs the job again."""
    cluster.start_controller(attempt_missing_after=1.0)
    cluster.start_agent("a1", ended_retention=1.0)
    await cluster.wait_agents(1)
    job = await cluster.submit("sleep 1")
    await cluster.wait_state(job.id, {JobState.RUNNING})
    assert cluster.controller is not None
    cluster.controller.kill()
    async with cluster.client() as client:
        await wait_for(lambda: "attempt_ended" in cluster.agents["a1"].output(), what="the attempt to end")
        await wait_for(lambda: _pending_events(client.bus), what="the exit event in the stream")
        await client.bus.purge(subjects.EVENTS_STREAM)
    cluster.start_controller(attempt_missing_after=1.0)
    done = await cluster.wait_done(job.id, timeout=30)
    assert [a.state for a in done.attempts] == [JobState.LOST, JobState.SUCCEEDED], done.attempts
    assert "no longer runs this attempt" in (done.attempts[0].reason or "")


async def _pending_events(bus: Bus) -> bool:
    return (await bus.state(subjects.EVENTS_STREAM)).messages >= 1


async def test_a_submit_retried_with_its_key_creates_one_job(cluster: Cluster) -> None:
    cluster.start_controller()
    await cluster.wait_controller()
    from incl.proto.spec import load_spec

    spec = load_spec({"run": "echo hi"})
    async with cluster.client() as c:
        first = await c.submit(spec, user="ann", key="k-123")
        again = await c.submit(spec, user="ann", key="k-123")
        other = await c.submit(spec, user="bob", key="k-123")  # keys are per user
        assert again.id == first.id and other.id != first.id
        assert len([j for j in await c.jobs() if j.id == first.id]) == 1


async def test_listings_come_in_pages_past_the_payload_limit(cluster: Cluster) -> None:
    """1,200 jobs of 4 KB each (5 MB) and 80 agents with 16 KB of labels each (1.3 MB): `incl ls` and
    `incl agents` read them all, page by page."""
    cluster.start_controller()
    await cluster.wait_controller()
    from incl.proto.spec import load_spec

    spec = load_spec({"run": "echo " + "x" * 4000, "resources": {"cpus": 10_000}})  # never placed
    async with cluster.client() as c:
        for _batch in range(12):
            await asyncio.gather(*(c.submit(spec, user="ann") for _ in range(100)))
        labels = {f"k{i}": "v" * 250 for i in range(64)}
        for n in range(80):
            info = AgentInfo(agent_id=f"fake{n:02d}", hostname="h", capacity=Resources(cpus=1, memory=1 << 30),
                             labels=labels)
            req = RegisterRequest(meta=Envelope.new("t"), info=info, instance="i")
            await c.bus.request(subjects.agent_api(info.agent_id, subjects.REGISTER), req, RegisterReply, 5.0)
    ls = cluster.cli("ls", "--json", timeout=120)
    assert ls.returncode == 0, ls.stderr
    assert len(json.loads(ls.stdout)) == 1200
    agents = cluster.cli("agents", "--json", timeout=120)
    assert agents.returncode == 0, agents.stderr
    assert len(json.loads(agents.stdout)) == 80


async def test_labels_over_the_limits_are_refused_with_the_reason(cluster: Cluster) -> None:
    cluster.start_controller()
    agent = cluster.start_agent("a1", labels={"big": "v" * 20_000})
    await wait_for(lambda: not agent.running, timeout=30, what="the agent to stop")
    assert "register_refused" in agent.output() and "over the limit of 256" in agent.output()
    assert cluster.controller is not None and cluster.controller.running
    await cluster.wait_controller()


def test_no_structlog_call_passes_the_reserved_event_key() -> None:
    """structlog's first argument is `event`: a keyword `event=` raises TypeError at the log call."""
    import ast

    root = Path(__file__).resolve().parents[2]
    bad = []
    for folder in ("controller", "agent", "cli", "sdk", "artifacts", "proto", "bench"):
        for path in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr in {"debug", "info", "warning", "error", "exception", "critical", "msg"}
                        and any(k.arg == "event" for k in node.keywords)):
                    bad.append(f"{path.relative_to(root)}:{node.lineno}")
    assert bad == []


async def test_a_frozen_agents_job_stops_before_its_attempt_runs_elsewhere(cluster: Cluster, tmp_path: Path) -> None:
    """kill -STOP of an agent (a stand-in for a partition) past its deadline: the fork server enforces the lease
    the agent cannot, so attempt 1 has stopped before attempt 2 starts on another agent: never two at once."""
    ticks = tmp_path / "ticks"
    script = (
        "import os, time\n"
        f"f = open('{ticks}', 'a', buffering=1)\n"
        "for _ in range(100):\n"
        "    f.write(os.environ['INCL_ATTEMPT'] + ' ' + repr(time.time()) + '\\n'); time.sleep(0.05)\n"
    )
    cluster.start_controller()
    a1 = cluster.start_agent("a1")
    await cluster.wait_agents(1)
    job = await cluster.submit(f"{PY} -c \"{script}\"")
    await wait_for(lambda: ticks.exists() and ticks.read_text().count("\n") > 5, what="attempt 1 to tick")
    assert a1.proc is not None
    os.kill(a1.proc.pid, signal.SIGSTOP)
    try:
        cluster.start_agent("a2")
        await cluster.wait_state(job.id, {JobState.RUNNING, JobState.ASSIGNED}, timeout=30)
        await wait_for(lambda: "2 " in ticks.read_text(), timeout=30, what="attempt 2 to tick")
    finally:
        os.kill(a1.proc.pid, signal.SIGCONT)
    done = await cluster.wait_done(job.id, timeout=60)
    assert [a.state for a in done.attempts] == [JobState.LOST, JobState.SUCCEEDED], done.attempts
    by_attempt: dict[str, list[float]] = {}
    for line in ticks.read_text().splitlines():
        attempt, ts = line.split()
        by_attempt.setdefault(attempt, []).append(float(ts))
    assert max(by_attempt["1"]) < min(by_attempt["2"]), "attempt 1 still ran when attempt 2 started"
    assert len(by_attempt["2"]) == 100


def small_nats(tmp_path: Path, max_file_store: str) -> NatsServer:
    """A NATS server whose JetStream may store only `max_file_store` (a small disk)."""
    server = NatsServer(tmp_path)
    conf = tmp_path / "nats.conf"
    conf.write_text(f'listen: 127.0.0.1:{server.port}\n'
                    f'jetstream {{ store_dir: "{tmp_path / "js"}", max_file_store: {max_file_store} }}\n')
    server.argv = [server.argv[0], "-c", str(conf)]
    return server.start()


async def test_streams_are_sized_to_the_storage_jetstream_has(tmp_path: Path) -> None:
    """The configured 10 GB of stream limits on a 2 GB JetStream: the controller sizes them down, says so, and
    serves; nothing loops on `insufficient storage resources`."""
    server = small_nats(tmp_path, "2GB")
    cluster = Cluster(tmp_path, server)
    try:
        cluster.start_controller()
        cluster.start_agent("a1")
        done = await cluster.wait_done((await cluster.submit("echo fits")).id, timeout=40)
        assert done.state is JobState.SUCCEEDED
        assert cluster.controller is not None and "streams_sized_down" in cluster.controller.output()
    finally:
        cluster.close()
        server.kill()


async def test_a_jetstream_too_small_for_any_log_retention_stops_the_controller_with_what_to_change(
        tmp_path: Path) -> None:
    server = small_nats(tmp_path, "16MB")
    cluster = Cluster(tmp_path, server)
    try:
        controller = cluster.start_controller()
        await wait_for(lambda: not controller.running, timeout=30, what="the controller to stop")
        assert controller.proc is not None and controller.proc.returncode == 1
        assert "too little storage" in controller.output() and "max_file_store" in controller.output()
    finally:
        cluster.close()
        server.kill()


async def test_a_controller_killed_mid_burst_creates_each_retried_submit_exactly_once(cluster: Cluster) -> None:
    """kill -9 of the controller during 300 submits whose clients retry with their idempotency key: every
    submit returns a job, and the store holds exactly one job per submit."""
    from incl.proto.spec import load_spec

    cluster.start_controller()
    await cluster.wait_controller()
    specs = [load_spec({"run": f"echo {n}", "name": f"s{n}"}) for n in range(300)]
    results: list[str] = []

    async def submitter(part: list) -> None:  # type: ignore[type-arg]
        async with cluster.client() as c:
            for spec in part:
                results.append((await c.submit(spec, user="ann", attempts=8)).spec.name or "")

    burst = asyncio.gather(*(submitter(specs[k::10]) for k in range(10)))
    await wait_for(lambda: len(results) >= 60, what="the burst to be under way")
    assert cluster.controller is not None
    cluster.controller.kill()
    cluster.start_controller()
    await burst
    assert sorted(results) == sorted(s.name or "" for s in specs)
    async with cluster.client() as c:
        names = [j.spec.name for j in await c.jobs()]
    assert len(names) == 300 and len(set(names)) == 300, f"{len(names)} jobs for 300 submits"
