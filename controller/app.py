"""The controller daemon: one lifespan around one TaskGroup (API, event applier, scheduler, liveness)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import structlog

from incl.bus.connection import Bus, connect
from incl.controller import scheduler, state
from incl.controller.agents import Agents
from incl.controller.aws import AwsProvider
from incl.controller.api import Api
from incl.controller.config import ControllerConfig
from incl.controller.gpuwatch import GpuWatch
from incl.controller.notify import Notice, Notifier, kinds_for
from incl.controller.provision import Provisioner
from incl.controller.quota import load_quota_config
from incl.controller.jobs import Jobs
from incl.controller.store import Records
from incl.proto import subjects
from incl.proto.codec import Decoder
from incl.proto.messages import AgentEvent, AgentInterrupted, AgentRecord, Job, JobState
from incl.bus.streams import ensure_buckets, ensure_streams
from incl.bus.consume import consume
from incl.bus.daemon import wait_event
from incl.bus.retry import TRANSIENT, forever

log = structlog.get_logger()


class Controller:
    def __init__(self, cfg: ControllerConfig) -> None:
        self.cfg = cfg
        self._kick = asyncio.Event()
        self._connected = asyncio.Event()
        self.jobs: Jobs
        self.provisioner: Provisioner | None = None
        self.agents: Agents

    def _retry(self, what: str, fn):  # type: ignore[no-untyped-def]
        return forever(what, fn, initial=self.cfg.retry_initial, maximum=self.cfg.retry_max)

    async def serve(self) -> None:
        cfg = self.cfg
        bus = await self._retry("connect", lambda: connect(
            cfg.nats_url, f"incl-controller-{cfg.controller_id}", connect_timeout=cfg.connect_timeout,
            reconnect_wait=cfg.reconnect_wait, request_timeout=cfg.request_timeout,
            on_disconnect=self._on_disconnect, on_reconnect=self._on_reconnect))
        self._connected.set()
        try:
            applied = await self._retry("ensure_streams", lambda: ensure_streams(bus, cfg.streams))
            if applied != cfg.streams:
                log.warning("streams_sized_down", reason="JetStream has less storage than the configured limits",
                            logs_max_bytes=applied.logs_max_bytes, metrics_max_bytes=applied.metrics_max_bytes)
            buckets = await self._retry("ensure_buckets", lambda: ensure_buckets(bus, cfg.idempotency_ttl))
            job_records: Records[Job] = Records(buckets[subjects.JOBS_BUCKET], Job, key=lambda j: j.id)
            agent_records: Records[AgentRecord] = Records(
                buckets[subjects.AGENTS_BUCKET], AgentRecord, key=lambda a: a.info.agent_id)
            await self._retry("load_jobs", job_records.load)
            await self._retry("load_agents", agent_records.load)
            quotas = load_quota_config(cfg.quota_file)
            self.jobs = Jobs(cfg, job_records, bus, shapes=lambda: self.agents.shapes(), kick=self._kick.set,
                             quotas=quotas, submits=buckets[subjects.SUBMITS_BUCKET])
            notifier = Notifier(cfg.notify, cfg.notifier)
            self.watch = GpuWatch(self.jobs, notifier, cfg.gpu_idle)
            self.jobs.on_change.append(lambda before, after: self._on_change(notifier, before, after))
            self.agents = Agents(cfg, agent_records, self.jobs, on_telemetry=self.watch.observe)
            self.agents.restore(time.time())
            log.info("controller_started", controller_id=cfg.controller_id, jobs=len(job_records),
                     agents=len(agent_records), nats=cfg.nats_url)
            api_ = Api(cfg.controller_id, self.jobs, self.agents, self.watch, bus, cfg.store_url,
                       page_bytes=bus.max_payload // 2)
            await bus.serve(f"{subjects.API_PREFIX}.>", "incl-controller", api_.handle)
            await self.jobs.resend_stale_assignments(older_than=time.time())
            async with self._provisioning() as self.provisioner, asyncio.TaskGroup() as tg:
                if self.provisioner is not None:
                    self.agents.spot_reclaimed = self.provisioner.spot_reclaimed
                    tg.create_task(self.provisioner.run())
                tg.create_task(self._apply_events(bus))
                tg.create_task(self._schedule())
                tg.create_task(self._watch_liveness())
                tg.create_task(notifier.run())
                tg.create_task(self.watch.run())
        finally:
            await bus.close()

    @contextlib.asynccontextmanager
    async def _provisioning(self) -> AsyncIterator[Provisioner | None]:
        """With a cloud provider, the reconcile loop that launches and terminates its instances."""
        cfg = self.cfg
        if cfg.provider != "aws":
            yield None
            return
        async with AwsProvider(cfg.aws, nats_url=cfg.agent_nats_url or cfg.nats_url,
                               store_url=cfg.store_url) as provider:
            yield Provisioner(cfg.reconcile, provider, self.jobs, self.agents)

    def _on_change(self, notifier: Notifier, before: Job | None, after: Job) -> None:
        for kind in kinds_for(before, after):
            notifier.notify(Notice.from_job(kind, after))
        if after.state is not JobState.RUNNING:
            self.watch.forget(after.id)

    async def _on_disconnect(self) -> None:
        self._connected.clear()
        log.warning("nats_disconnected")

    async def _on_reconnect(self) -> None:
        # While we could not hear agents, their silence proves nothing: every deadline starts afresh.
        if hasattr(self, "agents"):
            self.agents.restore(time.time())
        self._connected.set()
        self._kick.set()
        log.info("nats_reconnected")

    # --- agent events -------------------------------------------------------------------------------------

    async def _apply_events(self, bus: Bus) -> None:
        cfg = self.cfg
        decoder: Decoder[AgentEvent] = Decoder(AgentEvent)
        sub = await self._retry("subscribe_events", lambda: bus.pull(
            subjects.EVENTS_STREAM, f"{subjects.EVENTS_PREFIX}.*", subjects.EVENTS_CONSUMER,
            ack_wait=cfg.events_ack_wait))
        await consume(bus, sub, "controller-events", decoder,
                      lambda event: self._retry("apply_event", lambda: self._apply(event)),
                      batch=cfg.events_fetch_batch, timeout=cfg.events_fetch_timeout, backoff=cfg.retry_max)

    async def _apply(self, event: AgentEvent) -> None:
        if isinstance(event, AgentInterrupted):
            self.agents.interrupted_notice(event)
            self._kick.set()
        else:
            await self.jobs.apply(event)

    # --- scheduling ---------------------------------------------------------------------------------------

    async def _schedule(self) -> None:
        while True:
            await wait_event(self._kick, self.cfg.schedule_interval)
            self._kick.clear()
            await self._connected.wait()
            try:
                await self._schedule_once()
            except TRANSIENT as exc:
                log.warning("schedule_pass_failed", error=repr(exc))
                await asyncio.sleep(self.cfg.retry_initial)
                self._kick.set()

    async def _schedule_once(self) -> None:
        queued = self.jobs.queued()
        if queued:  # nothing queued (e.g. a burst of registrations): no placement pass at all
            await self._place(queued)
        else:
            self.jobs.waiting = {}
        await self.jobs.resend_stale_assignments(time.time() - self.cfg.assign_resend_after)

    async def _place(self, queued: list[Job]) -> None:
        plan = scheduler.plan(queued, self.agents.slots(), quotas=self.jobs.quotas,
                              running=self.jobs.on_agent())
        self.jobs.waiting = plan.waiting
        if self.provisioner is not None:
            self.jobs.waiting = self.provisioner.waiting(plan.waiting)
        for job_id, agent_id in plan.placements:
            record = self.agents.records.get(agent_id)
            try:
                await self.jobs.dispatch(job_id, agent_id, record.info if record else None)
            except state.IllegalTransition as exc:  # cancelled meanwhile
                log.info("dispatch_skipped", job_id=job_id, reason=str(exc))
            except TRANSIENT:
                raise  # the pass is retried
            except Exception:  # noqa: BLE001 - this job's failure, not the scheduler's
                log.exception("dispatch_failed", job_id=job_id, agent_id=agent_id)

    # --- liveness -----------------------------------------------------------------------------------------

    async def _watch_liveness(self) -> None:
        while True:
            due = self.agents.deadlines.next_due()
            delay = 1.0 if due is None else min(max(due - time.time(), 0.01), 1.0)
            await asyncio.sleep(delay)
            if not self._connected.is_set():
                continue
            try:
                await self.agents.expire(time.time())
            except TRANSIENT as exc:
                log.warning("liveness_pass_failed", error=repr(exc))
