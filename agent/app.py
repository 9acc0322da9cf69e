"""The agent daemon: register, heartbeat on the controller's clock, take assignments, run jobs.

One lifespan around one TaskGroup: the heartbeat loop, the assignment consumer, and one task per attempt.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import structlog
import yaml
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.errors import KeyNotFoundError

from incl.agent.config import AgentConfig
from incl.agent.runner import Runner
from incl.agent.runtime import Launcher
from incl.agent.telemetry import GpuSampler, ProcessTreeJobs, RecordedSource
from incl.proto import subjects
from incl.proto.codec import Decoder, encode
from incl.proto.errors import DecodeError, Unavailable
from incl.proto.messages import (
    AgentCommand,
    AgentEvent,
    AgentInfo,
    Assign,
    CancelJob,
    Envelope,
    HeartbeatReply,
    HeartbeatRequest,
    Job,
    JobExited,
    JobRef,
    JobState,
    RegisterReply,
    RegisterRequest,
    Resources,
)
from incl.proto.streams import ensure_buckets, ensure_streams
from incl.proto.transport import connect, request
from incl._daemon import consume
from incl._retry import TRANSIENT, forever

log = structlog.get_logger()
_JOB: Decoder[Job] = Decoder(Job)


def _gpu_source(cfg: AgentConfig) -> RecordedSource | None:
    """Recorded NVML readings when the config names a recording (tests); None means real NVML."""
    if cfg.gpu_recording is None:
        return None
    return RecordedSource.from_dict(yaml.safe_load(Path(cfg.gpu_recording).read_text()))


class Agent:
    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.runners: dict[tuple[str, int], Runner] = {}
        self._seen: set[tuple[str, int]] = set()  # attempts this process has taken: a re-sent copy is dropped
        self._interval = cfg.heartbeat_interval
        self.job_pids = ProcessTreeJobs()
        self.sampler = GpuSampler(_gpu_source(cfg), interval=cfg.gpu_sample_interval, job_of_pid=self.job_pids)
        self.gpu_alloc: dict[int, str] = {}  # GPU index -> the job holding it
        self._nc: Client
        self._js: JetStreamContext
        self._tg: asyncio.TaskGroup

    def info(self) -> AgentInfo:
        cfg = self.cfg
        gpus = self.sampler.gpus
        return AgentInfo(
            agent_id=cfg.agent_id, hostname=socket.gethostname(), provider=cfg.provider, labels=cfg.labels,
            capacity=Resources(cpus=cfg.host_cpus(), memory=cfg.host_memory(), gpus=len(gpus),
                               gpu_model=gpus[0].model if gpus else None),
            gpus=gpus,
        )

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
        return [r.ref for r in self.runners.values()]

    def _retry(self, what: str, fn):  # type: ignore[no-untyped-def]
        return forever(what, fn, initial=self.cfg.retry_initial, maximum=self.cfg.retry_max)

    async def serve(self) -> None:
        cfg = self.cfg
        structlog.contextvars.bind_contextvars(agent_id=cfg.agent_id)
        self._nc = await self._retry("connect", lambda: connect(
            cfg.nats_url, f"incl-agent-{cfg.agent_id}", connect_timeout=cfg.connect_timeout,
            reconnect_wait=cfg.reconnect_wait))
        try:
            self._js = self._nc.jetstream(timeout=cfg.request_timeout)
            await self._retry("ensure_streams", lambda: ensure_streams(self._js, cfg.streams))
            buckets = await self._retry("ensure_buckets", lambda: ensure_buckets(self._js))
            self._jobs_kv = buckets[subjects.JOBS_BUCKET]
            await self.sampler.open()
            async with Launcher() as self.launcher, asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self.sampler.run())
                await self._register()
                tg.create_task(self._heartbeat())
                tg.create_task(self._consume())
        finally:
            await self._nc.close()

    # --- controller ---------------------------------------------------------------------------------------

    async def _register(self) -> None:
        """Register, retrying (with backoff) until a controller answers."""
        delay = self.cfg.retry_initial
        while True:
            try:
                reply = await request(self._nc, subjects.REGISTER,
                                      RegisterRequest(meta=Envelope.new(self.cfg.agent_id), info=self.info(),
                                                      running=self.running()),
                                      RegisterReply, self.cfg.request_timeout)
                break
            except (Unavailable, *TRANSIENT) as exc:
                log.info("register_waiting", error=str(exc), retry_in=round(delay, 2))
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.cfg.retry_max)
        self._interval = reply.heartbeat_interval
        self._stop(reply.stop, "the controller gave this attempt to another agent")
        log.info("agent_registered", heartbeat_interval=self._interval)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                telemetry = self.sampler.snapshot(self.gpu_alloc) if self.sampler.gpus else None
                reply = await request(self._nc, subjects.HEARTBEAT,
                                      HeartbeatRequest(meta=Envelope.new(self.cfg.agent_id),
                                                       agent_id=self.cfg.agent_id, running=self.running(),
                                                       telemetry=telemetry),
                                      HeartbeatReply, self.cfg.request_timeout)
            except (Unavailable, *TRANSIENT) as exc:
                log.debug("heartbeat_failed", error=str(exc))
                continue
            except DecodeError as exc:
                log.warning("message_dropped", subject=subjects.HEARTBEAT, error=str(exc))
                continue
            self._interval = reply.heartbeat_interval
            if not reply.registered:
                log.warning("controller_forgot_agent")
                await self._register()
            self._stop(reply.stop, "the controller gave this attempt to another agent")

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
        sub = await self._retry("subscribe_assignments", lambda: self._js.pull_subscribe(
            subjects.assign(cfg.agent_id), durable=subjects.assign_consumer(cfg.agent_id),
            stream=subjects.ASSIGN_STREAM,
            config=api.ConsumerConfig(ack_wait=cfg.assign_ack_wait, max_deliver=-1)))
        await consume(sub, decoder, self._command, batch=16, timeout=cfg.assign_fetch_timeout,
                      backoff=cfg.retry_max)

    async def _command(self, cmd: AgentCommand) -> None:
        key = (cmd.job_id, cmd.attempt)
        match cmd:
            case CancelJob():
                runner = self.runners.get(key)
                if runner is not None:
                    log.info("attempt_cancel", job_id=cmd.job_id, attempt=cmd.attempt)
                    runner.stop("cancelled", grace=cmd.grace, cancelled=True)
            case Assign():
                if key in self._seen:
                    log.info("assignment_duplicate", job_id=cmd.job_id, attempt=cmd.attempt)
                    return
                job = await self._current(cmd.job_id)
                cur = job.current if job else None
                if job is None or cur is None or (cur.number, cur.agent_id) != (cmd.attempt, self.cfg.agent_id) \
                        or job.state is not JobState.ASSIGNED:
                    log.info("assignment_stale", job_id=cmd.job_id, attempt=cmd.attempt,
                             state=job.state if job else None)
                    return
                self._seen.add(key)
                if job.cancel_requested:
                    await self.publish(JobExited(job_id=cmd.job_id, attempt=cmd.attempt, agent_id=self.cfg.agent_id,
                                                 cancelled=True, reason="cancelled before it started"))
                    return
                gpus = self._allocate_gpus(cmd.job_id, cmd.spec.resources.gpus) if self.sampler.gpus else None
                runner = Runner(self.cfg, self._js, self.publish, cmd, launcher=self.launcher, gpus=gpus,
                                job_pids=self.job_pids)
                self.runners[key] = runner
                self._tg.create_task(self._run(runner))

    async def _run(self, runner: Runner) -> None:
        try:
            await runner.run()
        finally:
            self.runners.pop((runner.ref.job_id, runner.ref.attempt), None)
            self._release_gpus(runner.ref.job_id)

    async def _current(self, job_id: str) -> Job | None:
        """The job as the controller last wrote it: the guard against running a stale assignment."""
        try:
            entry = await self._retry("read_job", lambda: self._jobs_kv.get(job_id))
        except KeyNotFoundError:
            return None
        try:
            return _JOB.decode(entry.value or b"")
        except DecodeError:
            return None

    async def publish(self, event: AgentEvent) -> None:
        """Events are durable and deduplicated: a retry after an uncertain failure is stored once."""
        msg_id = f"{event.job_id}.{event.attempt}.{type(event).__name__}"
        await self._retry("publish_event", lambda: self._js.publish(
            subjects.events(self.cfg.agent_id), encode(event), headers={"Nats-Msg-Id": msg_id},
            timeout=self.cfg.request_timeout))
