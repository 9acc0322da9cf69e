"""The agent daemon: register, heartbeat on the controller's clock, take assignments, run jobs.

One lifespan around one TaskGroup: the heartbeat loop, the assignment consumer, and one task per attempt.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
import yaml
from msgspec import structs

from incl.agent.config import AgentConfig
from incl.agent.docker import ContainerHandle, DockerRuntime
from incl.agent.jobuser import JobUsers
from incl.agent.metadata import InstanceIdentity, connect_token, open_metadata
from incl.agent.runner import Resume, Runner
from incl.agent.runtime import Launcher
from incl.agent.spotwatch import Interruption, Rebalance, SpotNotice, SpotWatcher
from incl.agent.telemetry import GpuSampler, ProcessTreeJobs, RecordedSource
from incl.agent.workdir import WorkDirClaim
from incl.agent.workspace import Workspace, prune_ran
from incl.artifacts.store import ArtifactStore, open_store
from incl.auth.sealing import AgentKey
from incl.bus import probe
from incl.bus.connection import Bus, connect
from incl.bus.consume import consume
from incl.bus.metrics import DaemonMetrics, GpuUtilization, serving
from incl.bus.retry import TRANSIENT, forever
from incl.proto import limits, subjects
from incl.proto.codec import Decoder, encode
from incl.proto.errors import Conflict, DecodeError, InclError, NoResponders, Unavailable
from incl.proto.messages import (
    AgentCommand,
    AgentEvent,
    AgentInfo,
    AgentInterrupted,
    Assign,
    AssignmentReply,
    AssignmentRequest,
    CancelJob,
    Envelope,
    GangStart,
    HeartbeatReply,
    HeartbeatRequest,
    JobExited,
    JobRef,
    JobRunning,
    Lease,
    LogBatch,
    MetricBatch,
    RegisterReply,
    RegisterRequest,
    Resources,
)
from incl.proto.telemetry import GpuTelemetry

log = structlog.get_logger()


class AgentSuperseded(Exception):
    """Another process registered with this agent's id after this one went silent: this one must end."""


_ASSIGN: Decoder[Assign] = Decoder(Assign)
SEAL_KEY = "seal.key"  # the agent's X25519 key (incl.auth.sealing), in its work dir, mode 0600


def _gpu_source(cfg: AgentConfig) -> RecordedSource | None:
    """Recorded NVML readings when the config names a recording (tests); None means real NVML."""
    if cfg.gpu_recording is None:
        return None
    return RecordedSource.from_dict(yaml.safe_load(Path(cfg.gpu_recording).read_text()))


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.runners: dict[tuple[str, int], Runner] = {}
        # Attempts this process has taken, newest last: a re-sent copy is dropped at once. Bounded: a copy of an
        # older one is dropped by the controller's answer instead (it is no longer ASSIGNED).
        self._seen: collections.OrderedDict[tuple[str, int], None] = collections.OrderedDict()
        self._interval = cfg.heartbeat_interval
        self.job_pids = ProcessTreeJobs()
        self.job_users = JobUsers(cfg.job_user, Path(cfg.work_dir), cfg.job_uid_base, cfg.job_uid_range)
        self.sampler = GpuSampler(_gpu_source(cfg), interval=cfg.gpu_sample_interval, job_of_pid=self.job_pids)
        self.gpu_alloc: dict[int, str] = {}  # GPU index -> the job holding it
        self.docker: DockerRuntime | None = None
        self.store: ArtifactStore | None = None
        self._store_url = cfg.store_url
        self._adopting: list[tuple[Assign, ContainerHandle]] = []
        self.instance = uuid.uuid4().hex[:12]  # this process: the controller tells a restart from a re-register
        self._ended: dict[tuple[str, int], float] = {}  # attempts ended lately (exit event stored) -> when
        self._lease: Lease | None = None
        self._contact = time.monotonic()  # when the last request the controller answered was sent
        self._fenced: set[tuple[str, int]] = set()  # attempts stopped because the lease ran out
        self._runs_ended = 0
        self.identity: InstanceIdentity | None = None  # on EC2: this instance, from IMDSv2
        self.interruption: Interruption | None = None  # the spot notice, once it came
        self.telemetry: GpuTelemetry | None = None  # the last heartbeat's GPU readings, for the metrics too
        self.metrics = DaemonMetrics()
        self.metrics.registry.register(GpuUtilization(lambda: [(cfg.agent_id, self.telemetry)]))
        self.seal_key: AgentKey | None = None  # read (made the first time) once this process holds the work dir
        self._bus: Bus
        self._tg: asyncio.TaskGroup

    def info(self) -> AgentInfo:
        cfg = self.cfg
        gpus = self.sampler.gpus
        return AgentInfo(
            agent_id=cfg.agent_id, hostname=socket.gethostname(), provider=cfg.provider, labels=cfg.labels,
            capacity=Resources(cpus=cfg.host_cpus(), memory=cfg.host_memory(), gpus=len(gpus),
                               gpu_model=gpus[0].model if gpus else None),
            gpus=gpus, runtimes=["process", "docker"] if self.docker is not None else ["process"],
            seal_key=self.seal_key.public if self.seal_key is not None else None,
            **self._instance_fields(),  # type: ignore[arg-type]  # mypy cannot match a **dict's values field by field
        )

    def _instance_fields(self) -> dict[str, str | None]:
        me = self.identity
        if me is None:
            return {}
        return {"instance_id": me.instance_id, "instance_type": me.instance_type, "market": me.lifecycle,
                "zone": me.availability_zone, "address": me.local_ipv4}

    def _allocate_gpus(self, job_id: str, count: int) -> list[int]:
        """The first `count` healthy, free GPUs (the controller only places a job where they exist)."""
        sick = set(self.sampler.unhealthy())
        free = [g.index for g in self.sampler.gpus if g.index not in self.gpu_alloc and g.index not in sick]
        chosen = free[:count]
        for index in chosen:
            self.gpu_alloc[index] = job_id
        return chosen

    def _release_gpus(self, job_id: str) -> None:
        self.gpu_alloc = {i: j for i, j in self.gpu_alloc.items() if j != job_id}

    def running(self) -> list[JobRef]:
        adopting = [JobRef(job_id=a.job_id, attempt=a.attempt) for a, _ in self._adopting]
        return [r.ref for r in self.runners.values()] + adopting

    def _retry(self, what: str, fn):  # type: ignore[no-untyped-def]
        return forever(what, fn, initial=self.cfg.retry_initial, maximum=self.cfg.retry_max)

    async def serve(self) -> None:
        structlog.contextvars.bind_contextvars(agent_id=self.cfg.agent_id)
        probe.install(self.metrics)  # this lifespan's retries and consumed messages count here
        with WorkDirClaim(self.cfg.work_dir, self.instance) as self.claim:
            # Kept in the work dir: a restarted agent opens the secrets of a container it re-adopts.
            self.seal_key = AgentKey.load(Path(self.cfg.work_dir) / SEAL_KEY)
            prune_ran(Path(self.cfg.work_dir), time.time() - self.cfg.ran_kept_for)
            await self._serve()

    async def _serve(self) -> None:
        cfg = self.cfg
        token = await connect_token(cfg.metadata, cfg.agent_id) if cfg.nats_identity == "instance" else None
        self._bus = await self._retry("connect", lambda: connect(
            cfg.nats_url, f"incl-agent-{cfg.agent_id}", connect_timeout=cfg.connect_timeout,
            reconnect_wait=cfg.reconnect_wait, request_timeout=cfg.request_timeout,
            creds=Path(cfg.creds) if cfg.creds else None, inbox_prefix=subjects.agent_inbox(cfg.agent_id),
            tls_ca=Path(cfg.tls_ca) if cfg.tls_ca else None, token=token))
        try:
            await self.sampler.open()
            self.job_users.announce()
            async with open_metadata(cfg.provider, cfg.metadata) as metadata, Launcher() as self.launcher, \
                    self._docker_engine() as self.docker, contextlib.AsyncExitStack() as stores, \
                    serving(self.metrics.registry, cfg.metrics_host, cfg.metrics_port), asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self.sampler.run())
                if cfg.provider == "aws":
                    self.identity = await self._retry("instance_identity", metadata.identity)
                    tg.create_task(SpotWatcher(metadata, self._on_spot_notice, cfg.spot).run())
                self._adopting = await self._adoptable()
                await self._register()
                if self._store_url:
                    self.store = await stores.enter_async_context(open_store(self._store_url, config=self.cfg.store))
                for assign, handle in self._adopting:
                    await self._adopt(assign, handle)
                self._adopting = []
                tg.create_task(self._heartbeat())
                tg.create_task(self._fence())
                tg.create_task(self._consume())
        finally:
            await self._bus.close()

    # --- controller ---------------------------------------------------------------------------------------

    async def _register(self) -> None:
        """Register, retrying (with backoff) until a controller answers."""
        delay = self.cfg.retry_initial
        while True:
            sent = time.monotonic()
            try:
                reply = await self._bus.request(subjects.agent_api(self.cfg.agent_id, subjects.REGISTER),
                                      RegisterRequest(meta=Envelope.new(self.cfg.agent_id), info=self.info(),
                                                      running=self.running(), instance=self.instance,
                                                      previous_instance=self.claim.previous),
                                      RegisterReply, self.cfg.request_timeout)
                break
            # Conflict: our previous process still counts
            except (Unavailable, Conflict, *TRANSIENT) as exc:  # type: ignore[misc]  # mypy cannot type a starred except tuple
                level = log.warning if isinstance(exc, Conflict) else log.info
                level("register_waiting", error=str(exc), retry_in=round(delay, 2))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.cfg.retry_max)
            except InclError as exc:  # refused for good (e.g. labels over the limits): say why, and stop
                log.error("register_refused", error=str(exc))
                raise
        self._renewed(sent, reply.lease)
        self._interval = reply.heartbeat_interval
        self._store_url = self._store_url or reply.store_url
        self._stop(reply.stop, "the controller gave this attempt to another agent")
        log.info("agent_registered", heartbeat_interval=self._interval, store=self._store_url)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            sent = time.monotonic()
            try:
                telemetry = self.telemetry = self.sampler.snapshot(self.gpu_alloc) if self.sampler.gpus else None
                reply = await self._bus.request(subjects.agent_api(self.cfg.agent_id, subjects.HEARTBEAT),
                                      HeartbeatRequest(meta=Envelope.new(self.cfg.agent_id),
                                                       agent_id=self.cfg.agent_id, running=self.running(),
                                                       telemetry=telemetry, instance=self.instance,
                                                       ended=self._recently_ended()),
                                      HeartbeatReply, self._heartbeat_timeout())
            except NoResponders as exc:
                # No controller runs at all: none can declare this agent lost now, and one that starts gives
                # every agent a fresh deadline. So this answer renews the lease as well as a reply does.
                self._renewed(sent, self._lease)
                log.debug("heartbeat_failed", error=str(exc))
                continue
            except (Unavailable, *TRANSIENT) as exc:  # type: ignore[misc]  # mypy cannot type a starred except tuple
                log.debug("heartbeat_failed", error=str(exc))
                continue
            except DecodeError as exc:
                log.warning("message_dropped", subject=subjects.HEARTBEAT, error=str(exc))
                continue
            self._interval = reply.heartbeat_interval
            if reply.superseded:
                self._superseded()
            if not reply.registered:
                log.warning("controller_forgot_agent")
                await self._register()
                continue
            self._renewed(sent, reply.lease)
            self._stop(reply.stop, "the controller gave this attempt to another agent")

    def _renewed(self, sent: float, lease: Lease | None) -> None:
        """The controller answered a request sent at `sent` (monotonic): the lease runs from then, here and
        in the fork server, which enforces it even while this process cannot (frozen, or its loop stalled)."""
        self._contact, self._lease = sent, lease
        if lease is None:
            return
        url = self.docker.url if self.docker is not None else ""
        containers = [c for c in (r.container_id for r in self.runners.values()) if c]
        self.launcher.renew(sent + lease.duration - time.monotonic(), lease.grace,
                            url.removeprefix("unix://") if url.startswith("unix://") else None,
                            containers, str(self.claim.lock_path))

    def _heartbeat_timeout(self) -> float:
        """A heartbeat that takes a third of the lease is as good as lost: try the next one instead."""
        lease = self._lease
        return min(self.cfg.request_timeout, lease.duration / 3) if lease else self.cfg.request_timeout

    def _recently_ended(self) -> list[JobRef]:
        cutoff = time.monotonic() - self.cfg.ended_retention
        self._ended = {k: t for k, t in self._ended.items() if t >= cutoff}
        return [JobRef(job_id=j, attempt=a) for j, a in self._ended]

    def _superseded(self) -> None:
        """Another process registered with this agent id after ours went silent: ours is the stale one."""
        log.error("agent_superseded", instance=self.instance)
        for runner in self.runners.values():
            self._fenced.add((runner.ref.job_id, runner.ref.attempt))
            runner.stop("another agent process took over this agent id", grace=self._lease.grace if self._lease
                        else self.cfg.cancel_grace)
        raise AgentSuperseded(f"another process took over agent id {self.cfg.agent_id!r}")

    async def _fence(self) -> None:
        """Past its lease without an answer from the controller, the agent stops every job (SIGTERM, then
        SIGKILL after the lease's grace): by the time the controller declares it lost and hands the attempts
        to another agent, none of them still runs here."""
        while True:
            lease = self._lease
            if lease is None:
                await asyncio.sleep(self._interval)
                continue
            left = self._contact + lease.duration - time.monotonic()
            if left > 0:
                await asyncio.sleep(min(left, self._interval))
                continue
            for runner in list(self.runners.values()):
                key = (runner.ref.job_id, runner.ref.attempt)
                if key not in self._fenced:
                    self._fenced.add(key)
                    log.warning("attempt_fenced", job_id=key[0], attempt=key[1],
                                silent_for=round(-left + lease.duration, 1))
                    runner.stop(f"the agent lost contact with the controller for {lease.duration:g}s; stopped so "
                                "that it never runs twice", grace=lease.grace)
            await asyncio.sleep(min(self._interval, lease.grace))

    def _stop(self, refs: list[JobRef], reason: str) -> None:
        for ref in refs:
            runner = self.runners.get((ref.job_id, ref.attempt))
            if runner is not None:
                log.warning("attempt_stopped_by_controller", job_id=ref.job_id, attempt=ref.attempt)
                runner.stop(reason)

    # --- assignments --------------------------------------------------------------------------------------

    async def _consume(self) -> None:
        cfg = self.cfg
        decoder: Decoder[AgentCommand] = Decoder(AgentCommand)
        sub = await self._retry("subscribe_assignments", lambda: self._bus.pull(
            subjects.ASSIGN_STREAM, subjects.assign(cfg.agent_id), subjects.assign_consumer(cfg.agent_id),
            ack_wait=cfg.assign_ack_wait))
        # One job's commands in order; different jobs' side by side (each Assign asks the controller first).
        await consume(self._bus, sub, f"agent-{cfg.agent_id}", decoder, self._command, batch=16,
                      timeout=cfg.assign_fetch_timeout, backoff=cfg.retry_max, lane=lambda c: c.job_id)

    async def _command(self, cmd: AgentCommand) -> None:
        key = (cmd.job_id, cmd.attempt)
        match cmd:
            case CancelJob():
                runner = self.runners.get(key)
                if runner is not None:
                    log.info("attempt_cancel", job_id=cmd.job_id, attempt=cmd.attempt)
                    runner.stop("cancelled", grace=cmd.grace, cancelled=True)
            case GangStart():
                runner = self.runners.get(key)
                if runner is not None:
                    log.info("gang_start", job_id=cmd.job_id, attempt=cmd.attempt)
                    runner.release(cmd.env)
            case Assign():
                if key in self._seen or key in self.runners:
                    log.info("assignment_duplicate", job_id=cmd.job_id, attempt=cmd.attempt)
                    return
                check = await self._still_mine(cmd)
                if not check.current:
                    log.info("assignment_stale", job_id=cmd.job_id, attempt=cmd.attempt)
                    return
                self._take(key)
                if Workspace(Path(self.cfg.work_dir), cmd.job_id, cmd.attempt).started:
                    # A copy of an assignment whose ack was lost, redelivered to this new agent process: the
                    # previous process started it, and its command died with that process (a container would
                    # have been re-adopted). Running it again would run one attempt twice (and mix its output
                    # with the first run's), so it ends here, lost, and the job goes on as a new attempt.
                    log.warning("attempt_not_rerun", job_id=cmd.job_id, attempt=cmd.attempt)
                    await self.publish(JobExited(job_id=cmd.job_id, attempt=cmd.attempt, agent_id=self.cfg.agent_id,
                                                 fenced=True, reason="a previous process of this agent started this "
                                                 "attempt and was killed with it; an attempt never runs twice"))
                    return
                if self.interruption is not None:  # assigned before the controller heard of the notice
                    await self.publish(JobExited(job_id=cmd.job_id, attempt=cmd.attempt, agent_id=self.cfg.agent_id,
                                                 preempted=True, reason="its spot instance is being reclaimed"))
                    return
                if check.cancel_requested:
                    await self.publish(JobExited(job_id=cmd.job_id, attempt=cmd.attempt, agent_id=self.cfg.agent_id,
                                                 cancelled=True, reason="cancelled before it started"))
                    return
                gpus = self._allocate_gpus(cmd.job_id, cmd.spec.resources.gpus) if self.sampler.gpus else None
                self._start(cmd, gpus)

    def _start(self, assign: Assign, gpus: list[int] | None, adopt: ContainerHandle | None = None,
               resume: Resume | None = None) -> None:
        runner = Runner(self.cfg, self._bus, self.publish, assign, launcher=self.launcher, docker=self.docker,
                        store=self.store, gpus=gpus, job_pids=self.job_pids, resume=resume, key=self.seal_key,
                        job_users=self.job_users, gpu_readings=self.sampler.latest)
        self.runners[(assign.job_id, assign.attempt)] = runner
        self._tg.create_task(self._run(runner, adopt))

    async def _run(self, runner: Runner, adopt: ContainerHandle | None = None) -> None:
        key = (runner.ref.job_id, runner.ref.attempt)
        try:
            await runner.run(adopt)
            self._ended[key] = time.monotonic()  # its exit event is stored: reported until the controller has it
        finally:
            self.runners.pop(key, None)
            self._fenced.discard(key)
            self._release_gpus(runner.ref.job_id)
            self._runs_ended += 1
            if self._runs_ended % 1000 == 0:  # a long-lived agent forgets old "started here" marks as it goes
                await asyncio.to_thread(prune_ran, Path(self.cfg.work_dir), time.time() - self.cfg.ran_kept_for)

    # --- spot interruption ----------------------------------------------------------------------------------

    async def _on_spot_notice(self, notice: SpotNotice) -> None:
        """EC2 takes the instance at the deadline: every job gets SIGTERM (checkpoint now) and the time left,
        less the upload reserve; each then saves its checkpoint and ends PREEMPTED, to resume elsewhere."""
        if isinstance(notice, Rebalance):
            log.warning("spot_rebalance_recommended", noticed_at=notice.noticed_at.isoformat())
            return
        self.interruption = notice
        deadline = notice.deadline.timestamp()
        grace = max(1.0, deadline - time.time() - self.cfg.spot_upload_reserve)
        log.warning("spot_interruption", action=notice.action, deadline=notice.deadline.isoformat(),
                    jobs=len(self.runners), grace=round(grace, 1))
        await self._retry("publish_interruption", lambda: self._bus.publish_durable(
            subjects.events(self.cfg.agent_id),
            encode(AgentInterrupted(agent_id=self.cfg.agent_id, action=notice.action, deadline=deadline,
                                    instance_id=self.identity.instance_id if self.identity else None)),
            msg_id=f"{self.cfg.agent_id}.interrupted"))
        for runner in self.runners.values():
            runner.stop(f"spot interruption: EC2 will {notice.action} the instance at "
                        f"{notice.deadline.strftime('%H:%M:%S')} UTC", grace=grace, preempted=True)

    # --- containers that outlived the previous agent process ---------------------------------------------------

    @contextlib.asynccontextmanager
    async def _docker_engine(self) -> AsyncIterator[DockerRuntime | None]:
        """The Docker runtime when enabled and the engine answers; None: this agent runs processes only."""
        if not self.cfg.docker.enabled:
            yield None
            return
        async with DockerRuntime(self.cfg.docker) as docker:
            if await docker.available():
                yield docker
                return
            log.warning("docker_unavailable", url=self.cfg.docker.url)
        yield None

    async def _adoptable(self) -> list[tuple[Assign, ContainerHandle]]:
        """This agent's containers still on the engine, with the assignment each was started for."""
        if self.docker is None:
            return []
        found = []
        for handle in await self.docker.find({"incl.agent": self.cfg.agent_id}):
            job_id, attempt = handle.labels.get("incl.job", ""), handle.labels.get("incl.attempt", "")
            path = Workspace(Path(self.cfg.work_dir), job_id, int(attempt) if attempt.isdigit() else 0).assignment
            try:
                found.append((_ASSIGN.decode(path.read_bytes()), handle))
            except (OSError, DecodeError) as exc:
                log.warning("container_unknown_removed", container=handle.id, error=repr(exc))
                await handle.stop(0)
                await handle.remove()
        return found

    def _take(self, key: tuple[str, int]) -> None:
        self._seen[key] = None
        while len(self._seen) > self.cfg.taken_max:
            self._seen.popitem(last=False)

    async def _adopt(self, assign: Assign, handle: ContainerHandle) -> None:
        key = (assign.job_id, assign.attempt)
        self._take(key)
        gpus = [int(g) for g in handle.labels.get("incl.gpus", "").split(",") if g]
        for index in gpus:
            self.gpu_alloc[index] = assign.job_id
        resume = await self._resume_point(assign)
        log.info("container_adopted", job_id=assign.job_id, attempt=assign.attempt, container=handle.id,
                 shipped_lines=resume.stdout + resume.stderr)
        self._start(assign, gpus if self.sampler.gpus else None, adopt=handle, resume=resume)

    async def _resume_point(self, assign: Assign) -> Resume:
        """How far the previous agent process got shipping this attempt's output (the streams are the truth)."""
        resume = Resume()
        attempt = assign.attempt
        key, me = assign.output_key, self.cfg.agent_id  # its own subjects: the only ones it may read the last of
        for stream, subject, cls in ((subjects.LOGS_STREAM, subjects.logs(assign, key, me), LogBatch),
                                     (subjects.METRICS_STREAM, subjects.metrics(assign, key, me), MetricBatch)):
            data = await self._retry("last_batch", lambda s=stream, subj=subject: self._bus.last(s, subj))
            if data is None:
                continue
            try:
                batch = Decoder[LogBatch | MetricBatch](cls).decode(data)
            except DecodeError:
                continue
            if batch.attempt != attempt:
                continue
            if isinstance(batch, LogBatch):
                resume.stdout, resume.stderr, resume.log_seq = batch.stdout_total, batch.stderr_total, batch.seq + 1
            else:
                resume.metric_seq = batch.seq + 1
        return resume

    async def _still_mine(self, cmd: Assign) -> AssignmentReply:
        """Ask the controller whether a queued assignment is still this agent's to run (it owns the records);
        while no controller answers, the assignment waits."""
        req = AssignmentRequest(meta=Envelope.new(self.cfg.agent_id), job_id=cmd.job_id, attempt=cmd.attempt,
                                agent_id=self.cfg.agent_id)
        delay = self.cfg.retry_initial
        while True:
            try:
                return await self._bus.request(subjects.agent_api(self.cfg.agent_id, subjects.ASSIGNMENT), req,
                                               AssignmentReply, self.cfg.request_timeout)
            except (Unavailable, *TRANSIENT) as exc:  # type: ignore[misc]  # mypy cannot type a starred except tuple
                log.info("assignment_check_waiting", job_id=cmd.job_id, error=str(exc))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.cfg.retry_max)

    async def publish(self, event: AgentEvent) -> None:
        """Events are durable and deduplicated: a retry after an uncertain failure is stored once. What they
        carry from the job (its tail, its failure reason) is bounded here, before it leaves the agent."""
        if isinstance(event, JobExited):
            key = (event.job_id, event.attempt)
            runner = self.runners.get(key)
            fenced = key in self._fenced or (runner is not None and runner.fenced_by(self.launcher.fenced))
            event = structs.replace(event, tail=limits.bound_tail(event.tail), reason=limits.bound_reason(event.reason),
                                    fenced=event.fenced or fenced)
        # AgentInterrupted goes out on its own path (spot notices), never through publish().
        # Per agent: the ranks of a multi-node attempt report the same job and attempt from several agents.
        msg_id = f"{event.job_id}.{event.attempt}.{event.agent_id}.{type(event).__name__}"  # type: ignore[union-attr]
        data = encode(event)
        if len(data) > self._bus.max_payload and isinstance(event, JobExited):  # cannot happen once bounded
            log.error("event_too_large", size=len(data), limit=self._bus.max_payload)
            data = encode(structs.replace(event, tail=["[tail dropped: the event was over the NATS limit]"]))
        if isinstance(event, JobRunning) and (runner := self.runners.get((event.job_id, event.attempt))) is not None \
                and runner.container_id is not None:  # a new container: the fork server knows it before anyone else can
            self._renewed(self._contact, self._lease)
        await self._retry("publish_event", lambda: self._bus.publish_durable(
            subjects.events(self.cfg.agent_id), data, msg_id=msg_id))
