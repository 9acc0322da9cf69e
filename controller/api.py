"""The controller's request-reply API: one handler per subject, typed in and out, errors as codes."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

import msgspec
import structlog

from incl.bus import health
from incl.bus.connection import Bus, error_reply
from incl.controller import audit, callers, deadletters, gang, leader, policy, quota
from incl.controller.agents import Agents
from incl.controller.audit import Audit
from incl.controller.gpuwatch import GpuWatch
from incl.controller.joblisting import job_key, list_page
from incl.controller.jobs import Jobs
from incl.controller.models import Models
from incl.controller.paging import page
from incl.controller.policy import Principal
from incl.controller.principals import Principals
from incl.controller.shares import Shares
from incl.controller.studies import Studies
from incl.proto import subjects
from incl.proto.audit import AuditRequest, UserChangedReply, UserChangedRequest
from incl.proto.codec import Decoder, encode
from incl.proto.errors import InclError, NotAllowed, SpecInvalid
from incl.proto.messages import (
    TERMINAL,
    AssignmentReply,
    AssignmentRequest,
    CancelReply,
    CancelRequest,
    GetJobReply,
    GetJobRequest,
    HeartbeatRequest,
    Job,
    JobState,
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
from incl.proto.registry import (
    AliasModelReply,
    AliasModelRequest,
    GetModelReply,
    GetModelRequest,
    ListModelsReply,
    ListModelsRequest,
    ListVersionsReply,
    ListVersionsRequest,
    ModelRef,
    RegisterModelReply,
    RegisterModelRequest,
)
from incl.proto.shares import (
    CreateShareReply,
    CreateShareRequest,
    ListSharesReply,
    ListSharesRequest,
    ResolveShareReply,
    ResolveShareRequest,
    RevokeShareReply,
    RevokeShareRequest,
)
from incl.proto.spec import JobSpec, check_spec
from incl.proto.status import ControllerMember, StatusReply, StatusRequest
from incl.proto.studies import (
    GetStudyReply,
    GetStudyRequest,
    ListStudiesReply,
    ListStudiesRequest,
    StopStudyReply,
    StopStudyRequest,
    SubmitStudyReply,
    SubmitStudyRequest,
)

log = structlog.get_logger()



async def logs_expired(bus: Bus, job: Job) -> str | None:
    """Why `job`, which has nothing left in the logs stream, has nothing there: its lines expired, said with the
    stream's limits; None when it wrote none. An attempt's record keeps the tail of its output, so a job with a
    tail wrote lines; they are gone once the stream's oldest message is newer than its end. (The controller
    answers this: readers may not inspect the stream itself.)"""
    wrote = [a.ended_at for a in job.attempts if a.tail and a.ended_at is not None]
    if job.state not in TERMINAL or not wrote:
        return None
    kept = await bus.retention(subjects.LOGS_STREAM)
    if kept.oldest is not None and kept.oldest <= max(wrote):
        return None
    limits = [f"{kept.max_age / 86400:g} days" if kept.max_age else "",
              f"{kept.max_bytes / 2**30:g} GiB" if kept.max_bytes else ""]
    return "expired: the cluster keeps them for " + " and up to ".join(x for x in limits if x) \
        if any(limits) else "expired"


Handler = Callable[[Any], Awaitable[Reply]]

# Which verbs are reads (a standby answers them too, asked as `any.<verb>`) and which writes (the leader only):
# `subjects.READS`. Writes: submit, jobs.cancel, studies.submit/stop, models.register/alias, shares.create/revoke,
# users.added/removed (each recorded in the audit trail, `audit.AUDITED`); every agent verb (register, heartbeat,
# assignment: liveness and dispatch are the leader's).

class ByCaller(NamedTuple):
    """A handler told who asks: the user the subject names, as the identities registry has them (their teams and
    rights, `incl.controller.policy`); the payload is never asked."""
    serve: Callable[[Any, Principal], Awaitable[Reply]]


class Api:
    def __init__(self, controller_id: str, jobs: Jobs, agents: Agents, watch: GpuWatch, bus: Bus, studies: Studies,
                 models: Models, audit: Audit, store_url: str | None = None, page_bytes: int = 512 * 1024,
                 principals: Principals | None = None, shares: Shares | None = None,
                 leading: Callable[[], bool] = lambda: True, read_timeout: float = 5.0) -> None:
        self._bus = bus
        self._read_timeout = read_timeout  # a page of old job records read from the bucket
        self._leading = leading  # whether this controller holds the lease (a standby's API: never)
        self._audit = audit
        self._principals = principals or Principals(None)
        self._id = controller_id
        self._page_bytes = page_bytes  # a listing's page, encoded, stays under this (half the payload limit)
        self._store_url = store_url
        self._jobs = jobs
        self._agents = agents
        self._watch = watch
        self._studies = studies
        self._models = models
        self._shares = shares
        self._started = time.time()
        # Per kind of caller: an agent's credentials cannot submit, and a user's cannot register an agent.
        self.routes: dict[str, dict[str, tuple[Decoder[Any], Handler | ByCaller]]] = {
            subjects.USER: {
                subjects.SUBMIT: (Decoder(SubmitRequest), ByCaller(self.submit)),
                subjects.LIST_JOBS: (Decoder(ListJobsRequest), ByCaller(self.list_jobs)),
                subjects.GET_JOB: (Decoder(GetJobRequest), ByCaller(self.get_job)),
                subjects.CANCEL: (Decoder(CancelRequest), ByCaller(self.cancel)),
                subjects.LIST_AGENTS: (Decoder(ListAgentsRequest), self.list_agents),
                subjects.PING: (Decoder(PingRequest), self.ping),
                subjects.STATUS: (Decoder(StatusRequest), self.status),
                subjects.QUOTA: (Decoder(QuotaRequest), self.quota),
                subjects.DEAD_LETTERS: (Decoder(ListDeadLettersRequest), ByCaller(self.dead_letters)),
                subjects.SUBMIT_STUDY: (Decoder(SubmitStudyRequest), ByCaller(self.submit_study)),
                subjects.LIST_STUDIES: (Decoder(ListStudiesRequest), ByCaller(self.list_studies)),
                subjects.GET_STUDY: (Decoder(GetStudyRequest), ByCaller(self.get_study)),
                subjects.STOP_STUDY: (Decoder(StopStudyRequest), ByCaller(self.stop_study)),
                subjects.REGISTER_MODEL: (Decoder(RegisterModelRequest), ByCaller(self.register_model)),
                subjects.LIST_MODELS: (Decoder(ListModelsRequest), self.list_models),
                subjects.GET_MODEL: (Decoder(GetModelRequest), self.get_model),
                subjects.LIST_VERSIONS: (Decoder(ListVersionsRequest), self.list_versions),
                subjects.ALIAS_MODEL: (Decoder(AliasModelRequest), ByCaller(self.alias_model)),
                subjects.AUDIT: (Decoder(AuditRequest), ByCaller(self._audit.read)),
                subjects.USERS_ADDED: (Decoder(UserChangedRequest), ByCaller(self.users_changed)),
                subjects.USERS_REMOVED: (Decoder(UserChangedRequest), ByCaller(self.users_changed)),
                subjects.USERS_ROTATED: (Decoder(UserChangedRequest), ByCaller(self.users_changed)),
                subjects.CREATE_SHARE: (Decoder(CreateShareRequest), ByCaller(self.create_share)),
                subjects.LIST_SHARES: (Decoder(ListSharesRequest), ByCaller(self.list_shares)),
                subjects.REVOKE_SHARE: (Decoder(RevokeShareRequest), ByCaller(self.revoke_share)),
                subjects.RESOLVE_SHARE: (Decoder(ResolveShareRequest), self.resolve_share),
            },
            subjects.AGENT: {
                subjects.REGISTER: (Decoder(RegisterRequest), self._agents.register),
                subjects.HEARTBEAT: (Decoder(HeartbeatRequest), self.heartbeat),
                subjects.ASSIGNMENT: (Decoder(AssignmentRequest), self.assignment),
            },
        }

    async def answer(self, subject: str, data: bytes) -> bytes:
        """What `handle` answers; a user's state-changing request (`audit.AUDITED`) is first recorded with it."""
        answer = await self.handle(subject, data)
        who = subjects.caller(subject)
        if who is not None and who.kind == subjects.USER and who.verb in audit.AUDITED:
            await self._audit.answered(who, self.routes[who.kind][who.verb][0], data, answer)
        return answer

    async def handle(self, subject: str, data: bytes) -> bytes:
        """Decode, check the caller the subject names, serve, reply. A bad message is answered with its error and
        logged; nothing stops. (The bus answers a reply over the payload limit with an error saying so.)"""
        who = subjects.caller(subject)
        if who is not None and who.kind == subjects.USER and who.verb.startswith(f"{subjects.ANY}."):
            read = who.verb.removeprefix(f"{subjects.ANY}.")  # a read any controller may answer
            who = who._replace(verb=read) if read in subjects.READS else None
        route = self.routes.get(who.kind, {}).get(who.verb) if who is not None else None
        if who is None or route is None:
            log.warning("api_unknown_subject", subject=subject)
            return error_reply(InclError(f"unknown subject {subject}"))
        decoder, handler = route
        try:
            req = decoder.decode(data)
            callers.check(who, req)
            if isinstance(handler, ByCaller):
                return encode(await handler.serve(req, self._principals.get(who.name)))
            return encode(await handler(req))
        except NotAllowed as exc:
            log.warning("api_refused", subject=subject, error=str(exc))
            return error_reply(exc)
        except InclError as exc:
            if exc.code in ("decode_error", "version_mismatch"):
                log.warning("message_dropped", subject=subject, error=str(exc))
            return error_reply(exc)
        except Exception as exc:  # a bug in one handler must not stop the API
            log.exception("api_handler_failed", subject=subject)
            return error_reply(InclError(f"internal error: {type(exc).__name__}"))

    def _with_team(self, spec: JobSpec, who: Principal) -> JobSpec:
        """The spec with the team the job belongs to (`policy.team_for`): fixed at submit, it names the job's
        output subjects, and so who may read them."""
        gpus = spec.resources.gpus * spec.resources.nodes
        quota_team = quota.resolve(self._jobs.quotas, user=who.name, gpus=gpus).team if spec.team is None else None
        teams = self._jobs.quotas.teams
        team = policy.team_for(spec, who, quota_team, lambda t: not teams or t in teams)
        return spec if team == spec.team else msgspec.structs.replace(spec, team=team)

    async def submit(self, req: SubmitRequest, who: Principal) -> SubmitReply:
        if req.spec.hpo is not None:
            raise SpecInvalid("a spec with hpo: is a study: submit it as one (incl submit does)", field="hpo")
        spec = self._with_team(check_spec(req.spec), who)
        job = await self._jobs.submit(spec, req.user, req.code, key=req.meta.idempotency_key)
        return SubmitReply(job=self._jobs.view(job))

    async def list_jobs(self, req: ListJobsRequest, who: Principal) -> ListJobsReply:
        """Oldest first, in pages, of the jobs the caller may see. Asked for states of jobs not over only (a
        poller's "what is still running"), it reads the jobs not over, not every record the cluster kept; asked for
        a study's trials, the records held (every trial is); else every record, those memory let go read from the
        bucket (`incl.controller.joblisting`)."""
        live_only = bool(req.states) and not TERMINAL.intersection(req.states or ())

        def keep(j: Job) -> bool:
            return ((not req.states or j.state in req.states) and (req.user is None or j.user == req.user)
                    and (req.study is None or (j.trial is not None and j.trial.study_id == req.study))
                    and policy.may_read(who, j.user, j.spec.team))

        if live_only or req.study is not None:  # every job not over, and every trial, is held in memory
            held = self._jobs.live() if live_only else self._jobs.records
            chosen, cursor = page([j for j in held if keep(j)], job_key, req.after, req.limit, self._page_bytes)
        else:
            chosen, cursor = await list_page(self._jobs.records, keep, req.after, req.limit, self._page_bytes,
                                             self._read_timeout)
        views = [self._jobs.view(j) for j in chosen]
        util = {j.id: self._watch.util[j.id] for j in views if j.id in self._watch.util}
        return ListJobsReply(jobs=views, gpu_util=util, next=cursor)

    async def get_job(self, req: GetJobRequest, who: Principal) -> GetJobReply:
        job = self._jobs.view(await self._jobs.records.need(req.job_id, "job"))
        policy.check_read(who, "job", job.id, job.user, job.spec.team)
        expired = await logs_expired(self._bus, job) if req.why_no_logs else None
        return GetJobReply(job=job, gpu_util=self._watch.util.get(job.id),
                           gpu_idle_since=self._watch.monitor.idle_since(job.id), logs_expired=expired)

    async def quota(self, req: QuotaRequest) -> QuotaReply:
        held = quota.usage(quota.claim_of(self._jobs.quotas, j) for j in self._jobs.on_agent())
        return QuotaReply(lines=quota.report(self._jobs.quotas, held))

    async def cancel(self, req: CancelRequest, who: Principal) -> CancelReply:
        job = await self._jobs.records.need(req.job_id, "job")
        policy.check_change(who, "job", job.id, job.user, job.spec.team)
        return CancelReply(job=await self._jobs.cancel(req.job_id))

    async def list_agents(self, req: ListAgentsRequest) -> ListAgentsReply:
        views, cursor = page(self._agents.views(), lambda v: v.record.info.agent_id, req.after, req.limit,
                             self._page_bytes)
        return ListAgentsReply(agents=views, next=cursor)

    async def heartbeat(self, req: HeartbeatRequest) -> Reply:
        return await self._agents.heartbeat(req)

    async def dead_letters(self, req: ListDeadLettersRequest, who: Principal) -> ListDeadLettersReply:
        policy.check_admin(who, "reading dead letters (they hold messages as sent)")
        return await deadletters.newest(self._bus, req.limit)

    async def assignment(self, req: AssignmentRequest) -> AssignmentReply:
        job = self._jobs.records.get(req.job_id)
        cur = job.current if job else None
        node = gang.node_of(job, req.agent_id) if job is not None else None
        if cur is not None and cur.nodes:  # a rank of a multi-node attempt: that rank has not started yet
            current = (cur.number == req.attempt and node is not None and node.state is JobState.ASSIGNED
                       and cur.stopping is None)
        else:
            current = (job is not None and cur is not None and job.state is JobState.ASSIGNED
                       and (cur.number, cur.agent_id) == (req.attempt, req.agent_id))
        return AssignmentReply(current=current, cancel_requested=bool(job and job.cancel_requested))

    # --- studies ------------------------------------------------------------------------------------------

    async def submit_study(self, req: SubmitStudyRequest, who: Principal) -> SubmitStudyReply:
        spec = self._with_team(check_spec(req.spec), who)
        if spec.hpo is None:
            raise SpecInvalid("a study needs an hpo: section (submit a plain job instead)", field="hpo")
        study = await self._studies.submit(spec, req.user, req.code, key=req.meta.idempotency_key)
        return SubmitStudyReply(study=self._studies.view(study))

    async def list_studies(self, req: ListStudiesRequest, who: Principal) -> ListStudiesReply:
        studies, cursor = await self._studies.list(req.user, req.after, req.limit, self._page_bytes,
                                                   lambda s: policy.may_read(who, s.user, s.spec.team))
        return ListStudiesReply(studies=studies, next=cursor)

    async def get_study(self, req: GetStudyRequest, who: Principal) -> GetStudyReply:
        study = self._studies.records.require(req.study_id, "study")
        policy.check_read(who, "study", study.id, study.user, study.spec.team)
        return await self._studies.get(req.study_id, req.brief)

    async def stop_study(self, req: StopStudyRequest, who: Principal) -> StopStudyReply:
        study = self._studies.records.require(req.study_id, "study")
        policy.check_change(who, "study", study.id, study.user, study.spec.team)
        return StopStudyReply(study=self._studies.view(await self._studies.stop(req.study_id, req.cancel)))

    # --- the model registry -------------------------------------------------------------------------------

    async def register_model(self, req: RegisterModelRequest, who: Principal) -> RegisterModelReply:
        job = await self._jobs.records.need(req.job_id, "job")  # a version is made of the job's outputs: read them
        policy.check_read(who, "job", job.id, job.user, job.spec.team)
        return RegisterModelReply(version=await self._models.register(req, who.name))

    async def list_models(self, req: ListModelsRequest) -> ListModelsReply:
        return ListModelsReply(models=await self._models.list())

    async def list_versions(self, req: ListVersionsRequest) -> ListVersionsReply:
        return ListVersionsReply(versions=await self._models.versions(req.name, req.job_id))

    async def get_model(self, req: GetModelRequest) -> GetModelReply:
        return await self._models.get(ModelRef(req.name, req.version, req.alias))

    async def alias_model(self, req: AliasModelRequest, who: Principal) -> AliasModelReply:
        return await self._models.alias(req.name, req.version, req.alias, who.name)

    async def users_changed(self, req: UserChangedRequest, who: Principal) -> UserChangedReply:
        """`incl admin user add|remove|rotate` reports a change it made to the registry: answering is all (`answer`
        records it, with who reported it). Only a cluster admin changes users, so only one may report it."""
        policy.check_admin(who, "changing users")
        return UserChangedReply()

    # --- share links ---------------------------------------------------------------------------------------

    def _shares_on(self) -> Shares:
        if self._shares is None:
            raise InclError("this controller serves no share links")
        return self._shares

    async def create_share(self, req: CreateShareRequest, who: Principal) -> CreateShareReply:
        """A link to a job's output (the caller must be allowed to read the job) or to a model version."""
        if req.target.job_id is not None:
            job = await self._jobs.records.need(req.target.job_id, "job")
            policy.check_read(who, "job", job.id, job.user, job.spec.team)
        return await self._shares_on().create(req, who.name)

    async def list_shares(self, req: ListSharesRequest, who: Principal) -> ListSharesReply:
        if req.everyone:
            policy.check_admin(who, "listing every user's share links")
        return ListSharesReply(shares=await self._shares_on().list(None if req.everyone else who.name))

    async def revoke_share(self, req: RevokeShareRequest, who: Principal) -> RevokeShareReply:
        return RevokeShareReply(share=await self._shares_on().revoke(req.share_id, who.name))

    async def resolve_share(self, req: ResolveShareRequest) -> ResolveShareReply:
        return await self._shares_on().resolve(req.token)

    async def ping(self, req: PingRequest) -> PingReply:
        return PingReply(controller_id=self._id, store_url=self._store_url)

    async def status(self, req: StatusRequest) -> StatusReply:
        """The system at a glance (`incl status`): streams, agents and jobs by state, the newest dead letters."""
        letters = await deadletters.newest(self._bus, req.errors)
        lease = await self._bus.bucket(subjects.LEADER_BUCKET)
        holder = await leader.holder(lease)
        leads = holder.controller_id if holder is not None else self._id if self._leading() else None
        members = [ControllerMember(controller_id=m.controller_id, started_at=m.started,
                                    leader=m.controller_id == leads) for m in await leader.members(lease)]
        if self._id not in {m.controller_id for m in members}:  # not announced yet: it answers, so it runs
            members.insert(0, ControllerMember(controller_id=self._id, started_at=self._started,
                                               leader=self._id == leads))
        return StatusReply(controller_id=self._id, started_at=self._started, controllers=members,
                           jobs=self._jobs.tally.by_state(),
                           agents=dict(Counter(r.state.value for r in self._agents.records)),
                           streams=await health.streams(self._bus), dead_letters=letters.total,
                           errors=letters.letters[:max(req.errors, 0)])
