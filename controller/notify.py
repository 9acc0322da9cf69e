"""Slack notifications through incoming webhooks: job started, succeeded, failed, cancelled, preempted,
resumed, and GPU idle alerts.

`Notifier.notify()` never blocks and never raises: it queues the notice (or drops it, with a warning, when
the queue is full). `Notifier.run()`, a task in the controller's TaskGroup, hands each notice to a worker
per webhook, so a slow or dead webhook delays nobody else. A worker paces its posts (`rate_per_s`), retries
5xx answers and connection errors with exponential backoff and honours a 429's Retry-After.

A notice survives a controller restart (kill -9 included) through the outbox, a KV bucket of notices not yet
delivered: the dispatcher puts each notice there before its first post, the worker deletes it after the last
(sent, refused, or out of attempts), and a starting notifier queues again whatever the bucket still holds. What
that can and cannot promise, with an incoming webhook that takes no idempotency key:
- a notice put in the outbox is delivered after a restart if it was not before: nothing is lost once kept;
- one notice is queued once per controller (by its id, made from the job, attempt, kind and, for idle alerts,
  the episode), so one raised again while it waits is not sent twice;
- a notice the webhook accepted in the moment before a kill, when the delete had not yet landed, is sent again
  after the restart: Slack cannot be asked whether it already has it, so delivery is at least once;
- a notice raised in the moment before a kill, not yet taken off the in-memory queue, is lost.

Webhook URLs are secrets (the path is the token): no log line and no repr shows one; logs name a webhook by
its label ("default", "channel:ml-alerts", "webhook:3fa2c19b").

Spec (`incl.yaml`, `proto.spec.Notify`, validated at submit), over the cluster default:
    notify: {webhook: https://hooks.slack.com/services/..., events: [failed, idle]}
    notify: {channel: ml-alerts}          # a channel the admin mapped to a webhook (checked at admission)
    notify: false                         # nothing for this job (events: [])

With the web UI's public URL configured (`notify: {web_url: https://incl.example.com}` in the controller's
config; `incl up` passes its own web UI's), each notice's job name and id link to the job's page there.
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
import hashlib
import logging
import random
import re
import time
import uuid
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import msgspec
import structlog
from slack_sdk.webhook.async_client import AsyncWebhookClient

from incl.controller.idle import format_duration
from incl.controller.store import Records
from incl.proto.errors import SpecInvalid
from incl.proto.messages import Job, JobState
from incl.proto.spec import Notify

log = structlog.get_logger()

# slack_sdk logs the URL at DEBUG and on retries; its client gets a logger that says nothing.
_SDK_LOGGER = logging.getLogger("incl.controller.notify.slack_sdk")
_SDK_LOGGER.setLevel(logging.CRITICAL)
_SDK_LOGGER.disabled = True
_SDK_LOGGER.propagate = False


class Kind(enum.StrEnum):
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PREEMPTED = "preempted"
    RESUMED = "resumed"
    IDLE = "idle"  # an idle-GPU alert
    IDLE_ENDED = "idle_ended"  # the job uses its GPUs again; sent where `idle` is


EVENTS = frozenset(Kind) - {Kind.IDLE_ENDED}  # the names a spec's `events:` may use (`proto.spec.NotifyEvent`)


def _mask(url: str | None) -> str | None:
    return None if url is None else f"<webhook {urlsplit(url).hostname or '?'}/***>"


class ClusterNotify(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The admin's defaults: the webhook for jobs that name none, named channels, and the events sent."""

    webhook: str | None = None
    channels: dict[str, str] = {}  # channel name -> webhook URL
    events: frozenset[Kind] = EVENTS
    web_url: str | None = None  # the web UI's public address: notices link to the job's page there; None: no link

    def __repr__(self) -> str:
        return (f"ClusterNotify(webhook={_mask(self.webhook)}, channels={sorted(self.channels)}, events=..., "
                f"web_url={self.web_url!r})")


class NotifierConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    queue_size: int = 1000  # notices waiting for dispatch; past that, new ones are dropped
    route_queue_size: int = 200  # notices waiting on one webhook
    rate_per_s: float = 1.0  # posts per second to one webhook
    max_attempts: int = 5
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    jitter: float = 0.1  # each backoff delay is scaled by a random factor in [1 - jitter, 1 + jitter]
    max_retry_after: float = 300.0  # a longer Retry-After is cut to this
    timeout: float = 10.0  # one HTTP post
    route_idle_after: float = 300.0  # a webhook's worker ends after this long without notices
    log_lines: int = 20  # last log lines in a failure message


class Notice(msgspec.Struct, frozen=True, kw_only=True):
    """What happened to a job, with what the message shows. `notify` is the job's own `notify:`."""

    kind: Kind
    job_id: str
    job_name: str
    user: str
    state: str
    attempt: int | None = None
    duration: float | None = None  # seconds, of the current attempt
    gpu_hours: float | None = None  # all attempts so far
    reason: str | None = None
    detail: str | None = None  # e.g. the idle monitor's description
    log_tail: list[str] = []
    notify: Notify | None = None
    id: str = msgspec.field(default_factory=lambda: uuid.uuid4().hex)  # the outbox's key; see `notice_id`

    @classmethod
    def from_job(cls, kind: Kind, job: Job, now: float | None = None, detail: str | None = None,
                 episode: float | None = None) -> Notice:
        """`episode`: for idle notices, when the idle episode began (one alert per episode)."""
        now = time.time() if now is None else now
        res = job.spec.resources
        gpus = res.gpus * res.nodes
        cur = job.current
        duration = None
        if cur is not None and cur.started_at is not None:
            duration = (cur.ended_at or now) - cur.started_at
        held = sum((a.ended_at or now) - a.started_at for a in job.attempts if a.started_at is not None)
        return cls(
            kind=kind,
            job_id=job.id,
            job_name=job.name,
            user=job.user,
            state=str(job.state),
            attempt=cur.number if cur is not None else None,
            duration=duration,
            gpu_hours=held * gpus / 3600 if gpus else None,
            reason=job.reason or (cur.reason if cur is not None else None),
            detail=detail,
            log_tail=list(cur.tail) if cur is not None and kind == Kind.FAILED else [],
            notify=job.spec.notify,
            id=notice_id(job.id, cur.number if cur is not None else 0, kind, episode),
        )


def notice_id(job_id: str, attempt: int, kind: Kind, episode: float | None = None) -> str:
    """The same notice raised twice (a replayed change, an alert raised again) gets the same id."""
    return f"{job_id}.{attempt}.{kind}" + (f".{round(episode * 1000)}" if episode is not None else "")


# Which notice a job's new state gives (RUNNING after a preemption is a resume: see `Notice` callers).
# --- spec and routing (pure) -------------------------------------------------------------------------------


def kinds_for(before: Job | None, after: Job) -> list[Kind]:
    """The notices a job's change of state calls for (pure)."""
    was = before.state if before is not None else None
    if after.state == was:
        return []
    if after.state is JobState.RUNNING:
        return [Kind.STARTED if (after.current and after.current.number == 1) else Kind.RESUMED]
    terminal = {JobState.SUCCEEDED: Kind.SUCCEEDED, JobState.FAILED: Kind.FAILED,
                JobState.CANCELLED: Kind.CANCELLED}
    if after.state in terminal:
        return [terminal[after.state]]
    if after.state is JobState.QUEUED and after.current and after.current.state is JobState.PREEMPTED:
        return [Kind.PREEMPTED]
    return []


def check_channel(notify: Notify | None, cluster: ClusterNotify) -> None:
    """At admission: a job's `notify.channel` must be one the admin configured. Raises SpecInvalid."""
    if notify is not None and notify.channel is not None and notify.channel not in cluster.channels:
        known = ", ".join(sorted(cluster.channels)) or "none configured"
        raise SpecInvalid(f"unknown channel {notify.channel!r}; channels: {known}", field="notify.channel")


class Route(msgspec.Struct, frozen=True):
    label: str  # what logs call the webhook
    url: str

    def __repr__(self) -> str:
        return f"Route({self.label!r})"


def route(notice: Notice, cluster: ClusterNotify) -> Route | None:
    """Where this notice goes, or None when its job or the cluster does not want it."""
    spec = notice.notify or Notify()
    events = cluster.events if spec.events is None else {Kind(e.value) for e in spec.events}
    wanted = Kind.IDLE if notice.kind == Kind.IDLE_ENDED else notice.kind
    if wanted not in events:
        return None
    if spec.webhook is not None:
        return Route(f"webhook:{hashlib.sha256(spec.webhook.encode()).hexdigest()[:8]}", spec.webhook)
    if spec.channel is not None:
        url = cluster.channels.get(spec.channel)
        return Route(f"channel:{spec.channel}", url) if url else None
    return Route("default", cluster.webhook) if cluster.webhook else None


# --- the message (pure) ------------------------------------------------------------------------------------

_HEADLINE = {
    Kind.STARTED: (":rocket:", "started"),
    Kind.SUCCEEDED: (":white_check_mark:", "succeeded"),
    Kind.FAILED: (":x:", "failed"),
    Kind.CANCELLED: (":no_entry_sign:", "was cancelled"),
    Kind.PREEMPTED: (":warning:", "was preempted"),
    Kind.RESUMED: (":arrows_counterclockwise:", "resumed"),
    Kind.IDLE: (":zzz:", "has idle GPUs"),
    Kind.IDLE_ENDED: (":muscle:", "is using its GPUs again"),
}


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def job_page(web_url: str, job_id: str) -> str:
    """The job's page in the web UI at `web_url`, escaped for a Slack link (`<url|text>`)."""
    return _esc(f"{web_url.rstrip('/')}/jobs/{quote(job_id, safe='')}").replace("|", "%7C")


def format_message(notice: Notice, log_lines: int = 20, web_url: str | None = None) -> dict[str, Any]:
    """The Slack payload: a plain `text` fallback and Block Kit blocks. `web_url`: the web UI's public address;
    the job's name and id then link to its page."""
    emoji, verb = _HEADLINE[notice.kind]
    name = _esc(notice.job_name)
    job = f"`{_esc(notice.job_id)}`"
    if web_url:
        page = job_page(web_url, notice.job_id)
        name, job = f"<{page}|{name}>", f"<{page}|{_esc(notice.job_id)}>"
    headline = f"{emoji} *{name}* {verb}"
    if notice.detail:
        headline += f"\n{_esc(notice.detail)}"
    facts = [("Job", job + (f" (attempt {notice.attempt})" if notice.attempt else ""))]
    facts += [("User", _esc(notice.user)), ("State", notice.state)]
    if notice.duration is not None:
        facts.append(("Duration", format_duration(notice.duration)))
    if notice.gpu_hours is not None:
        facts.append(("GPU-hours", f"{notice.gpu_hours:.2f}"))
    if notice.reason:
        facts.append(("Reason", _esc(notice.reason)[:1900]))
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": headline}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": f"*{k}*\n{v}"} for k, v in facts]},
    ]
    tail = notice.log_tail[-log_lines:] if log_lines > 0 else []
    if tail:
        body = "\n".join(_esc(line).replace("```", "'''") for line in tail)[-2800:]
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": f"*Last log lines*\n```{body}```"}})
    text = f"{notice.job_name} ({notice.user}) {verb}" + (f": {notice.reason}" if notice.reason else "")
    return {"text": _esc(text), "blocks": blocks}


# --- delivery ----------------------------------------------------------------------------------------------


def _retry_after(value: str | None, now: float) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError):
        return None


_SLACK_ERROR = re.compile(r"^[a-z_]{1,64}$")  # Slack answers errors as short codes: "invalid_payload"


class Notifier:
    """`outbox`: the notices not yet delivered, loaded (see the module's docstring); None keeps them in memory."""

    def __init__(self, cluster: ClusterNotify, config: NotifierConfig | None = None,
                 outbox: Records[Notice] | None = None) -> None:
        self._cluster, self._config = cluster, config or NotifierConfig()
        self._queue: asyncio.Queue[tuple[Route, Notice]] = asyncio.Queue(self._config.queue_size)
        self._routes: dict[str, asyncio.Queue[Notice]] = {}  # by URL, which is never logged
        self._session: aiohttp.ClientSession | None = None
        self._outbox = outbox
        self._pending: set[str] = set()  # ids of the notices queued or being delivered

    def __repr__(self) -> str:
        return f"Notifier(routes={len(self._routes)}, queued={self._queue.qsize()})"

    def notify(self, notice: Notice) -> bool:
        """Queue a notice; True when it will be sent. Never blocks, never raises."""
        where = route(notice, self._cluster)
        if where is None:
            return False
        if notice.id in self._pending:
            return True
        try:
            self._queue.put_nowait((where, notice))
        except asyncio.QueueFull:
            log.warning("notify_dropped", job_id=notice.job_id, kind=str(notice.kind), webhook=where.label)
            return False
        self._pending.add(notice.id)
        return True

    async def run(self) -> None:
        """Deliver notices until cancelled: one worker per webhook, started on its first notice."""
        timeout = aiohttp.ClientTimeout(total=self._config.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session, asyncio.TaskGroup() as tg:
            self._session = session
            await self._resume()
            while True:
                where, notice = await self._queue.get()
                await self._keep(notice)
                lane = self._routes.get(where.url)
                if lane is None:
                    lane = self._routes[where.url] = asyncio.Queue(self._config.route_queue_size)
                    tg.create_task(self._worker(where, lane))
                try:
                    lane.put_nowait(notice)
                except asyncio.QueueFull:
                    log.warning("notify_dropped", job_id=notice.job_id, kind=str(notice.kind), webhook=where.label)
                    await self._done(notice)

    async def _resume(self) -> None:
        """Queue again the notices an earlier controller kept and did not deliver."""
        for notice in list(self._outbox or ()):
            if self.notify(notice):
                log.info("notify_resumed", job_id=notice.job_id, kind=str(notice.kind))
            else:  # no longer wanted (the cluster's settings changed) or no room
                await self._done(notice)

    async def _keep(self, notice: Notice) -> None:
        """Put the notice in the outbox before its first post. If the bucket cannot take it, the notice is still
        sent, and only a restart before then loses it."""
        if self._outbox is None or self._outbox.get(notice.id) is not None:
            return
        try:
            async with asyncio.timeout(self._config.timeout):
                await self._outbox.put(notice)
        except Exception as exc:  # noqa: BLE001 - the outbox failing must not stop the notice itself
            log.warning("notice_not_kept", job_id=notice.job_id, kind=str(notice.kind), error=repr(exc))

    async def _done(self, notice: Notice) -> None:
        """The notice's last post is over (sent, refused or out of attempts): it leaves the outbox."""
        self._pending.discard(notice.id)
        if self._outbox is None or self._outbox.get(notice.id) is None:
            return
        try:
            async with asyncio.timeout(self._config.timeout):
                await self._outbox.delete(notice.id)
        except Exception as exc:  # noqa: BLE001 - left in the outbox, it is sent once more after a restart
            log.warning("notice_not_cleared", job_id=notice.job_id, kind=str(notice.kind), error=repr(exc))

    async def _worker(self, where: Route, lane: asyncio.Queue[Notice]) -> None:
        client = AsyncWebhookClient(
            where.url, timeout=int(self._config.timeout), session=self._session, logger=_SDK_LOGGER, retry_handlers=[]
        )
        next_post = 0.0
        while True:
            try:
                async with asyncio.timeout(self._config.route_idle_after):
                    notice = await lane.get()
            except TimeoutError:
                if lane.empty():  # no await between this check and leaving: nothing can slip in
                    del self._routes[where.url]
                    return
                continue
            next_post = await self._deliver(client, where, notice, next_post)
            await self._done(notice)

    async def _deliver(self, client: AsyncWebhookClient, where: Route, notice: Notice, next_post: float) -> float:
        """Post one notice with retries; returns the earliest time the next post to this webhook may start."""
        cfg = self._config
        payload = format_message(notice, cfg.log_lines, self._cluster.web_url)
        fields = {"job_id": notice.job_id, "kind": str(notice.kind), "webhook": where.label}
        for attempt in range(1, cfg.max_attempts + 1):
            await asyncio.sleep(max(0.0, next_post - time.monotonic()))
            next_post = time.monotonic() + 1.0 / cfg.rate_per_s
            delay = min(cfg.backoff_max, cfg.backoff_initial * 2 ** (attempt - 1))
            delay *= random.uniform(1 - cfg.jitter, 1 + cfg.jitter)
            try:
                async with asyncio.timeout(cfg.timeout):
                    resp = await client.send_dict(payload)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                problem: dict[str, Any] = {"error": type(exc).__name__}
            else:
                if 200 <= resp.status_code < 300:
                    log.info("notify_sent", attempt=attempt, **fields)
                    return next_post
                problem = {"status": resp.status_code}
                if resp.status_code == 429:
                    wait = _retry_after(resp.headers.get("Retry-After"), time.time())
                    delay = min(cfg.max_retry_after, wait) if wait is not None else delay
                elif resp.status_code < 500:
                    if _SLACK_ERROR.match(resp.body or ""):
                        problem["slack_error"] = resp.body
                    log.error("notify_failed", attempt=attempt, **problem, **fields)
                    return next_post
            if attempt == cfg.max_attempts:
                log.error("notify_failed", attempt=attempt, **problem, **fields)
                return next_post
            log.warning("notify_retry", attempt=attempt, delay=round(delay, 3), **problem, **fields)
            next_post = max(next_post, time.monotonic() + delay)
        return next_post
