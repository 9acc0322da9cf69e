"""The controller daemon: one lifespan; within it, each term as the leader is one TaskGroup (API, event
applier, scheduler, liveness, and the provisioner when the provider provisions) beside the lease's renewal.
Between terms it stands by (`incl.controller.leader`). A term's objects are built in `wiring`, once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path

import structlog
from structlog.contextvars import bound_contextvars

from incl.auth import callout
from incl.bus import probe
from incl.bus.connection import Bus, connect, masked
from incl.bus.consume import consume
from incl.bus.daemon import wait_event
from incl.bus.kv import Bucket
from incl.bus.metrics import serving
from incl.bus.retry import TRANSIENT, forever
from incl.bus.streams import ensure_buckets, ensure_streams
from incl.controller import leader, scheduler, state, wiring
from incl.controller.agents import Agents
from incl.controller.config import ControllerConfig
from incl.controller.leader import Leadership, NotLeader
from incl.controller.metrics import ControllerMetrics
from incl.controller.providers import open_provider
from incl.controller.standby import Standby
from incl.controller.wiring import Graph
from incl.proto import subjects
from incl.proto.codec import Decoder
from incl.proto.messages import ON_AGENT, AgentEvent, AgentInterrupted, JobState

log = structlog.get_logger()


class Controller:
    def __init__(self, cfg: ControllerConfig) -> None:
        self.cfg = cfg
        self._wake = asyncio.Event()  # a scheduling pass now (set by submits, ended jobs, registrations)
        self._connected = asyncio.Event()
        self._reconnected = asyncio.Event()  # the liveness loop gives every agent a fresh deadline
        self._rewatch = asyncio.Event()  # a standby's copy is made afresh (its watches may have missed changes)
        self._reserving: dict[str, float] = {}  # gangs holding agents while they wait for the rest (scheduler)
        self._planning = 0.0  # CPU seconds the last placement plan took (spaces the next: `schedule_duty`)
        self._fence: Callable[[], None] = lambda: None  # raises NotLeader once this controller may not act
        self._kept: tuple[wiring.Stores, float] | None = None  # the last term's records, and when that term ended
        self.metrics = ControllerMetrics()

    def _retry(self, what: str, fn):  # type: ignore[no-untyped-def]
        return forever(what, fn, initial=self.cfg.retry_initial, maximum=self.cfg.retry_max)

    async def serve(self) -> None:
        cfg = self.cfg
        probe.install(self.metrics)  # this lifespan's retries and consumed messages count here
        bus = await self._retry("connect", lambda: connect(
            cfg.nats_url, f"incl-controller-{cfg.controller_id}", connect_timeout=cfg.connect_timeout,
            reconnect_wait=cfg.reconnect_wait, request_timeout=cfg.request_timeout,
            on_disconnect=self._on_disconnect, on_reconnect=self._on_reconnect,
            creds=Path(cfg.creds) if cfg.creds else None, tls_ca=Path(cfg.tls_ca) if cfg.tls_ca else None))
        self._connected.set()
        leadership: Leadership | None = None
        try:
            applied = await self._retry("ensure_streams", lambda: ensure_streams(bus, cfg.streams, cfg.replicas))
            if applied != cfg.streams:
                log.warning("streams_sized_down", reason="JetStream has less storage than the configured limits",
                            logs_max_bytes=applied.logs_max_bytes, metrics_max_bytes=applied.metrics_max_bytes)
            buckets = await self._retry("ensure_buckets", lambda: ensure_buckets(bus, cfg.idempotency_ttl,
                                                                                 cfg.replicas))
            lease = await self._retry("lease_bucket", lambda: leader.open_bucket(bus, cfg.leader_ttl, cfg.replicas))
            leadership = Leadership(lease, cfg.controller_id, leader.LeaseTimes(
                ttl=cfg.leader_ttl, renew=cfg.leader_renew, poll=cfg.leader_poll, margin=cfg.leader_margin))
            async with asyncio.TaskGroup() as tg:
                tg.create_task(leadership.announce())
                tg.create_task(self._lead_whenever_elected(bus, buckets, leadership))
                if cfg.callout.enabled:
                    tg.create_task(self._serve_callout(bus))
        finally:
            if leadership is not None:
                with contextlib.suppress(Exception):  # a clean stop hands over at once; a failed one by the TTL
                    await asyncio.wait_for(leadership.release(), timeout=cfg.request_timeout)
            await bus.close()

    async def _serve_callout(self, bus: Bus) -> None:
        """The NATS auth callout (`incl.auth.callout`), leader or standby alike, over a provider of its own (which
        instances this cluster launched)."""
        cfg = self.cfg
        async with open_provider(cfg) as provider:
            service = callout.open_callout(cfg.callout, cfg.callout_issuer_path(),
                                           lambda: provider.describe(cfg.reconcile.cluster))
            await callout.serve(bus, service)

    async def _lead_whenever_elected(self, bus: Bus, buckets: Mapping[str, Bucket], leadership: Leadership) -> None:
        """Stand by until elected, lead until the lease is lost, stand by again: for as long as the daemon runs.
        While it stands by, and until its term answers the API, it answers reads from a warm copy (`standby`)."""
        while True:
            async with asyncio.TaskGroup() as tg:
                handover = asyncio.Event()  # set once the term answers the API: the copy stops answering
                reads = None if await leadership.take() else tg.create_task(self._stand_by(bus, buckets, handover))
                try:
                    if reads is not None:
                        await leadership.acquire()
                    await self._lead(bus, buckets, leadership, handover.set)
                except* NotLeader as lost:
                    log.warning("leadership_lost", reason=str(lost.exceptions[0]))
                finally:
                    if reads is not None:
                        reads.cancel()  # already over, unless the term ended before it answered
            self._reserving = {}

    async def _stand_by(self, bus: Bus, buckets: Mapping[str, Bucket], handover: asyncio.Event) -> None:
        """Answer reads from a warm copy of the records until `handover`; the copy is made afresh after a reconnect
        to NATS (a watch may have missed changes meanwhile) and after a failure (logged: reads are never worth a
        term)."""
        while not handover.is_set():
            self._rewatch.clear()
            try:
                async with asyncio.TaskGroup() as tg:
                    copy = tg.create_task(Standby(self.cfg, bus, buckets).serve(handover))
                    rewatch = tg.create_task(self._rewatch.wait())
                    await asyncio.wait([copy, rewatch], return_when=asyncio.FIRST_COMPLETED)
                    copy.cancel()
                    rewatch.cancel()
            except Exception:  # logged with its traceback; the copy is made again
                log.exception("standby_failed")
                await asyncio.sleep(self.cfg.retry_max)

    async def _lead(self, bus: Bus, buckets: Mapping[str, Bucket], leadership: Leadership,
                    on_serving: Callable[[], object]) -> None:
        """One term as the leader: the records read afresh, or the last term's brought up to date after a short lapse
        (a standby's copy is not reused), every loop run, the
        lease renewed beside them; NotLeader from the renewal, from any write, or from the check at the start of
        each pass (a leader that wakes from a pause acts on nothing) ends the term. `on_serving`: called once the
        term answers the API."""
        self._fence = leadership.check
        async with asyncio.TaskGroup() as tg:
            tg.create_task(leadership.hold())  # renewed from the start: loading a large store takes a while
            tg.create_task(self._term(bus, buckets, leadership, on_serving))

    async def _term(self, bus: Bus, buckets: Mapping[str, Bucket], leadership: Leadership,
                    on_serving: Callable[[], object]) -> None:
        cfg = self.cfg
        stores = await self._records(buckets, leadership)
        try:
            async with open_provider(cfg) as provider:
                graph = wiring.build(cfg, bus, buckets, stores, provider, self._wake, self.metrics,
                                     leading=lambda: leadership.leading)
                await self._run(bus, graph, leadership, on_serving)
        finally:
            self._kept = (stores, time.monotonic())

    async def _records(self, buckets: Mapping[str, Bucket], leadership: Leadership) -> wiring.Stores:
        """The term's records: the last term's brought up to date when it ended less than `catch_up_within` ago
        (a short lapse: a pause, a partition), else read afresh."""
        cfg = self.cfg
        kept, self._kept = self._kept, None
        started = time.monotonic()
        if kept is not None and started - kept[1] <= cfg.catch_up_within:
            stores = kept[0]
            try:
                changed = await stores.catch_up(cfg.request_timeout)
            except TRANSIENT as exc:
                log.warning("records_catch_up_failed", error=repr(exc))
            else:
                log.info("records_caught_up", changed=changed, jobs=len(stores.jobs),
                         seconds=round(time.monotonic() - started, 3))
                return stores
        stores = wiring.records(buckets, fence=leadership.check, ended_jobs=cfg.ended_jobs_in_memory)
        await self._retry("load_records", stores.load)
        log.info("records_loaded", jobs=len(stores.jobs), seconds=round(time.monotonic() - started, 3))
        return stores

    async def _run(self, bus: Bus, g: Graph, leadership: Leadership, on_serving: Callable[[], object]) -> None:
        """Serve the API, then run every loop until cancelled (the API stops with them; a standby answers only
        reads, `incl.controller.standby`)."""
        cfg = self.cfg
        g.agents.restore(time.time())
        log.info("controller_started", controller_id=cfg.controller_id, jobs=len(g.jobs.records),
                 agents=len(g.agents.records), nats=masked(cfg.nats_url), replicas=cfg.replicas,
                 provider=cfg.provider)
        # No queue group: a leader paused past its lease still holds its subscription until NATS drops the
        # connection (minutes), and a queue group would hand it half the requests, unanswered. Without one, each
        # request reaches every controller that serves it; the live leader answers, a deposed one does not.
        async def answer(subject: str, data: bytes) -> bytes | None:
            # Past its lease (woken from a pause, cut off), its records may be stale and its writes are fenced:
            # it answers nothing, and the requester takes a live controller's answer or retries. A read asked of
            # any controller is the standbys' to answer: its client asked the leader too, and answering both
            # would do the work twice just when the leader is slow.
            if not leadership.leading or subjects.asks_any(subject):
                return None
            return await g.api.answer(subject, data)

        stop_serving = await bus.serve(f"{subjects.API_PREFIX}.>", "", answer)
        on_serving()
        try:
            await g.jobs.resend_stale_assignments(older_than=time.time())
            async with serving(self.metrics.registry, cfg.metrics_host, cfg.metrics_port,
                               before_scrape=lambda: self.metrics.refresh(bus), timeout=cfg.request_timeout * 2), \
                    asyncio.TaskGroup() as tg:
                if g.provider.provisions:
                    tg.create_task(g.provisioner.run())
                tg.create_task(self._apply_events(bus, g))
                tg.create_task(self._schedule(g))
                tg.create_task(self._watch_liveness(g.agents))
                tg.create_task(g.notifier.run())
                tg.create_task(g.watch.run())
                tg.create_task(g.studies.run())
        finally:
            await stop_serving()

    async def _on_disconnect(self) -> None:
        self._connected.clear()
        log.warning("nats_disconnected")

    async def _on_reconnect(self) -> None:
        self._reconnected.set()
        self._rewatch.set()
        self._connected.set()
        self._wake.set()
        log.info("nats_reconnected")

    # --- agent events -------------------------------------------------------------------------------------

    async def _apply_events(self, bus: Bus, g: Graph) -> None:
        cfg = self.cfg
        decoder: Decoder[AgentEvent] = Decoder(AgentEvent)
        sub = await self._retry("subscribe_events", lambda: bus.pull(
            subjects.EVENTS_STREAM, f"{subjects.EVENTS_PREFIX}.*", subjects.EVENTS_CONSUMER,
            ack_wait=cfg.events_ack_wait))

        async def handle(event: AgentEvent) -> None:
            self._fence()
            ids = ({"agent_id": event.agent_id} if isinstance(event, AgentInterrupted) else
                   {"job_id": event.job_id, "attempt": event.attempt, "agent_id": event.agent_id})
            with bound_contextvars(**ids):
                await self._retry("apply_event", lambda: self._apply(g, event))

        # One job's events in order, different jobs' side by side: their record writes overlap.
        await consume(bus, sub, "controller-events", decoder, handle, batch=cfg.events_fetch_batch,
                      timeout=cfg.events_fetch_timeout, backoff=cfg.retry_max,
                      lane=lambda e: e.agent_id if isinstance(e, AgentInterrupted) else e.job_id)

    async def _apply(self, g: Graph, event: AgentEvent) -> None:
        if isinstance(event, AgentInterrupted):
            g.agents.interrupted_notice(event)
            self._wake.set()
        else:
            await g.jobs.apply(event)

    # --- scheduling ---------------------------------------------------------------------------------------

    async def _schedule(self, g: Graph) -> None:
        while True:
            # A plan that took t seconds of CPU is followed by t (1/duty - 1) seconds in which none starts.
            await asyncio.sleep(self._planning * (1 / self.cfg.schedule_duty - 1))
            await wait_event(self._wake, self.cfg.schedule_interval)
            self._wake.clear()
            await self._connected.wait()
            try:
                self._fence()
                await self._schedule_once(g)
            except TRANSIENT as exc:
                log.warning("schedule_pass_failed", error=repr(exc))
                await asyncio.sleep(self.cfg.retry_initial)
                self._wake.set()

    async def _schedule_once(self, g: Graph) -> None:
        started = time.thread_time()  # the event loop's own CPU (not a study's worker threads)
        live = g.jobs.live()  # once per pass: the queued jobs, and those on agents (their resources)
        queued = [j for j in live if j.state is JobState.QUEUED]
        on_agent = [j for j in live if j.state in ON_AGENT]
        # Nothing queued (e.g. a burst of registrations): no placement pass at all.
        plan = (scheduler.plan(queued, g.agents.slots(on_agent), quotas=g.jobs.quotas, running=on_agent,
                               now=time.time(), reserved_since=self._reserving,
                               reserve_for=self.cfg.gang_reserve_for, held_for=self._held(g))
                if queued else scheduler.Plan(placements=[], waiting={}))
        self._reserving = dict(plan.reserving)
        g.jobs.waiting = g.provisioner.waiting(plan.waiting)  # the reasons, with each job's last launch failure
        self._planning = time.thread_time() - started
        step = self.cfg.dispatch_in_flight
        for i in range(0, len(plan.placements), step):
            await _together([self._dispatch(g, job_id, agent_id) for job_id, agent_id in plan.placements[i:i + step]])
        for job_id, agent_ids in plan.gangs:
            with bound_contextvars(job_id=job_id):
                await self._dispatch_gang(g, job_id, agent_ids)
        await g.jobs.resend_stale_assignments(time.time() - self.cfg.assign_resend_after)

    async def _dispatch(self, g: Graph, job_id: str, agent_id: str) -> None:
        record = g.agents.records.get(agent_id)
        try:
            with bound_contextvars(job_id=job_id, agent_id=agent_id):
                await g.jobs.dispatch(job_id, agent_id, record.info if record else None)
        except state.IllegalTransition as exc:  # cancelled meanwhile
            log.info("dispatch_skipped", job_id=job_id, reason=str(exc))
        except TRANSIENT:
            raise  # the pass is retried
        except Exception:  # this job's failure, not the scheduler's
            log.exception("dispatch_failed", job_id=job_id, agent_id=agent_id)

    @staticmethod
    def _held(g: Graph) -> dict[str, str]:
        """Agents on instances launched for a gang that still waits for the rest: that gang's only."""
        by_instance = g.provisioner.held
        if not by_instance:
            return {}
        return {r.info.agent_id: by_instance[r.info.instance_id] for r in g.agents.records
                if r.info.instance_id in by_instance}

    async def _dispatch_gang(self, g: Graph, job_id: str, agent_ids: list[str]) -> None:
        infos = []
        for agent_id in agent_ids:
            record = g.agents.records.get(agent_id)
            if record is None:
                return  # forgotten meanwhile: the next pass places the gang again
            infos.append(record.info)
        try:
            await g.jobs.dispatch_gang(job_id, infos)
        except state.IllegalTransition as exc:
            log.info("dispatch_skipped", job_id=job_id, reason=str(exc))
        except TRANSIENT:
            raise
        except Exception:
            log.exception("dispatch_failed", job_id=job_id, agents=agent_ids)

    # --- liveness -----------------------------------------------------------------------------------------

    async def _watch_liveness(self, agents: Agents) -> None:
        while True:
            due = agents.deadlines.next_due()
            delay = 1.0 if due is None else min(max(due - time.time(), 0.01), 1.0)
            await asyncio.sleep(delay)
            if not self._connected.is_set():
                continue
            if self._reconnected.is_set():
                # While we could not hear agents, their silence proves nothing: every deadline starts afresh.
                self._reconnected.clear()
                agents.restore(time.time())
            try:
                self._fence()
                await agents.expire(time.time())
            except TRANSIENT as exc:
                log.warning("liveness_pass_failed", error=repr(exc))


async def _together(dispatches: list[Coroutine[object, object, None]]) -> None:
    """Run side by side; once all are done, re-raise the first failure (a transient one: the pass is retried)."""
    if len(dispatches) == 1:
        await dispatches[0]
        return
    for outcome in await asyncio.gather(*dispatches, return_exceptions=True):
        if isinstance(outcome, BaseException):
            raise outcome
