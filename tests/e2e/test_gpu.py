"""GPU telemetry to alerts, quotas and notifications on a real stack, with recorded NVML readings.

No GPU exists here: the agent plays back recorded NVML readings through its telemetry seam (the same
sampler, heartbeat and controller code that runs on a GPU host); the real NVML path is checked on a GPU by
tests/gpu/gpu_check.py.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Cluster, wait_for

from incl.proto.errors import Unschedulable
from incl.proto.messages import JobState
from incl.proto.spec import load_spec

PY = sys.executable


class Webhook(http.server.BaseHTTPRequestHandler):
    posts: list[tuple[float, dict[str, Any]]]

    def do_POST(self) -> None:  # http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.posts.append((time.time(), json.loads(body)))  # type: ignore[attr-defined]
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[Any]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Webhook)
    server.posts = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/services/T0/B0/secret"  # type: ignore[attr-defined]
    yield server
    server.shutdown()
    server.server_close()


def texts(server: Any) -> list[str]:
    return [body["text"] for _, body in server.posts]


def recording(tmp: Path, gpus: int, busy_ticks: int, idle_ticks: int, busy_again: int = 0) -> Path:
    """Every GPU at 95 % for `busy_ticks` samples, then at 0 % for `idle_ticks`, then at 95 % again."""
    info = [{"index": i, "uuid": f"GPU-{i}", "model": "Fake A100", "memory_total": 80 * 2**30} for i in range(gpus)]
    tick = lambda u: {str(i): {"util_gpu": u, "util_mem": u / 2, "memory_used": 2**30} for i in range(gpus)}  # noqa: E731
    path = tmp / "nvml.yaml"
    ticks = [tick(95)] * busy_ticks + [tick(0)] * idle_ticks + [tick(95)] * busy_again
    path.write_text(yaml.safe_dump({"gpus": info, "readings": ticks}))
    return path


async def test_idle_job_alerts_once_after_the_window_and_stop_cancels(cluster: Cluster, tmp_path: Path,
                                                                      webhook: Any) -> None:
    cluster.start_controller(notify={"webhook": webhook.url, "events": ["started", "idle", "succeeded",
                                                                        "cancelled"]},
                             notifier={"rate_per_s": 50.0, "backoff_initial": 0.05})
    # 40 busy samples at 0.05 s (2 s), then idle for good.
    cluster.start_agent("gpu1", gpu_sample_interval=0.05, gpu_recording=str(recording(tmp_path, 1, 40, 4000)))
    await cluster.wait_agents(1)
    job = await cluster.submit("sleep 6", name="trainer", resources={"gpus": 1},
                               gpu_idle={"threshold": 10, "window": "1.5s", "grace": "0s", "action": "notify"})
    started = await cluster.wait_state(job.id, {JobState.RUNNING})
    assert started.current.agent_id == "gpu1"

    async def util() -> float | None:
        async with cluster.client() as c:
            return (await c.job_reply(job.id)).gpu_util

    assert await wait_for(util, what="reported utilization") > 80  # busy phase, seen through the heartbeat
    done = await cluster.wait_done(job.id)
    assert done.state is JobState.SUCCEEDED
    await wait_for(lambda: any("succeeded" in t for t in texts(webhook)), what="the succeeded notice")
    idle = [(ts, body) for ts, body in webhook.posts if "idle" in body["text"].lower() and "trainer" in body["text"]]
    assert len(idle) == 1, texts(webhook)  # one alert per episode, not one per heartbeat
    assert "below 10%" in json.dumps(idle[0][1])
    assert any("started" in t for t in texts(webhook))
    assert webhook.url not in cluster.controller.output()  # the webhook URL never reaches a log
    mine = await cluster.submit("true", notify={"webhook": webhook.url, "events": ["failed"]})
    shown = subprocess.run([PY, "-m", "incl.cli", "--nats", cluster.nats.url, "show", mine.id, "--json"],
                           capture_output=True, text=True, timeout=30).stdout
    assert webhook.url not in shown and "<webhook hidden>" in shown  # nor any other user's screen

    # action: stop cancels the job with reason gpu_idle (the readings are idle from now on).
    stopper = await cluster.submit("sleep 60", name="stopper", resources={"gpus": 1},
                                   gpu_idle={"threshold": 10, "window": "1s", "grace": "0s", "action": "stop"})
    done = await cluster.wait_done(stopper.id, timeout=30)
    assert (done.state, done.reason) == (JobState.CANCELLED, "gpu_idle")


async def test_recovery_message_follows_when_the_job_works_again(cluster: Cluster, tmp_path: Path,
                                                                 webhook: Any) -> None:
    cluster.start_controller(notify={"webhook": webhook.url, "events": ["idle"]}, notifier={"rate_per_s": 50.0})
    # 1 s busy, 3 s idle, then busy again.
    cluster.start_agent("gpu1", gpu_sample_interval=0.05,
                        gpu_recording=str(recording(tmp_path, 1, 20, 60, busy_again=4000)))
    await cluster.wait_agents(1)
    job = await cluster.submit("sleep 7", name="napper", resources={"gpus": 1},
                               gpu_idle={"threshold": 10, "window": "1s", "grace": "0s"})
    assert (await cluster.wait_done(job.id)).state is JobState.SUCCEEDED
    await wait_for(lambda: len(webhook.posts) >= 2, what="idle alert and recovery message")
    assert ["has idle GPUs" in t for t in texts(webhook)] == [True, False]
    assert "is using its GPUs again" in texts(webhook)[1]


async def test_an_unreachable_webhook_never_slows_scheduling(cluster: Cluster) -> None:
    # Nothing listens on port 9: every post fails and is retried with backoff, off the scheduling path.
    cluster.start_controller(notify={"webhook": "http://127.0.0.1:9/hook"},
                             notifier={"backoff_initial": 5.0, "max_attempts": 5})
    cluster.start_agent("a1", cpus=64)
    await cluster.wait_agents(1)
    started = time.monotonic()
    jobs = [await cluster.submit("true") for _ in range(20)]
    for job in jobs:
        assert (await cluster.wait_done(job.id)).state is JobState.SUCCEEDED
    assert time.monotonic() - started < 15  # 40 failing notices with 5 s backoffs would take minutes inline
    assert "notify_failed" in cluster.controller.output() or "notify_retry" in cluster.controller.output()


async def test_busy_job_never_alerts(cluster: Cluster, tmp_path: Path, webhook: Any) -> None:
    cluster.start_controller(notify={"webhook": webhook.url, "events": ["idle", "succeeded"]},
                             notifier={"rate_per_s": 50.0})
    cluster.start_agent("gpu1", gpu_sample_interval=0.05, gpu_recording=str(recording(tmp_path, 1, 4000, 0)))
    await cluster.wait_agents(1)
    job = await cluster.submit("sleep 4", name="busy", resources={"gpus": 1},
                               gpu_idle={"threshold": 10, "window": "1s", "grace": "0s"})
    assert (await cluster.wait_done(job.id)).state is JobState.SUCCEEDED
    await wait_for(lambda: any("succeeded" in t for t in texts(webhook)), what="the succeeded notice")
    assert not [t for t in texts(webhook) if "idle" in t.lower()]


async def test_team_at_quota_waits_with_the_reason_others_unaffected(cluster: Cluster, tmp_path: Path) -> None:
    quota = tmp_path / "quota.yaml"
    quota.write_text(yaml.safe_dump({"teams": {"vision": {"max_gpus": 1, "members": ["ann", "bob"]},
                                               "nlp": {"max_gpus": 4}}}))
    cluster.start_controller(quota_file=str(quota))
    cluster.start_agent("gpu4", gpu_sample_interval=0.05, gpu_recording=str(recording(tmp_path, 4, 4000, 0)))
    await cluster.wait_agents(1)
    gate = tmp_path / "gate"
    first = await cluster.submit(f"while [ ! -e {gate} ]; do sleep 0.05; done", user="ann", team="vision",
                                 resources={"gpus": 1})
    await cluster.wait_state(first.id, {JobState.RUNNING})
    second = await cluster.submit("echo second", user="bob", team="vision", resources={"gpus": 1})
    other = await cluster.submit("echo other", user="cat", team="nlp", resources={"gpus": 2})
    assert (await cluster.wait_done(other.id)).state is JobState.SUCCEEDED  # another team is unaffected

    async def waiting_reason() -> str | None:
        job = await cluster.job(second.id)
        return job.reason if job.state is JobState.QUEUED and job.reason and "quota" in job.reason else None

    assert await wait_for(waiting_reason) == "waiting for quota: team vision: 1/1 GPUs in use"
    async with cluster.client() as c:
        lines = {(q.kind, q.name): (q.used, q.limit) for q in await c.quota()}
        assert lines[("team", "vision")] == (1, 1)
        with pytest.raises(Unschedulable, match="team vision may hold at most 1"):
            await c.submit(load_spec({"run": "true", "team": "vision", "resources": {"gpus": 2}}), user="ann")
    gate.touch()
    assert (await cluster.wait_done(first.id)).state is JobState.SUCCEEDED
    assert (await cluster.wait_done(second.id)).state is JobState.SUCCEEDED  # starts once the first ends


async def test_each_job_sees_only_its_own_gpus(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_controller()
    cluster.start_agent("gpu2", gpu_sample_interval=0.05, gpu_recording=str(recording(tmp_path, 2, 4000, 0)))
    await cluster.wait_agents(1)
    out = tmp_path / "visible"
    jobs = [await cluster.submit(f"echo $CUDA_VISIBLE_DEVICES >> {out}; sleep 1", resources={"gpus": 1})
            for _ in range(2)]
    cpu = await cluster.submit("echo \"[$CUDA_VISIBLE_DEVICES]\"")
    for job in jobs:
        assert (await cluster.wait_done(job.id)).state is JobState.SUCCEEDED
    assert sorted(out.read_text().split()) == ["0", "1"]
    assert (await cluster.wait_done(cpu.id)).state is JobState.SUCCEEDED
    assert await cluster.log_lines(cpu.id) == [b"[]"]  # a CPU job gets no GPU
