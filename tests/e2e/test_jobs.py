"""A job's life on a real stack: runs, fails, is cancelled; its logs and metrics arrive whole and in order."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import Cluster, pid_alive, wait_for

from incl.proto.messages import JobState

PY = sys.executable


async def test_job_succeeds_with_every_log_line_and_metric_in_order(cluster: Cluster) -> None:
    cluster.start_controller()
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    script = (
        "import incl, sys\n"
        "for i in range(3000):\n"
        "    print(f'line {i}')\n"
        "    if i % 100 == 0: print(f'err {i}', file=sys.stderr)\n"
        "for s in range(200):\n"
        "    incl.log({'loss': 1.0 / (s + 1), 'step_sq': s * s}, step=s)\n"
    )
    job = await cluster.submit(f"{PY} -c \"{script}\"")
    done = await cluster.wait_done(job.id)
    assert done.state is JobState.SUCCEEDED, done
    assert done.exit_code == 0
    lines = await cluster.log_lines(job.id)
    stdout = [x for x in lines if x.startswith(b"line")]
    assert stdout == [f"line {i}".encode() for i in range(3000)]
    assert [x for x in lines if x.startswith(b"err")] == [f"err {i}".encode() for i in range(0, 3000, 100)]
    points = await cluster.metric_points(job.id)
    assert [p.step for p in points] == list(range(200))
    assert points[10].values == {"loss": 1.0 / 11, "step_sq": 100.0}


async def test_failing_job_reports_exit_code_and_last_lines(cluster: Cluster) -> None:
    cluster.start_controller()
    cluster.start_agent("a1")
    job = await cluster.submit("echo starting; echo 'Traceback: boom' >&2; exit 7")
    done = await cluster.wait_done(job.id)
    assert done.state is JobState.FAILED
    assert done.exit_code == 7 and done.reason == "exit code 7"
    assert done.current.tail[-2:] == ["starting", "Traceback: boom"] or "Traceback: boom" in done.current.tail
    out = subprocess.run([PY, "-m", "incl.cli", "--nats", cluster.nats.url, "show", job.id],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "FAILED" in out.stdout and "Traceback: boom" in out.stdout and "exit code 7" in out.stdout


async def test_cancel_kills_the_whole_process_group(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_controller()
    cluster.start_agent("a1")
    pids = tmp_path / "pids"
    # The job forks two children that ignore nothing special and would outlive a naive kill of the shell.
    job = await cluster.submit(f"sleep 300 & echo $! >> {pids}; (sleep 300; echo never) & echo $! >> {pids}; "
                               f"echo $$ >> {pids}; wait")
    await cluster.wait_state(job.id, {JobState.RUNNING})
    await wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 3, what="job's pids")
    procs = [int(p) for p in pids.read_text().split()]
    assert all(pid_alive(p) for p in procs)
    async with cluster.client() as c:
        await c.cancel(job.id)
    done = await cluster.wait_done(job.id)
    assert done.state is JobState.CANCELLED
    await wait_for(lambda: not any(pid_alive(p) for p in procs), timeout=5, what="every process gone")


async def test_cancel_of_a_queued_job_and_of_a_finished_job(cluster: Cluster) -> None:
    cluster.start_controller()  # no agent: the job stays queued
    job = await cluster.submit("true")
    async with cluster.client() as c:
        cancelled = await c.cancel(job.id)
        assert cancelled.state is JobState.CANCELLED
    out = subprocess.run([PY, "-m", "incl.cli", "--nats", cluster.nats.url, "cancel", job.id],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "already finished" in out.stderr


async def test_agent_started_before_the_controller_registers_once_it_is_up(cluster: Cluster) -> None:
    cluster.start_agent("early")
    job_early = None
    cluster.start_controller()
    await cluster.wait_agents(1)
    job_early = await cluster.submit("echo hi")
    assert (await cluster.wait_done(job_early.id)).state is JobState.SUCCEEDED


async def test_cli_end_to_end_submit_follow_ls_logs_metrics(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_controller()
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    base = [PY, "-m", "incl.cli", "--nats", cluster.nats.url]
    spec = tmp_path / "incl.yaml"
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "train.py").write_text("import incl\nfor s in range(5):\n    print('epoch', s)\n"
                                                "    incl.log({'acc': s / 5}, step=s)\n")
    spec.write_text("name: demo\nworkdir: code\nrun: python3 train.py\nenv:\n  SEED: 3\n")
    out = subprocess.run([*base, "submit", "-f", str(spec), "--follow"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.splitlines()[0]
    assert [ln for ln in out.stdout.splitlines()[1:]] == [f"epoch {s}" for s in range(5)]
    listed = json.loads(subprocess.run([*base, "ls", "--json"], capture_output=True, text=True, timeout=30).stdout)
    assert [(j["id"], j["state"]) for j in listed] == [(job_id, "SUCCEEDED")]
    logs = subprocess.run([*base, "logs", job_id], capture_output=True, text=True, timeout=30)
    assert logs.stdout.splitlines() == [f"epoch {s}" for s in range(5)]
    metrics = json.loads(subprocess.run([*base, "metrics", job_id, "--json"], capture_output=True, text=True,
                                        timeout=30).stdout)
    assert [(p["step"], p["values"]["acc"]) for p in metrics] == [(s, s / 5) for s in range(5)]
    failed = subprocess.run([*base, "submit", "--follow", "--", "sh", "-c", "echo bye; exit 4"],
                            capture_output=True, text=True, timeout=60)
    assert failed.returncode == 4 and "bye" in failed.stdout


async def test_long_lines_binary_and_invalid_utf8_pass_through(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_controller()
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    script = tmp_path / "emit.py"
    script.write_text(
        "import sys\n"
        "out = sys.stdout.buffer\n"
        "out.write(b'x' * 1_000_000 + b'\\n')\n"  # one 1 MB line
        "out.write(bytes(range(256)).replace(b'\\n', b'') + b'\\n')\n"  # every byte value
        "out.write(b'\\xff\\xfe not utf-8 \\xc3\\x28\\n')\n"
        "out.write(b'no newline at the end')\n"
    )
    job = await cluster.submit(f"{PY} {script}")
    assert (await cluster.wait_done(job.id)).state is JobState.SUCCEEDED
    expected = (b"x" * 1_000_000 + b"\n" + bytes(range(256)).replace(b"\n", b"") + b"\n"
                + b"\xff\xfe not utf-8 \xc3\x28\n" + b"no newline at the end\n")
    out = subprocess.run([PY, "-m", "incl.cli", "--nats", cluster.nats.url, "logs", job.id], capture_output=True,
                         timeout=60)
    assert out.returncode == 0
    assert out.stdout == expected
