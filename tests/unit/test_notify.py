"""Slack notifications, through a local HTTP server playing Slack's incoming-webhook endpoint."""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from incl.controller import state
from incl.controller.notify import (
    ClusterNotify,
    Kind,
    Notice,
    Notifier,
    NotifierConfig,
    check_channel,
    format_message,
    kinds_for,
    route,
)
from incl.proto.errors import SpecInvalid
from incl.proto.messages import Attempt, Job, JobState
from incl.proto.spec import JobSpec, Notify, NotifyEvent, Resources, load_spec

SECRET = "T000/B000/XXXXsecretTOKENxxxx"


class Webhook:
    """Records every post; answers each path from a script of (status, headers, body), then 200 "ok"."""

    def __init__(self) -> None:
        self.posts: list[tuple[float, str, dict[str, Any]]] = []
        self.script: dict[str, list[tuple[int, dict[str, str], str]]] = {}
        self._arrived = asyncio.Condition()
        self.base = ""

    def url(self, name: str = "hook") -> str:
        return f"{self.base}/services/{name}/{SECRET}"

    async def handle(self, request: web.Request) -> web.Response:
        name = request.path.split("/")[2]
        body = await request.json()
        async with self._arrived:
            self.posts.append((time.monotonic(), name, body))
            self._arrived.notify_all()
        status, headers, text = (self.script.get(name) or [(200, {}, "ok")]).pop(0)
        return web.Response(status=status, headers=headers, text=text)

    def to(self, name: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, body) for t, n, body in self.posts if n == name]

    async def wait(self, name: str, count: int, timeout: float = 5.0) -> list[tuple[float, dict[str, Any]]]:
        async with asyncio.timeout(timeout), self._arrived:
            await self._arrived.wait_for(lambda: len(self.to(name)) >= count)
        return self.to(name)


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    hook = Webhook()
    app = web.Application()
    app.router.add_post("/services/{name}/{rest:.*}", hook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hook.base = f"http://127.0.0.1:{port}"
    yield hook
    await runner.cleanup()


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/services/dead/{SECRET}"


FAST = NotifierConfig(rate_per_s=1000, backoff_initial=0.1, jitter=0.0, timeout=2.0, max_attempts=4)


@asynccontextmanager
async def running(notifier: Notifier) -> AsyncIterator[Notifier]:
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(notifier.run())
        try:
            yield notifier
        finally:
            task.cancel()


def own(notify: object) -> Notify | None:
    """A job's `notify:` as its incl.yaml gives it."""
    return load_spec({"run": "x", "notify": notify}).notify


def notice(kind: Kind = Kind.FAILED, job: str = "j-1", notify: Notify | None = None, **kw: Any) -> Notice:
    base: dict[str, Any] = {"job_name": "train-resnet", "user": "alice", "state": "FAILED", "attempt": 2,
                            "duration": 3725.0, "gpu_hours": 8.2745, "reason": "exit code 1"}  # fmt: skip
    return Notice(kind=kind, job_id=job, notify=notify, **{**base, **kw})


def all_text(body: dict[str, Any]) -> str:
    """Everything a reader sees in a Slack message."""
    parts = [body["text"]]
    for block in body["blocks"]:
        if "text" in block:
            parts.append(block["text"]["text"])
        parts += [f["text"] for f in block.get("fields", [])]
    return "\n".join(parts)


# --- what is posted ----------------------------------------------------------------------------------------


async def test_failure_message_has_what_the_user_needs(webhook: Webhook) -> None:
    tail = [f"step {i} loss 0.{i}" for i in range(30)] + ["RuntimeError: CUDA out of memory <oops>"]
    n = Notifier(ClusterNotify(webhook=webhook.url()), FAST)
    async with running(n):
        assert n.notify(notice(log_tail=tail))
        [(_, body)] = await webhook.wait("hook", 1)
    text = all_text(body)
    for expected in ("train-resnet", "failed", "alice", "FAILED", "1h 02m", "GPU-hours", "8.27", "exit code 1",
                     "`j-1` (attempt 2)", "CUDA out of memory &lt;oops&gt;", "step 29"):  # fmt: skip
        assert expected in text
    assert "step 10 " not in text  # only the last 20 lines
    assert body["text"] == "train-resnet (alice) failed: exit code 1"


async def test_notices_link_to_the_job_page_when_the_web_url_is_configured(webhook: Webhook) -> None:
    """With the web UI's public URL, the posted message links the job's name and id to its page; without it,
    the message names the job and links nowhere."""
    n = Notifier(ClusterNotify(webhook=webhook.url(), web_url="https://incl.example.com/"), FAST)
    plain = Notifier(ClusterNotify(webhook=webhook.url("plain")), FAST)
    async with running(n), running(plain):
        assert n.notify(notice(Kind.SUCCEEDED, job="j-3f2a", job_name="train <v2>", reason=None))
        assert plain.notify(notice(Kind.SUCCEEDED, job="j-3f2a", reason=None))
        [(_, body)] = await webhook.wait("hook", 1)
        [(_, bare)] = await webhook.wait("plain", 1)
    link = "https://incl.example.com/jobs/j-3f2a"
    assert body["blocks"][0]["text"]["text"] == f":white_check_mark: *<{link}|train &lt;v2&gt;>* succeeded"
    assert f"*Job*\n<{link}|j-3f2a> (attempt 2)" in all_text(body)
    assert "<http" not in all_text(bare) and "`j-3f2a` (attempt 2)" in all_text(bare)
    assert "https://incl.example.com" in repr(ClusterNotify(web_url="https://incl.example.com"))


def test_every_event_kind_has_its_own_headline() -> None:
    heads = {k: format_message(notice(k, reason=None))["blocks"][0]["text"]["text"] for k in Kind}
    assert len(set(heads.values())) == len(Kind)
    assert heads[Kind.PREEMPTED] == ":warning: *train-resnet* was preempted"
    idle = format_message(notice(Kind.IDLE, detail="GPU utilization below 10% for 15m 00s (mean 2.0%)"))
    assert "below 10% for 15m 00s" in all_text(idle)
    assert "Last log lines" not in all_text(format_message(notice(Kind.SUCCEEDED, log_tail=[])))


def test_notice_from_a_job_counts_duration_and_gpu_hours_over_attempts() -> None:
    spec = JobSpec(run="python train.py", name="bert", resources=Resources(gpus=4), notify=Notify(channel="ml"))
    job = Job(
        id="j-9", spec=spec, user="bob", state=JobState.FAILED, submitted_at=0, updated_at=0, reason="exit code 2",
        attempts=[
            Attempt(number=1, agent_id="a", state=JobState.PREEMPTED, assigned_at=0, started_at=0, ended_at=1800),
            Attempt(number=2, agent_id="b", state=JobState.FAILED, assigned_at=1900, started_at=2000,
                    ended_at=5600, tail=["boom"]),
        ],
    )  # fmt: skip
    n = Notice.from_job(Kind.FAILED, job, now=9999)
    assert (n.job_name, n.user, n.state, n.attempt) == ("bert", "bob", "FAILED", 2)
    assert n.duration == 3600 and n.gpu_hours == pytest.approx(6.0)  # (0.5 h + 1 h) x 4 GPUs
    assert n.log_tail == ["boom"] and n.reason == "exit code 2" and n.notify == Notify(channel="ml")


# --- retries -----------------------------------------------------------------------------------------------


async def test_429_is_retried_after_retry_after(webhook: Webhook) -> None:
    webhook.script["hook"] = [(429, {"Retry-After": "1"}, "rate_limited")]
    n = Notifier(ClusterNotify(webhook=webhook.url()), FAST)
    with capture_logs() as logs:
        async with running(n):
            n.notify(notice())
            (first, _), (second, body) = await webhook.wait("hook", 2)
            for _ in range(100):  # the notifier logs the send once Slack's answer is read: on a busy host, later
                if any(e["event"] == "notify_sent" for e in logs):
                    break
                await asyncio.sleep(0.02)
    assert 0.95 <= second - first < 1.5  # waited what Slack asked, not the 0.1 s backoff
    assert "train-resnet" in body["text"]
    assert [e["event"] for e in logs if e["event"].startswith("notify_")] == ["notify_retry", "notify_sent"]
    assert len(webhook.to("hook")) == 2


async def test_500_is_retried_with_growing_backoff(webhook: Webhook) -> None:
    webhook.script["hook"] = [(500, {}, "oops")] * 3
    n = Notifier(ClusterNotify(webhook=webhook.url()), FAST)
    async with running(n):
        n.notify(notice())
        times = [t for t, _ in await webhook.wait("hook", 4)]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19 and gaps[2] >= 0.39  # 0.1, 0.2, 0.4 s
    assert gaps[2] < 1.0


async def test_gives_up_after_max_attempts_and_logs_it(webhook: Webhook) -> None:
    webhook.script["hook"] = [(503, {}, "down")] * 10
    n = Notifier(ClusterNotify(webhook=webhook.url()), msgspec.structs.replace(FAST, max_attempts=3))
    with capture_logs() as logs:
        async with running(n):
            n.notify(notice())
            await webhook.wait("hook", 3)
            await asyncio.sleep(0.3)
    assert len(webhook.to("hook")) == 3
    failed = [e for e in logs if e["event"] == "notify_failed"]
    assert len(failed) == 1 and failed[0]["status"] == 503 and failed[0]["job_id"] == "j-1"


async def test_a_bad_webhook_is_not_retried(webhook: Webhook) -> None:
    webhook.script["hook"] = [(404, {}, "no_service")]
    n = Notifier(ClusterNotify(webhook=webhook.url()), FAST)
    with capture_logs() as logs:
        async with running(n):
            n.notify(notice())
            await webhook.wait("hook", 1)
            await asyncio.sleep(0.3)
    assert len(webhook.to("hook")) == 1
    [failed] = [e for e in logs if e["event"] == "notify_failed"]
    assert (failed["status"], failed["slack_error"]) == (404, "no_service")


# --- never in the way ----------------------------------------------------------------------------------------


async def test_unreachable_webhook_blocks_neither_callers_nor_other_webhooks(webhook: Webhook) -> None:
    dead = Notify(webhook=closed_port_url())
    config = msgspec.structs.replace(FAST, backoff_initial=5.0, max_attempts=10)
    n = Notifier(ClusterNotify(webhook=webhook.url("ok")), config)
    async with running(n):
        start = time.perf_counter()
        for i in range(200):
            n.notify(notice(job=f"dead-{i}", notify=dead))
        elapsed = time.perf_counter() - start
        await asyncio.sleep(0.1)  # the dead webhook is now in its 5 s backoff
        start = time.perf_counter()
        assert n.notify(notice(job="fine"))
        assert time.perf_counter() - start < 0.05
        [(_arrived, body)] = await webhook.wait("ok", 1, timeout=1.0)
    assert elapsed < 0.5  # 200 notify() calls while every post to the dead webhook waits 5 s
    assert "train-resnet" in body["text"]


async def test_full_queue_drops_with_a_warning_instead_of_blocking() -> None:
    n = Notifier(ClusterNotify(webhook="https://hooks.slack.com/services/" + SECRET), NotifierConfig(queue_size=2))
    with capture_logs() as logs:
        results = [n.notify(notice(job=f"j{i}")) for i in range(4)]
    assert results == [True, True, False, False]
    dropped = [e for e in logs if e["event"] == "notify_dropped"]
    assert [e["job_id"] for e in dropped] == ["j2", "j3"] and dropped[0]["log_level"] == "warning"


async def test_posts_to_one_webhook_are_rate_limited(webhook: Webhook) -> None:
    n = Notifier(ClusterNotify(webhook=webhook.url()), msgspec.structs.replace(FAST, rate_per_s=5))
    async with running(n):
        for i in range(3):
            n.notify(notice(job=f"j{i}"))
        times = [t for t, _ in await webhook.wait("hook", 3)]
    # 5 a second: 0.2 s apart as sent. Arrival times carry the loaded host's jitter, which can bring one pair closer
    # (seen: under 0.18 s) but not squeeze the whole run: a burst would arrive within milliseconds.
    assert times[-1] - times[0] >= 0.35, times
    assert all(b - a >= 0.1 for a, b in itertools.pairwise(times)), times


# --- routing -----------------------------------------------------------------------------------------------


async def test_job_settings_override_the_cluster_default(webhook: Webhook) -> None:
    cluster = ClusterNotify(
        webhook=webhook.url("default"), channels={"ml": webhook.url("ml")}, events=frozenset({Kind.FAILED})
    )
    n = Notifier(cluster, FAST)
    async with running(n):
        assert not n.notify(notice(Kind.STARTED, job="quiet"))  # the cluster sends failures only
        assert n.notify(notice(Kind.FAILED, job="plain"))
        chatty = own({"channel": "#ml", "events": ["started", "idle"]})
        check_channel(chatty, cluster)
        assert n.notify(notice(Kind.STARTED, job="chatty", notify=chatty))
        assert not n.notify(notice(Kind.FAILED, job="chatty", notify=chatty))  # not among its events
        assert n.notify(notice(Kind.IDLE_ENDED, job="chatty", notify=chatty))  # follows `idle`
        assert not n.notify(notice(Kind.FAILED, job="silent", notify=own(False)))
        await webhook.wait("default", 1)
        await webhook.wait("ml", 2)
    assert [b["text"].split(" ")[0] for _, b in webhook.to("ml")] == ["train-resnet", "train-resnet"]
    assert len(webhook.to("default")) == 1


def test_no_webhook_anywhere_means_nothing_is_queued() -> None:
    assert route(notice(), ClusterNotify()) is None
    assert not Notifier(ClusterNotify()).notify(notice())


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({"webhook": "https://hooks.slack.com/services/" + SECRET, "channel": "ml"}, "notify", "either"),
        ({"webhook": "hooks.slack.com/" + SECRET}, "notify.webhook", "http(s) URL"),
        ({"webhook": "https:///" + SECRET}, "notify.webhook", "http(s) URL"),
        ({"channel": "#"}, "notify.channel", "channel name"),
        ({"events": ["faild"]}, "notify.events", "did you mean 'failed'?"),
        ({"events": "idle_ended"}, "notify.events", "unknown event"),
        ({"events": 3}, "notify.events", "expected a list"),
        ({"event": ["failed"]}, "notify.event", "did you mean 'events'?"),
        ({"webhok": "https://hooks.slack.com/services/" + SECRET}, "notify.webhok", "did you mean 'webhook'?"),
        (42, "notify", "expected a mapping"),
    ],
)
def test_bad_notify_spec_is_refused_naming_the_key(raw: object, field: str, words: str) -> None:
    with pytest.raises(SpecInvalid) as err:
        own(raw)
    assert err.value.field == field and words in err.value.message
    assert SECRET not in str(err.value)


def test_a_channel_the_cluster_does_not_know_is_refused_at_admission() -> None:
    cluster = ClusterNotify(channels={"ml": "https://hooks.slack.com/services/x"})
    check_channel(own("#ml"), cluster)
    check_channel(own({"webhook": "https://hooks.slack.com/services/" + SECRET}), cluster)
    check_channel(None, cluster)
    for known, channels in ((cluster, "ml"), (ClusterNotify(), "none configured")):
        with pytest.raises(SpecInvalid) as err:
            check_channel(own({"channel": "random"}), known)
        assert err.value.field == "notify.channel"
        assert err.value.message == f"unknown channel 'random'; channels: {channels}"


def test_notify_spec_shorthands() -> None:
    assert own("ml") == own("#ml") == Notify(channel="ml")
    url = "https://hooks.slack.com/services/" + SECRET
    assert own(url) == Notify(webhook=url)
    assert own({"events": "all"}) == Notify(events=frozenset(NotifyEvent))
    assert {str(e) for e in frozenset(NotifyEvent)} == set(Kind) - {Kind.IDLE_ENDED}  # every notice a job can ask for
    assert own({"events": "failed"}) == Notify(events=frozenset({NotifyEvent.FAILED}))
    assert own(False) == Notify(events=frozenset())  # nothing for this job
    assert own(None) is None and own(True) is None  # the cluster's default


# --- secrecy -------------------------------------------------------------------------------------------------


async def test_webhook_url_never_appears_in_logs_or_reprs(webhook: Webhook, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    webhook.script["hook"] = [(500, {}, "x"), (429, {"Retry-After": "0"}, "rate_limited"), (403, {}, "invalid_token")]
    mine = own({"webhook": closed_port_url()})
    cluster = ClusterNotify(webhook=webhook.url(), channels={"ml": webhook.url("ml")})
    n = Notifier(cluster, msgspec.structs.replace(FAST, max_attempts=2, queue_size=3))
    with capture_logs() as logs:
        async with running(n):
            n.notify(notice(job="a"))
            n.notify(notice(job="b", notify=mine))
            for i in range(5):  # some are dropped
                n.notify(notice(job=f"c{i}"))
            await webhook.wait("hook", 3)
            await asyncio.sleep(0.5)
    events = {e["event"] for e in logs}
    assert {"notify_retry", "notify_failed", "notify_dropped"} <= events
    seen = repr(logs) + caplog.text
    seen += repr(mine) + repr(cluster) + repr(n) + repr(notice(notify=mine)) + repr(route(notice(), cluster))
    assert SECRET not in seen and "/services/" not in seen
    assert "webhook:" in repr(logs)  # the per-job webhook is named by its label


def test_a_preemption_and_the_resume_that_follows_are_notified() -> None:
    """The state machine's own preempt → requeue → run path yields "preempted", then "resumed"."""
    queued = Job(id="j-1", spec=JobSpec(run="x"), user="u", state=JobState.QUEUED, submitted_at=0, updated_at=0)
    running = state.running(state.assign(queued, "i-1", 1), 1, 2, started_at=2)
    requeued = state.preempt(running, 1, 3, "spot instance reclaimed")
    assert kinds_for(running, requeued) == [Kind.PREEMPTED]
    again = state.running(state.assign(requeued, "i-2", 4), 2, 5, started_at=5)
    assert kinds_for(requeued, again) == [Kind.RESUMED]
