"""The client library: request-reply to the controller, and reads of the log and metric streams it owns."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from incl.auth.keys import Creds, read_creds
from incl.bus import health
from incl.bus.connection import AuthFailed, Bus, TlsFailed, connect, masked
from incl.bus.follow import PULL_BATCH
from incl.bus.output import follow_attempt
from incl.proto import subjects
from incl.proto.audit import AuditEntry, AuditReply, AuditRequest, UserChangedReply, UserChangedRequest
from incl.proto.codec import Decoder
from incl.proto.errors import DecodeError, InclError, NoResponders, Unavailable
from incl.proto.messages import (
    TERMINAL,
    AgentView,
    Attempt,
    CancelReply,
    CancelRequest,
    Envelope,
    GetJobReply,
    GetJobRequest,
    Job,
    JobState,
    ListAgentsReply,
    ListAgentsRequest,
    ListDeadLettersReply,
    ListDeadLettersRequest,
    ListJobsReply,
    ListJobsRequest,
    LogBatch,
    MetricBatch,
    MetricSummary,
    Origin,
    PingReply,
    PingRequest,
    QuotaLine,
    QuotaReply,
    QuotaRequest,
    Reply,
    Request,
    SubmitReply,
    SubmitRequest,
    TreeRef,
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
    ModelSummary,
    ModelVersion,
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
    Share,
    ShareTarget,
)
from incl.proto.spec import JobSpec
from incl.proto.status import NatsServer, StatusReply, StatusRequest
from incl.proto.studies import (
    GetStudyReply,
    GetStudyRequest,
    ListStudiesReply,
    ListStudiesRequest,
    StopStudyReply,
    StopStudyRequest,
    Study,
    StudySummary,
    SubmitStudyReply,
    SubmitStudyRequest,
)

R = TypeVar("R", bound=Reply)

DEFAULT_URL = "nats://127.0.0.1:4222"


def incl_home() -> Path:
    return Path(os.environ.get("INCL_HOME", Path.home() / ".incl"))


def resolve_url(explicit: str | None) -> str:
    """--nats, then $INCL_NATS_URL, then the stack `incl up` started, then the default."""
    if explicit:
        return explicit
    if env := os.environ.get("INCL_NATS_URL"):
        return env
    state = incl_home() / "stack.json"
    if state.exists():
        try:
            return str(json.loads(state.read_text())["nats_url"])
        except (ValueError, KeyError):
            pass
    return DEFAULT_URL


def current_user() -> str:
    return os.environ.get("INCL_USER") or getpass.getuser()


def login_file() -> Path:
    """Where `incl login --creds FILE` keeps the credentials the CLI uses."""
    return incl_home() / "creds" / "login.nk"


def resolve_creds(explicit: Path | None = None) -> Path | None:
    """The credential file to connect with: `explicit`, then $INCL_CREDS, then the one `incl login` stored, then
    the local admin's that `incl up` made; None when there is none (a server without authentication)."""
    if explicit is not None:
        return explicit
    if env := os.environ.get("INCL_CREDS"):
        return Path(env)
    for path in (login_file(), incl_home() / "creds" / f"user-{current_user()}.nk"):
        if path.exists():
            return path
    return None


def login_ca_file() -> Path:
    """Where `incl login --ca FILE` keeps the CA certificate the CLI verifies the server's against."""
    return incl_home() / "creds" / "ca.pem"


def resolve_ca(explicit: Path | None = None) -> Path | None:
    """The CA certificate to verify a TLS server against: `explicit`, then $INCL_TLS_CA, then the one `incl login
    --ca` stored, then the one of the stack `incl up --tls` started; None: the system's CAs (a server without TLS
    needs none)."""
    if explicit is not None:
        return explicit
    if env := os.environ.get("INCL_TLS_CA"):
        return Path(env)
    if login_ca_file().exists():
        return login_ca_file()
    state = incl_home() / "stack.json"
    if state.exists():
        try:
            local = json.loads(state.read_text()).get("tls_ca")
        except ValueError:
            local = None
        if local:
            return Path(local)
    return None


class Client:
    """INCL's client library: what the CLI, the benchmarks, the tests (and the web UI and HPO service to come)
    use to talk to a cluster. `async with Client(url) as client: await client.jobs()`."""

    def __init__(self, url: str, timeout: float = 10.0, name: str = "incl-cli", *, creds: Path | Creds | None = None,
                 user: str | None = None, tls_ca: Path | None = None, hedge_after: float | None = 0.25) -> None:
        """`creds`: the user's credential file (default: `resolve_creds`); `tls_ca`: the CA certificate a TLS
        server's is verified against (default: `resolve_ca`); `user`: whom this client speaks for
        (default: the user the credentials name, else `current_user`). On a server with authentication the two
        must agree: the server lets these credentials ask only under their own name. `hedge_after`: a read the
        leader has not answered within this many seconds (or that nothing serves: no leader now) is asked of any
        controller too, a standby included, whose copy may lag the leader's by milliseconds; None: reads wait for
        the leader (every answer reflects every write acknowledged before it)."""
        self.url = url
        self.timeout = timeout
        self.hedge_after = hedge_after
        self._name = name
        self.creds = creds if isinstance(creds, Creds) else resolve_creds(creds)  # Creds: held, not in a file
        self.tls_ca = resolve_ca(tls_ca)
        named = None
        if isinstance(self.creds, Creds):
            named = self.creds.name
        elif self.creds is not None:
            try:
                named = read_creds(self.creds).name
            except (OSError, ValueError) as exc:
                raise InclError(f"cannot use the credentials in {self.creds}: {exc}") from None
        self.user = user or named or current_user()
        try:
            self._inbox = subjects.user_inbox(self.user)
        except ValueError as exc:
            raise InclError(f"{exc}; set INCL_USER to a name without them") from None
        self._bus: Bus | None = None
        self._origin: Origin | None = None

    async def __aenter__(self) -> Client:
        try:
            self._bus = await connect(self.url, self._name, connect_timeout=2, reconnect_wait=0.1,
                                      request_timeout=self.timeout, max_reconnect_attempts=0, quiet=True,
                                      creds=self.creds, inbox_prefix=self._inbox, tls_ca=self.tls_ca)
        except (AuthFailed, TlsFailed):
            raise
        except Exception:  # noqa: BLE001 - any failure to connect means the same thing to the user
            raise Unavailable(f"cannot reach NATS at {masked(self.url)}; start the embedded stack with `incl up` "
                              "(or pass --nats URL)") from None
        # Where requests come from, for the audit trail: self-reported (NATS does not tell the controller).
        self._origin = Origin(host=socket.gethostname(), address=self._bus.client_ip)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._bus is not None:
            await self._bus.close()

    @property
    def bus(self) -> Bus:
        """The connection itself, for what the typed calls do not cover (tests that speak the raw protocol)."""
        assert self._bus is not None
        return self._bus

    def _meta(self, idempotency_key: str | None = None) -> Envelope:
        return Envelope.new(f"cli:{self.user}", idempotency_key=idempotency_key, origin=self._origin)

    async def _call(self, verb: str, req: Request, reply_type: type[R], as_user: str | None = None) -> R:
        """Ask the controller `verb`, under this client's user (or `as_user`: a submit names its user)."""
        user = as_user or self.user
        subject = subjects.user_api(user, verb)
        try:
            if verb in subjects.READS and self.hedge_after is not None:
                return await self._hedged(subject, subjects.user_api_any(user, verb), req, reply_type)
            return await self.bus.request(subject, req, reply_type, self.timeout)
        except Unavailable as exc:
            raise type(exc)(f"no controller is answering at {masked(self.url)}; start one with `incl up`") from None

    async def _hedged(self, leader: str, anyone: str, req: Request, reply_type: type[R]) -> R:
        """Ask the leader; once it has not answered within `hedge_after`, or nothing serves its subject, ask any
        controller as well, and take the first answer (an error answered is an answer; silence is not). An answer
        of any controller's that is a bare internal error (what a controller from before `any.` answers) is taken
        only if the leader never answers."""
        first = asyncio.ensure_future(self.bus.request(leader, req, reply_type, self.timeout))
        asked = [first]
        try:
            done, _ = await asyncio.wait(asked, timeout=self.hedge_after)
            if done and not isinstance(first.exception(), Unavailable):
                return first.result()
            second = asyncio.ensure_future(self.bus.request(anyone, req, reply_type, self.timeout))
            asked.append(second)
            pending = {a for a in asked if not a.done()}
            while pending:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                if first.done() and not isinstance(first.exception(), Unavailable):
                    return first.result()
                if second.done() and type(error := second.exception()) is not InclError \
                        and not isinstance(error, Unavailable):
                    return second.result()
            return second.result()  # the leader never answered: any controller's error, or its silence
        finally:
            for request in asked:
                request.cancel()

    async def ping(self) -> PingReply:
        return await self._call(subjects.PING, PingRequest(meta=self._meta()), PingReply)

    def servers(self) -> list[NatsServer]:
        """The NATS servers this connection knows: the one it is on first (`incl status`)."""
        return health.servers(self.bus)

    async def status(self, errors: int = 5) -> StatusReply:
        """The controller's view of the system (`incl status`), with the newest `errors` dead letters."""
        return await self._call(subjects.STATUS, StatusRequest(meta=self._meta(), errors=errors), StatusReply)

    async def submit(self, spec: JobSpec, user: str | None = None, code: TreeRef | None = None, *,
                     key: str | None = None, attempts: int = 4) -> Job:
        """Submit once, as `user` (default: this client's): the request carries an idempotency key (one per call,
        unless given), and a submit whose answer is lost (the controller restarting) is retried with the same key,
        so it creates one job."""
        user = user or self.user
        meta = self._meta(idempotency_key=key or uuid.uuid4().hex)
        req = SubmitRequest(meta=meta, spec=spec, user=user, code=code)
        return (await self._retried(subjects.SUBMIT, req, SubmitReply, attempts, user)).job

    async def submit_study(self, spec: JobSpec, user: str | None = None, code: TreeRef | None = None, *,
                           key: str | None = None, attempts: int = 4) -> Study:
        """Submit a study (a spec with `hpo:`) once, as `user` (default: this client's), retried with one
        idempotency key as `submit` is."""
        user = user or self.user
        meta = self._meta(idempotency_key=key or uuid.uuid4().hex)
        req = SubmitStudyRequest(meta=meta, spec=spec, user=user, code=code)
        return (await self._retried(subjects.SUBMIT_STUDY, req, SubmitStudyReply, attempts, user)).study

    async def _retried(self, verb: str, req: Request, reply_type: type[R], attempts: int, as_user: str) -> R:
        """A request whose answer may be lost (the controller restarting), sent again as it is, key and all, up to
        `attempts` times; while nothing serves it (no leader: a standby takes over within seconds), sent again
        until `timeout` has passed as well."""
        delay, tries = 0.5, 0
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return await self._call(verb, req, reply_type, as_user)
            except Unavailable as exc:
                tries += 1
                left = deadline - time.monotonic()
                if tries >= attempts and not (isinstance(exc, NoResponders) and left > 0):
                    raise
                await asyncio.sleep(delay if tries < attempts else min(delay, left))
                delay *= 2

    async def store_url(self) -> str:
        url = (await self.ping()).store_url
        if not url:
            raise InclError("the controller names no artifact store (its `store_url` is empty)")
        return url

    async def jobs(self, states: list[JobState] | None = None, user: str | None = None,
                   study: str | None = None) -> list[Job]:
        return (await self.jobs_reply(states, user, study)).jobs

    async def jobs_reply(self, states: list[JobState] | None = None, user: str | None = None,
                         study: str | None = None) -> ListJobsReply:
        """Every matching job (with `study`: only that study's trials), oldest first, read page by page."""
        jobs: list[Job] = []
        util: dict[str, float] = {}
        after: str | None = None
        while True:
            req = ListJobsRequest(meta=self._meta(), states=states, user=user, study=study, after=after)
            reply: ListJobsReply = await self._call(subjects.LIST_JOBS, req, ListJobsReply)
            jobs += reply.jobs
            util.update(reply.gpu_util)
            if reply.next is None:
                return ListJobsReply(jobs=jobs, gpu_util=util)
            after = reply.next

    async def job(self, job_id: str) -> Job:
        return (await self.job_reply(job_id)).job

    async def job_reply(self, job_id: str) -> GetJobReply:
        return await self._call(subjects.GET_JOB, GetJobRequest(meta=self._meta(), job_id=job_id), GetJobReply)

    async def quota(self) -> list[QuotaLine]:
        return (await self._call(subjects.QUOTA, QuotaRequest(meta=self._meta()), QuotaReply)).lines

    async def cancel(self, job_id: str) -> Job:
        return (await self._call(subjects.CANCEL, CancelRequest(meta=self._meta(), job_id=job_id),
                                 CancelReply)).job

    async def agents(self) -> list[AgentView]:
        """Every agent, read page by page."""
        agents: list[AgentView] = []
        after: str | None = None
        while True:
            reply: ListAgentsReply = await self._call(subjects.LIST_AGENTS,
                                                      ListAgentsRequest(meta=self._meta(), after=after),
                                                      ListAgentsReply)
            agents += reply.agents
            if reply.next is None:
                return agents
            after = reply.next

    async def studies(self, user: str | None = None) -> list[StudySummary]:
        """Every study (with `user`: that user's), read page by page."""
        studies: list[StudySummary] = []
        after: str | None = None
        while True:
            reply: ListStudiesReply = await self._call(subjects.LIST_STUDIES,
                                                       ListStudiesRequest(meta=self._meta(), user=user, after=after),
                                                       ListStudiesReply)
            studies += reply.studies
            if reply.next is None:
                return studies
            after = reply.next

    async def study(self, study_id: str) -> GetStudyReply:
        """A study with its trials, best-so-far curve and parameter importances."""
        return await self._call(subjects.GET_STUDY, GetStudyRequest(meta=self._meta(), study_id=study_id),
                                GetStudyReply)

    async def stop_study(self, study_id: str, cancel: bool = False) -> Study:
        """No new trials; with `cancel`, the running ones are cancelled too."""
        req = StopStudyRequest(meta=self._meta(), study_id=study_id, cancel=cancel)
        return (await self._call(subjects.STOP_STUDY, req, StopStudyReply)).study

    async def dead_letters(self, limit: int = 20) -> ListDeadLettersReply:
        return await self._call(subjects.DEAD_LETTERS, ListDeadLettersRequest(meta=self._meta(), limit=limit),
                                ListDeadLettersReply)

    # --- the model registry -------------------------------------------------------------------------------

    async def register_model(self, name: str, job_id: str, paths: list[str] | None = None, alias: str | None = None,
                             note: str | None = None) -> ModelVersion:
        """A new version of model `name` made of the job's outputs (or the files and folders `paths` name)."""
        req = RegisterModelRequest(meta=self._meta(), name=name, job_id=job_id, paths=paths or [], alias=alias,
                                   note=note)
        return (await self._call(subjects.REGISTER_MODEL, req, RegisterModelReply)).version

    async def models(self) -> list[ModelSummary]:
        return (await self._call(subjects.LIST_MODELS, ListModelsRequest(meta=self._meta()), ListModelsReply)).models

    async def model_versions(self, name: str | None = None, job_id: str | None = None) -> list[ModelVersion]:
        """Every version of model `name` (or of every model), only those made from `job_id` if given."""
        req = ListVersionsRequest(meta=self._meta(), name=name, job_id=job_id)
        return (await self._call(subjects.LIST_VERSIONS, req, ListVersionsReply)).versions

    async def model(self, ref: ModelRef) -> GetModelReply:
        """The version `ref` names (its latest without a version or alias), with the model's versions and aliases."""
        req = GetModelRequest(meta=self._meta(), name=ref.name, version=ref.version, alias=ref.alias)
        return await self._call(subjects.GET_MODEL, req, GetModelReply)

    async def alias_model(self, name: str, version: int, alias: str) -> AliasModelReply:
        req = AliasModelRequest(meta=self._meta(), name=name, version=version, alias=alias)
        return await self._call(subjects.ALIAS_MODEL, req, AliasModelReply)

    # --- the audit trail ---------------------------------------------------------------------------------

    async def audit(self, user: str | None = None, since: float | None = None, verb: str | None = None,
                    limit: int = 50) -> list[AuditEntry]:
        """The newest `limit` entries of the audit trail first (by `user`, of `verb`, since unix time `since`), read
        page by page."""
        entries: list[AuditEntry] = []
        cursor: int | None = None
        while len(entries) < limit:
            req = AuditRequest(meta=self._meta(), user=user, since=since, verb=verb, limit=limit - len(entries),
                               cursor=cursor)
            reply: AuditReply = await self._call(subjects.AUDIT, req, AuditReply)
            entries += reply.entries
            if reply.next is None:
                break
            cursor = reply.next
        return entries

    async def users_changed(self, verb: str, name: str, teams: list[str] | None = None, admin: bool = False) -> None:
        """Tell the controller of a change `incl admin user` made to the registry (`verb`: subjects.USERS_ADDED,
        USERS_REMOVED or USERS_ROTATED), so that the audit trail records it."""
        req = UserChangedRequest(meta=self._meta(), name=name, teams=teams or [], admin=admin)
        await self._call(verb, req, UserChangedReply)

    # --- share links ---------------------------------------------------------------------------------------

    async def create_share(self, target: ShareTarget, expires_in: float | None = None) -> CreateShareReply:
        """A link to `target` (its token: the link is <web url>/s/<token>); `expires_in` seconds (None: 7 days)."""
        req = CreateShareRequest(meta=self._meta(), target=target, expires_in=expires_in)
        return await self._call(subjects.CREATE_SHARE, req, CreateShareReply)

    async def shares(self, everyone: bool = False) -> list[Share]:
        """The caller's share links; `everyone`: every user's (cluster admins only)."""
        req = ListSharesRequest(meta=self._meta(), everyone=everyone)
        return (await self._call(subjects.LIST_SHARES, req, ListSharesReply)).shares

    async def revoke_share(self, share_id: str) -> Share:
        req = RevokeShareRequest(meta=self._meta(), share_id=share_id)
        return (await self._call(subjects.REVOKE_SHARE, req, RevokeShareReply)).share

    async def resolve_share(self, token: str) -> ResolveShareReply:
        """What a link's token opens (NotFound for a token the controller did not sign)."""
        return await self._call(subjects.RESOLVE_SHARE, ResolveShareRequest(meta=self._meta(), token=token),
                                ResolveShareReply)

    # --- streams ------------------------------------------------------------------------------------------

    async def _read(self, stream: str, job: Job, attempt: Attempt, type_: Any,
                    over: Callable[[], Awaitable[bool]] | None, poll: float = 0.25) -> AsyncIterator[Any]:
        """Every batch of `job`'s `attempt` in `stream`, in order, up to the end of the stream (only those its
        assigned agents wrote: `incl.bus.output`); with `over`, on until `over()` says the writing is over and all
        is read (asked each time the reader has caught up and waited `poll`)."""
        async for _, value in self._read_at(stream, job, attempt, type_, over, poll):
            if value is not None:
                yield value

    async def _read_at(self, stream: str, job: Job, attempt: Attempt, type_: Any,
                       over: Callable[[], Awaitable[bool]] | None, poll: float = 0.25, from_seq: int = 1,
                       batch: int = PULL_BATCH) -> AsyncIterator[tuple[int, Any]]:
        """`_read` from stream sequence `from_seq` on, each message with its sequence (its value None when it
        cannot be decoded: skipped, but read)."""
        decoder: Decoder[Any] = Decoder(type_)
        caught_up_at_end = False
        async with contextlib.aclosing(follow_attempt(self.bus, stream, job, attempt, poll, from_seq=from_seq,
                                                      batch=batch)) as items:
            async for item in items:
                if item is not None:
                    try:
                        value = decoder.decode(item.data)
                    except DecodeError:
                        value = None
                    yield item.seq, value
                    if item.pending > 0:
                        continue
                # Caught up with the stream: done, unless the writing may go on.
                if over is None:
                    return
                if item is None:
                    if caught_up_at_end:
                        return
                    caught_up_at_end = await over()

    async def _output(self, job: Job | str, stream: str, type_: Any, follow: bool,
                      poll: float) -> AsyncGenerator[Any, None]:
        """A job's batches on `stream`, attempt after attempt: each attempt writes to its own subjects, named by the
        job's team and owner, the attempt's output key and each writing agent (`subjects.logs`), which the record
        says (asking for it is where a caller who may not read the job is told so). With `follow`, the last attempt
        is followed until the job has ended or a later attempt began, and so on until the job has ended and all is
        read."""
        record = job if isinstance(job, Job) else await self.job(job)
        n = 0  # attempts read to their end
        while True:
            if n < len(record.attempts):
                over = None
                if follow and n == len(record.attempts) - 1 and record.state not in TERMINAL:
                    async def over(n: int = n) -> bool:
                        nonlocal record
                        record = await self.job(record.id)
                        return record.state in TERMINAL or len(record.attempts) > n + 1
                async for batch in self._read(stream, record, record.attempts[n], type_, over, poll):
                    yield batch
                n += 1
                continue
            if not follow or record.state in TERMINAL:
                return
            await asyncio.sleep(poll)  # no attempt yet (queued), or the next one not begun
            record = await self.job(record.id)

    async def log_batches(self, job: Job | str, follow: bool, poll: float = 0.25) -> AsyncGenerator[LogBatch, None]:
        """The job's log batches from the first; with `follow`, until the job has ended and all is read (waking
        every `poll` seconds with nothing new). `job`: its record, or its id."""
        async for batch in self._output(job, subjects.LOGS_STREAM, LogBatch, follow, poll):
            yield batch

    async def expired(self, job_id: str) -> str | None:
        """Why the job has nothing left in the logs stream, when its lines expired (said with the cluster's
        retention); None when it wrote none. The controller tells: readers may not inspect the stream itself."""
        return (await self._call(subjects.GET_JOB, GetJobRequest(meta=self._meta(), job_id=job_id, why_no_logs=True),
                                 GetJobReply)).logs_expired

    async def metric_batches(self, job: Job | str, follow: bool = False,
                             poll: float = 0.25) -> AsyncGenerator[MetricBatch, None]:
        """The job's metric batches, as `log_batches` reads its log."""
        async for batch in self._output(job, subjects.METRICS_STREAM, MetricBatch, follow, poll):
            yield batch

    async def metric_summary(self, job: Job, attempt: int) -> MetricSummary | None:
        """The summary of the job's attempt `attempt` (an index into `job.attempts`) that its agent wrote after its
        last metric batch (agent/metricsummary.py) on its own subject; an empty one for an attempt that wrote no
        metrics; None when the attempt's last message is not a summary: still running, a multi-node or re-adopted
        attempt, or an agent from before summaries."""
        att = job.attempts[attempt]
        if att.nodes:
            return None  # a gang's ranks write no summary (and rank 0's subject holds only its own points)
        data = None
        if not att.agent_subjects:  # from before the agent token: the summary was on the attempt's old subject
            data = await self.bus.last(subjects.METRICS_STREAM,
                                       subjects.legacy_output(subjects.METRICS_STREAM, job, att.output_key))
        if data is None:
            data = await self.bus.last(subjects.METRICS_STREAM, subjects.output(subjects.METRICS_STREAM, job,
                                                                                att.output_key, att.agent_id))
        if data is None:
            return MetricSummary(job_id=job.id, attempt=att.number, batches=0, series=[])
        try:
            return Decoder(MetricSummary).decode(data)
        except DecodeError:
            return None

    async def metric_batches_after(self, job: Job, attempt: int = 0, seq: int = 0, *,
                                   batch: int = PULL_BATCH) -> AsyncGenerator[tuple[int, int, MetricBatch], None]:
        """The job's metric batches now (not following) after stream sequence `seq` of its attempt `attempt` (an
        index into `job.attempts`; 0 and 0: all of them), each with its attempt and sequence: where a reader that
        keeps what it read goes on from next time. `batch`: messages per pull request."""
        for n in range(attempt, len(job.attempts)):
            start = seq + 1 if n == attempt else 1
            async for at, value in self._read_at(subjects.METRICS_STREAM, job, job.attempts[n], MetricBatch, None,
                                                 from_seq=start, batch=batch):
                if value is not None:
                    yield n, at, value
