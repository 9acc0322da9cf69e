"""The idle monitor's alerted episodes and the notifier's queued notices survive a controller killed with kill -9.

Real processes throughout: recorded NVML readings on the agent, a local HTTP server in Slack's place, and the
controller's own buckets read over NATS to know when it has kept what it must.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import Cluster, connect, free_port, wait_for
from test_gpu import Webhook, recording, texts

from incl.controller.idle import Episode
from incl.controller.notify import Kind, notice_id
from incl.proto import subjects
from incl.proto.messages import JobState

FAST_NOTIFY = {"rate_per_s": 50.0, "backoff_initial": 0.2, "backoff_max": 0.5, "max_attempts": 200}


class Hook:
    """A webhook endpoint on a port fixed in advance, so that it can be down first and come up later."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/services/T0/B0/secret"
        self.server: Any = None

    def up(self) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Webhook)
        self.server.posts = []
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def posts(self) -> list[tuple[float, dict[str, Any]]]:
        return self.server.posts if self.server is not None else []

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    h = Hook()
    yield h
    h.close()


async def kept(cluster: Cluster, bucket: str, key: str) -> bytes | None:
    """What the controller keeps under `key` in one of its buckets, read over NATS."""
    async with await connect(cluster.nats.url, "test", connect_timeout=2, reconnect_wait=0.1,
                             request_timeout=5) as bus:
        entry = await (await bus.bucket(bucket)).get(key)
        return entry[0] if entry is not None else None


async def gone(cluster: Cluster, bucket: str, key: str) -> bool:
    return await kept(cluster, bucket, key) is None


async def test_an_alerted_episode_is_not_alerted_again_after_a_controller_kill(cluster: Cluster, tmp_path: Path,
                                                                                hook: Hook) -> None:
    hook.up()
    config = {"notify": {"webhook": hook.url, "events": ["idle", "cancelled"]}, "notifier": FAST_NOTIFY}
    cluster.start_controller(**config)
    # Two GPUs busy for 1 s, then idle for good.
    cluster.start_agent("gpu2", gpu_sample_interval=0.05, gpu_recording=str(recording(tmp_path, 2, 20, 4000)))
    await cluster.wait_agents(1)
    idle = {"threshold": 10, "window": "1s", "grace": "0s", "action": "notify"}
    first = await cluster.submit("sleep 120", name="napper", resources={"gpus": 1}, gpu_idle=idle)
    await cluster.wait_state(first.id, {JobState.RUNNING})
    await wait_for(lambda: any("napper" in t for t in texts(hook.server)), what="the first alert")

    async def episode_kept() -> Episode | None:
        data = await kept(cluster, subjects.IDLE_BUCKET, first.id)
        return msgspec.msgpack.decode(data, type=Episode) if data else None

    episode = await wait_for(episode_kept, what="the alerted episode in its bucket")
    assert episode.attempt == 1
    # Delivered and cleared from the outbox, so that the restart below has nothing to send again.
    await wait_for(lambda: gone(cluster, subjects.NOTICES_BUCKET, episode.notice_id), what="the outbox cleared")

    cluster.controller.kill()  # type: ignore[union-attr]
    cluster.start_controller(**config)
    # A canary job starts idle after the restart: once its alert is out, the restarted controller has watched the
    # first job idle for a whole window too (from its first heartbeat on, no later than the canary's start).
    canary = await cluster.submit("sleep 120", name="canary", resources={"gpus": 1}, gpu_idle=idle)
    await wait_for(lambda: any("canary" in t for t in texts(hook.server)), what="the canary's alert")
    async with cluster.client() as c:
        assert (await c.job_reply(first.id)).gpu_idle_since == pytest.approx(episode.since)  # resumed, not new
        await c.cancel(first.id)
        await c.cancel(canary.id)
    # The cancel notices queue behind any alert raised before them on the same webhook.
    await wait_for(lambda: sum("cancelled" in t for t in texts(hook.server)) == 2, what="both cancel notices")
    alerts = [t for t in texts(hook.server) if "has idle GPUs" in t]
    assert sorted(alerts) == ["canary (tester) has idle GPUs", "napper (tester) has idle GPUs"], texts(hook.server)
    await wait_for(lambda: gone(cluster, subjects.IDLE_BUCKET, first.id), what="the episode dropped with the job")


async def test_a_notice_queued_while_the_webhook_is_down_is_delivered_once_after_a_kill(cluster: Cluster,
                                                                                        hook: Hook) -> None:
    config = {"notify": {"webhook": hook.url, "events": ["succeeded"]}, "notifier": FAST_NOTIFY}
    cluster.start_controller(**config)
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    job = await cluster.submit("true", name="lonely")
    assert (await cluster.wait_done(job.id)).state is JobState.SUCCEEDED
    key = notice_id(job.id, 1, Kind.SUCCEEDED)
    await wait_for(lambda: kept(cluster, subjects.NOTICES_BUCKET, key), what="the notice in the outbox")
    await wait_for(lambda: "notify_retry" in cluster.controller.output(), what="a failed post")  # type: ignore[union-attr]

    cluster.controller.kill()  # type: ignore[union-attr]
    hook.up()
    cluster.start_controller(**config)
    await wait_for(lambda: any("lonely" in t for t in texts(hook.server)), what="the notice after the restart")
    await wait_for(lambda: gone(cluster, subjects.NOTICES_BUCKET, key), what="the outbox cleared")
    assert [t for t in texts(hook.server) if "lonely" in t] == ["lonely (tester) succeeded"]
