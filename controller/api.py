"""The controller's request-reply API: one handler per subject, typed in and out, errors as codes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from incl.controller import deadletters, quota
from incl.controller.agents import Agents
from incl.controller.gpuwatch import GpuWatch
from incl.controller.jobs import Jobs
from incl.controller.paging import page
from incl.proto import subjects
from incl.proto.codec import Decoder, encode
from incl.proto.errors import InclError
from incl.proto.messages import (
    CancelReply,
    CancelRequest,
    GetJobReply,
    GetJobRequest,
    HeartbeatRequest,
    Job,
    ListAgentsReply,
    ListAgentsRequest,
    ListDeadLettersReply,
    ListDeadLettersRequest,
    ListJobsReply,
    ListJobsRequest,
    PingReply,
    PingRequest,
    QuotaReply,
    QuotaRequest,
    RegisterRequest,
    Reply,
    SubmitReply,
    SubmitRequest,
)
from incl.proto.spec import check_spec
from incl.proto.transport import error_reply

log = structlog.get_logger()


def _job_key(job: Job) -> str:
    """Submission order, then id: a stable cursor for `incl ls` pages."""
    return f"{job.submitted_at:020.6f}/{job.id}"

Handler = Callable[[Any], Awaitable[Reply]]


class Api:
    def __init__(self, controller_id: str, jobs: Jobs, agents: Agents, watch: GpuWatch, js: JetStreamContext,
                 store_url: str | None = None, page_bytes: int = 512 * 1024) -> None:
        self._js = js
        self._id = controller_id
        self._page_bytes = page_bytes  # a listing's page, encoded, stays under this (half the payload limit)
        self._store_url = store_url
        self._jobs = jobs
        self._agents = agents
        self._watch = watch
        self.routes: dict[str, tuple[Decoder[Any], Handler]] = {
            subjects.SUBMIT: (Decoder(SubmitRequest), self.submit),
            subjects.LIST_JOBS: (Decoder(ListJobsRequest), self.list_jobs),
            subjects.GET_JOB: (Decoder(GetJobRequest), self.get_job),
            subjects.CANCEL: (Decoder(CancelRequest), self.cancel),
            subjects.LIST_AGENTS: (Decoder(ListAgentsRequest), self.list_agents),
            subjects.REGISTER: (Decoder(RegisterRequest), self._agents.register),
            subjects.HEARTBEAT: (Decoder(HeartbeatRequest), self.heartbeat),
            subjects.PING: (Decoder(PingRequest), self.ping),
            subjects.QUOTA: (Decoder(QuotaRequest), self.quota),
            subjects.DEAD_LETTERS: (Decoder(ListDeadLettersRequest), self.dead_letters),
        }

    async def handle(self, msg: Msg) -> None:
        """Decode, serve, reply. A bad message is answered with its error and logged; nothing stops."""
        route = self.routes.get(msg.subject)
        if route is None:
            log.warning("api_unknown_subject", subject=msg.subject)
            return
        decoder, handler = route
        try:
            reply = encode(await handler(decoder.decode(msg.data)))
        except InclError as exc:
            if exc.code in ("decode_error", "version_mismatch"):
                log.warning("message_dropped", subject=msg.subject, error=str(exc))
            reply = error_reply(exc)
        except Exception as exc:  # a bug in one handler must not stop the API
            log.exception("api_handler_failed", subject=msg.subject)
            reply = error_reply(InclError(f"internal error: {type(exc).__name__}"))
        limit = msg._client.max_payload  # noqa: SLF001 - nats-py exposes the server's limit only here
        if len(reply) > limit:  # e.g. `incl agents` over thousands of agents: say so, never leave it hanging
            log.warning("api_reply_too_large", subject=msg.subject, size=len(reply), limit=limit)
            reply = error_reply(InclError(f"the reply ({len(reply)} bytes) exceeds the NATS payload limit "
                                          f"({limit} bytes); narrow the query"))
        if msg.reply:
            try:
                await msg.respond(reply)
            except Exception as exc:  # the requester went away, or the connection is down
                log.debug("api_reply_failed", subject=msg.subject, error=repr(exc))

    async def submit(self, req: SubmitRequest) -> SubmitReply:
        job = await self._jobs.submit(check_spec(req.spec), req.user, req.code, key=req.meta.idempotency_key)
        return SubmitReply(job=self._jobs.view(job))

    async def list_jobs(self, req: ListJobsRequest) -> ListJobsReply:
        """Oldest first, in pages."""
        jobs = [j for j in self._jobs.records
                if (not req.states or j.state in req.states) and (req.user is None or j.user == req.user)]
        chosen, cursor = page(jobs, _job_key, req.after, req.limit, self._page_bytes)
        views = [self._jobs.view(j) for j in chosen]
        util = {j.id: self._watch.util[j.id] for j in views if j.id in self._watch.util}
        return ListJobsReply(jobs=views, gpu_util=util, next=cursor)

    async def get_job(self, req: GetJobRequest) -> GetJobReply:
        job = self._jobs.view(self._jobs.records.require(req.job_id, "job"))
        return GetJobReply(job=job, gpu_util=self._watch.util.get(job.id),
                           gpu_idle_since=self._watch.monitor.idle_since(job.id))

    async def quota(self, req: QuotaRequest) -> QuotaReply:
        held = quota.usage(quota.claim_of(self._jobs.quotas, j) for j in self._jobs.on_agent())
        return QuotaReply(lines=quota.report(self._jobs.quotas, held))

    async def cancel(self, req: CancelRequest) -> CancelReply:
        return CancelReply(job=await self._jobs.cancel(req.job_id))

    async def list_agents(self, req: ListAgentsRequest) -> ListAgentsReply:
        views, cursor = page(self._agents.views(), lambda v: v.record.info.agent_id, req.after, req.limit,
                             self._page_bytes)
        return ListAgentsReply(agents=views, next=cursor)

    async def heartbeat(self, req: HeartbeatRequest) -> Reply:
        return await self._agents.heartbeat(req)

    async def dead_letters(self, req: ListDeadLettersRequest) -> ListDeadLettersReply:
        return await deadletters.newest(self._js, req.limit)

    async def ping(self, req: PingRequest) -> PingReply:
        return PingReply(controller_id=self._id, store_url=self._store_url)
