"""The job service: submit, cancel, dispatch, and the application of agent events and agent loss."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet

import structlog
from msgspec import structs
from structlog.contextvars import bound_contextvars

from incl.auth.sealing import Vault
from incl.bus.connection import Bus
from incl.bus.kv import Bucket, KeyExists
from incl.bus.retry import TRANSIENT, forever
from incl.controller import gang, jobsecrets, quota, state
from incl.controller.config import ControllerConfig
from incl.controller.jobtally import JobTally
from incl.controller.notify import check_channel
from incl.controller.scheduler import could_ever_fit
from incl.controller.store import Records
from incl.proto import limits, subjects
from incl.proto.codec import encode
from incl.proto.errors import SpecInvalid, Unschedulable
from incl.proto.messages import (
    ON_AGENT,
    TERMINAL,
    AgentInfo,
    Assign,
    CancelJob,
    Gang,
    GangStart,
    Job,
    JobExited,
    JobReady,
    JobRunning,
    JobStarting,
    JobState,
    Resources,
    TreeRef,
    TrialRef,
)
from incl.proto.spec import JobSpec
from incl.proto.spec import Resources as Wanted

log = structlog.get_logger()


WEBHOOK_HIDDEN = "<webhook hidden>"
SECRET_HIDDEN = "<secret>"


def new_job_id() -> str:
    return "j-" + secrets.token_hex(4)


def job_env(job: Job) -> dict[str, str]:
    """What the controller tells the job about itself; the agent adds its local paths. A trial of a study also
    gets its study, its number and its parameters typed as JSON (its parameters' own variables are in its env)."""
    attempt = job.current.number if job.current else 1
    env = {
        "INCL_JOB_ID": job.id,
        "INCL_ATTEMPT": str(attempt),
        "INCL_RESUMED": "1" if attempt > 1 else "0",
    }
    if job.trial is not None:
        env |= {"INCL_STUDY_ID": job.trial.study_id, "INCL_TRIAL_NUMBER": str(job.trial.number),
                "INCL_PARAMS": json.dumps(job.trial.params, sort_keys=True)}
    return env


Listener = Callable[[Job | None, Job], None]


def rank_outcome(event: JobExited) -> JobState:
    """How one rank ended, from its agent's report."""
    if event.fenced:
        return JobState.LOST
    if event.preempted:
        return JobState.PREEMPTED
    if event.cancelled:
        return JobState.CANCELLED
    return JobState.SUCCEEDED if event.exit_code == 0 else JobState.FAILED


class JobChanges:
    """Who hears of each job change (before, after), in the order they subscribed: the notifier, the GPU watch.
    Built before the job service and its listeners, so neither needs the other to exist first."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def publish(self, before: Job | None, after: Job) -> None:
        for listener in self._listeners:
            listener(before, after)


class Jobs:
    """`shapes`: every shape a job could ever run on (the submit-time fit check); `wake`: starts a scheduling
    pass; `changes`: told of every job change; `vault`: locks secret values in the records (by default from the
    key file the config names); `agent_key`: an agent's public key, to seal an assignment's secrets to."""

    def __init__(self, cfg: ControllerConfig, records: Records[Job], bus: Bus,
                 shapes: Callable[[], list[Resources]], wake: asyncio.Event, changes: JobChanges,
                 quotas: quota.QuotaConfig | None = None, submits: Bucket | None = None,
                 refusal: Callable[[Wanted], str | None] = lambda _: None, vault: Vault | None = None,
                 agent_key: Callable[[str], bytes | None] = lambda _: None) -> None:
        self._cfg = cfg
        self._vault = vault or Vault.load(cfg.secrets_key_path())
        self.vault = self._vault  # studies lock their specs' secrets with it too
        self._agent_key = agent_key
        self._refusal = refusal  # the provider's: why a job could never be launched (resources.efa without EFA)
        self._submits = submits  # idempotency keys of submits -> job ids
        self.records = records
        self.quotas = quotas or quota.QuotaConfig()
        self._changes = changes
        self._bus = bus
        self._shapes = shapes
        self._wake = wake
        self.waiting: dict[str, str] = {}  # queued job id -> why it waits (from the last scheduling pass)
        self._resent: dict[tuple[str, int], float] = {}
        self._resend_checked = 0.0  # when resend_stale_assignments last looked
        self._by_agent: dict[str, set[str]] = {}  # agent id -> ids of the jobs on it (ON_AGENT states)
        self._by_study: dict[str, dict[int, str]] = {}  # study id -> trial number -> the job that runs it
        # Ids of the jobs not over (a superset: one seen ending leaves at once, any other at the next `live()`). A
        # scheduling pass runs at every submit and event: over every record, its cost grew with every job ever run.
        self._live: dict[str, None] = {}
        for job in records:
            self._index(None, job)
        tally = records.tally
        if not isinstance(tally, JobTally):  # records made without one: a tally of those held from now on
            tally = JobTally()
            for job in records:
                tally.seen(None, job)
            records.tally = tally
        self.tally = tally  # every job record's state, and each agent's last ended attempt, held or not

    @property
    def ended_on(self) -> dict[str, float]:
        """Per agent, when its last attempt ended (of every job record read, not only those still held)."""
        return self.tally.ended_on

    def _index(self, before: Job | None, after: Job) -> None:
        if after.state not in TERMINAL:
            self._live[after.id] = None
        else:  # at once: a standby runs no `live()` to prune it, and its index would keep every id it ever saw
            self._live.pop(after.id, None)
        if before is not None and before.state in ON_AGENT:
            for agent_id in gang.agents_of(before):
                self._by_agent.get(agent_id, set()).discard(before.id)
        if after.state in ON_AGENT:
            for agent_id in gang.agents_of(after):
                self._by_agent.setdefault(agent_id, set()).add(after.id)
        if after.trial is not None:
            self._by_study.setdefault(after.trial.study_id, {})[after.trial.number] = after.id

    def follow(self, before: Job | None, after: Job | None) -> None:
        """A change another controller made (a standby's records follow the leader's writes): indexed, so the
        queries below see it; nobody is told (a standby acts on nothing)."""
        if after is not None:
            self._index(before, after)

    def kick(self) -> None:
        """Ask for a scheduling pass now (something was submitted, ended or freed)."""
        self._wake.set()

    # --- queries ------------------------------------------------------------------------------------------

    def live(self) -> list[Job]:
        """The jobs not over, in the order they were first seen; O(live jobs), not O(every record)."""
        jobs = []
        for job_id in list(self._live):
            job = self.records.get(job_id)
            if job is None or job.state in TERMINAL:
                del self._live[job_id]
            else:
                jobs.append(job)
        return jobs

    def queued(self) -> list[Job]:
        return [j for j in self.live() if j.state is JobState.QUEUED]

    def on_agent(self, agent_id: str | None = None) -> list[Job]:
        if agent_id is None:
            return [j for j in self.live() if j.state in ON_AGENT]
        jobs = (self.records.get(job_id) for job_id in self._by_agent.get(agent_id, ()))
        return [j for j in jobs if j is not None and j.state in ON_AGENT and agent_id in gang.agents_of(j)]

    def of_study(self, study_id: str) -> dict[int, Job]:
        """The jobs of a study's trials, by trial number."""
        jobs = {n: self.records.get(job_id) for n, job_id in self._by_study.get(study_id, {}).items()}
        return {n: j for n, j in jobs.items() if j is not None}

    def view(self, job: Job) -> Job:
        """The job as the CLI sees it: a queued job carries the scheduler's reason for waiting, and a
        webhook URL in its `notify:` (a secret: whoever has it can post) is masked."""
        if job.state is JobState.QUEUED and job.id in self.waiting:
            job = structs.replace(job, reason=self.waiting[job.id])
        masked = self.masked(job.spec)
        if masked is job.spec and job.locked_secrets is None:
            return job
        return structs.replace(job, spec=masked, locked_secrets=None)  # ciphertext is of no use to a reader

    @staticmethod
    def masked(spec: JobSpec) -> JobSpec:
        """The spec with its secrets' values and its webhook URL hidden (the same object when it has neither)."""
        notify = spec.notify
        if notify is not None and notify.webhook is not None:
            spec = structs.replace(spec, notify=structs.replace(notify, webhook=WEBHOOK_HIDDEN))
        if spec.secrets:
            spec = structs.replace(spec, secrets=dict.fromkeys(spec.secrets, SECRET_HIDDEN))
        return spec

    # --- commands from users ------------------------------------------------------------------------------

    async def _update(self, job_id: str, change: Callable[[Job], Job]) -> Job:
        """The one way a job changes: compare-and-set in the store, then tell whoever listens. A record an older
        controller wrote with its secret values in clear is stored locked from its first change on."""
        before = self.records.get(job_id)
        after = await self.records.update(job_id, lambda j: jobsecrets.locked(change(j), self._vault))
        if after is not before:
            self._index(before, after)
            self._changes.publish(before, after)
        return after

    def _admit(self, spec: JobSpec, user: str) -> None:
        """Checks that need the cluster's settings: quotas, priority classes, notify channels. The spec itself
        was checked whole (`proto.spec.check_spec`) when it arrived."""
        claim = quota.resolve(self.quotas, user=user, gpus=spec.resources.gpus * spec.resources.nodes,
                              team=spec.team, priority=spec.priority)
        if (why := quota.refuse_at_submit(self.quotas, claim)) is not None:
            raise Unschedulable(why, field="resources.gpus")
        check_channel(spec.notify, self._cfg.notify)

    def check(self, spec: JobSpec, user: str, code: TreeRef | None) -> None:
        """Whether this cluster could ever run `spec` for `user`: refused now, with the reason, or never."""
        if spec.workdir and code is None:
            raise SpecInvalid("the client uploads the workdir at submit, and this request carries no snapshot of it "
                              "(an old client?)", field="workdir")
        self._check_size(spec)
        self._admit(spec, user)
        shapes = self._shapes()
        if shapes and not could_ever_fit(spec.resources, shapes):
            biggest = max(shapes, key=lambda s: (s.gpus, s.cpus, s.memory))
            raise Unschedulable(
                f"no agent or provider can ever fit this job (largest: {biggest.cpus:g} CPU, "
                f"{biggest.memory / 1e9:.1f} GB memory, {biggest.gpus} GPU)",
                field="resources",
            )
        if spec.resources.efa and (why := self._refusal(spec.resources)) is not None:
            raise SpecInvalid(why, field="resources.efa")

    async def submit(self, spec: JobSpec, user: str, code: TreeRef | None = None, key: str | None = None,
                     trial: TrialRef | None = None) -> Job:
        """A new QUEUED job. A submit retried with the same idempotency `key` (the client's answer was lost)
        returns the job the first one created, however far that one got before a crash."""
        self.check(spec, user, code)
        job_id = await self.claim(user, key, await self._fresh_id()) if key else None
        if job_id is not None and (existing := await self.records.read(job_id)) is not None:
            log.info("submit_repeated", job_id=job_id, user=user)
            return existing
        now = time.time()
        while True:
            job = jobsecrets.locked(Job(id=job_id or self._drawn_id(), spec=spec, user=user, state=JobState.QUEUED,
                                        submitted_at=now, updated_at=now, code=code, trial=trial), self._vault)
            try:
                await self.records.create(job)
                break
            except KeyExists:
                if job_id is None:  # a random id that exists already (an old job's, held or not): draw another
                    continue
                # The same key's first submit created it meanwhile: that is the answer.
                return await self.records.read(job_id) or job
        log.info("job_submitted", job_id=job.id, user=user)
        self._index(None, job)
        self._changes.publish(None, job)
        self.kick()
        return job

    def _drawn_id(self) -> str:
        """A random id no job held in memory has; the bucket's create, a compare-and-set, refuses one an older job
        took (its record let go from memory)."""
        while self.records.get(job_id := new_job_id()) is not None:
            pass
        return job_id

    async def _fresh_id(self) -> str:
        """A random id no job has, held in memory or only in the bucket, for an idempotency key to claim before its
        job is created. Ids are 32 bits: among 100,000 jobs a draw repeats one about once, and a key claimed for a
        taken id would answer with that other job as this submit's."""
        while await self.records.exists(job_id := self._drawn_id()):
            pass
        return job_id

    async def claim(self, user: str, key: str, new_id: str) -> str:
        """The id for this user's idempotency key: `new_id`, or the one an earlier submit claimed (a job's or a
        study's: the key is the client's, one per submit)."""
        assert self._submits is not None
        name = hashlib.sha256(f"{user}\0{key}".encode()).hexdigest()[:40]
        try:
            await self._submits.create(name, new_id.encode())
            return new_id
        except KeyExists:
            entry = await self._submits.get(name)
            return (entry[0].decode() if entry else "") or new_id

    @staticmethod
    def _check_size(spec: JobSpec) -> None:
        """The spec goes into the job record and every assignment: it must leave them room under the limit."""
        if len(spec.env) + len(spec.secrets) > limits.ENV_MAX_VARS:
            raise SpecInvalid(f"{len(spec.env) + len(spec.secrets)} env vars and secrets, over the limit of "
                              f"{limits.ENV_MAX_VARS}", field="env")
        size = len(encode(spec))
        if size > limits.SPEC_MAX_BYTES:
            raise SpecInvalid(f"the spec is {size / 1024:.0f} KB, over the {limits.SPEC_MAX_BYTES // 1024} KB limit "
                              "(large values belong in files in the workdir or in data:)", field="spec")

    async def cancel(self, job_id: str, reason: str | None = None) -> Job:
        await self.records.need(job_id, "job")
        job = await self._update(job_id, lambda j: state.cancel(j, time.time(), reason))
        log.info("job_cancel_requested", job_id=job_id, state=job.state)
        if job.state in ON_AGENT and job.current:
            await self._stop_ranks(job, gang.agents_of(job))
        return job

    async def _stop_ranks(self, job: Job, agents: list[str]) -> None:
        """CancelJob to each of `agents` for the job's current attempt (its rank there stops: SIGTERM, grace)."""
        cur = job.current
        assert cur is not None
        for agent_id in agents:
            await self._send(agent_id, CancelJob(job_id=job.id, attempt=cur.number, grace=self._cfg.cancel_grace),
                             msg_id=f"{job.id}.{cur.number}.cancel.{agent_id}")

    # --- dispatch -----------------------------------------------------------------------------------------

    def _refuse_keyless(self, job_id: str, agent_ids: list[str]) -> bool:
        """A job with secrets is never handed to an agent that cannot open them sealed: it waits, saying why."""
        job = self.records.get(job_id)
        keyless = [a for a in agent_ids if self._agent_key(a) is None]
        if job is None or not job.spec.secrets or not keyless:
            return False
        self.waiting[job_id] = jobsecrets.refusal(keyless[0])
        log.warning("dispatch_refused_no_seal_key", job_id=job_id, agent_id=keyless[0])
        return True

    async def dispatch(self, job_id: str, agent_id: str, instance: AgentInfo | None = None) -> None:
        if self._refuse_keyless(job_id, [agent_id]):
            return
        key = secrets.token_hex(12)
        job = await self._update(job_id, lambda j: state.assign(j, agent_id, time.time(), instance, key))
        assert job.current is not None  # state.assign starts an attempt
        with bound_contextvars(attempt=job.current.number):
            log.info("job_assigned", job_id=job.id, attempt=job.current.number, agent_id=agent_id)
            await self.send_assign(job)

    async def dispatch_gang(self, job_id: str, agents: list[AgentInfo]) -> None:
        """A multi-node attempt, rank k on agents[k]: each agent gets its rank's assignment."""
        if self._refuse_keyless(job_id, [a.agent_id for a in agents]):
            return
        key = secrets.token_hex(12)
        job = await self._update(job_id, lambda j: gang.assign(j, agents, time.time(), key))
        assert job.current is not None
        with bound_contextvars(attempt=job.current.number):
            log.info("gang_assigned", job_id=job.id, attempt=job.current.number, agents=[a.agent_id for a in agents])
            await self.send_assign(job)

    async def send_assign(self, job: Job, copy: str = "") -> None:
        """Publish the attempt's assignment (each not-started rank's, for a multi-node attempt). One NATS refuses
        for good (not a transient failure) fails the attempt with the reason: it could never be delivered.

        `copy` names a deliberate re-send: a message id of its own, so that the stream stores it even though the
        first copy is stored (its delivery may be what was lost: a NATS node died with it in flight, and the
        stream would hand it out again only after the agent's ack wait). The agent drops a copy of an attempt it
        has taken."""
        cur = job.current
        assert cur is not None
        if cur.nodes:  # every rank's at once
            await asyncio.gather(*(
                self._send(node.agent_id, self._assign(job, node.agent_id, Gang(rank=node.rank, nodes=len(cur.nodes))),
                           msg_id=f"{job.id}.{cur.number}.r{node.rank}{copy}")
                for node in cur.nodes if node.state is JobState.ASSIGNED))
            return
        try:
            await self._send(cur.agent_id, self._assign(job, cur.agent_id), msg_id=f"{job.id}.{cur.number}{copy}")
        except TRANSIENT:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. over the payload limit: this job's failure
            log.error("assignment_refused", job_id=job.id, attempt=cur.number, error=repr(exc))
            why = limits.bound_reason(f"the assignment could not be sent to agent {cur.agent_id}: {exc!r}")
            await self._update(job.id, lambda j: state.exited(j, cur.number, time.time(), exit_code=None, reason=why,
                                                              cancelled=False, tail=[], ended_at=time.time()))

    def _assign(self, job: Job, agent_id: str, rank: Gang | None = None) -> Assign:
        """The assignment for `agent_id`, its secret values sealed to that agent's key (only it can open them)."""
        assert job.current is not None
        spec, sealed = jobsecrets.sealed_for(job, self._vault, agent_id, self._agent_key(agent_id))
        return Assign(job_id=job.id, attempt=job.current.number, spec=spec, env=job_env(job), code=job.code,
                      gang=rank, sealed=sealed, owner=job.user,
                      output_key=job.current.output_key)

    async def resend_stale_assignments(self, older_than: float) -> None:
        """Re-send ASSIGNED attempts not started since `older_than` (the controller may have died between
        writing the assignment and publishing it). The agent drops a copy it has already seen. Called at every
        scheduling pass, it looks at most four times per resend period: nothing comes due sooner than that."""
        now = time.time()
        if now - self._resend_checked < (now - older_than) / 4:
            return
        self._resend_checked = now
        live = self.live()
        assigned = {(j.id, j.current.number): j for j in live
                    if j.current is not None and (j.state is JobState.ASSIGNED or (
                        j.state is JobState.STARTING and any(n.state is JobState.ASSIGNED for n in j.current.nodes)))}
        starting = {(j.id, -j.current.number) for j in live  # gang starts: keyed by the negated attempt
                    if j.state is JobState.STARTING and j.current is not None and j.current.nodes}
        self._resent = {k: t for k, t in self._resent.items() if k in assigned or k in starting}  # forget the rest
        for key, job in assigned.items():
            assert job.current is not None  # `assigned` keeps only jobs with a current attempt
            if job.current.assigned_at <= older_than and self._resent.get(key, 0.0) <= older_than:
                self._resent[key] = time.time()
                log.info("assignment_resent", job_id=job.id, attempt=key[1])
                await self.send_assign(job, copy=f".copy{self._resent[key]:.3f}")
        # A gang whose ranks were all ready but did not start (the controller may have died before GangStart left):
        # start it again. An agent ignores a GangStart for a rank it has already started.
        for job in live:
            cur = job.current
            if (job.state is JobState.STARTING and cur is not None and gang.all_ready(job)
                    and job.updated_at <= older_than and self._resent.get((job.id, -cur.number), 0.0) <= older_than):
                self._resent[(job.id, -cur.number)] = time.time()
                log.info("gang_start_resent", job_id=job.id, attempt=cur.number)
                await self._start_gang(job)

    async def _send(self, agent_id: str, cmd: Assign | CancelJob | GangStart, msg_id: str) -> None:
        self.records.fence()  # a controller that no longer leads sends no agent anything
        await forever(
            "publish_assignment",
            lambda: self._bus.publish_durable(subjects.assign(agent_id), encode(cmd), msg_id=msg_id,
                                              timeout=self._cfg.request_timeout),
            initial=self._cfg.retry_initial,
            maximum=self._cfg.retry_max,
        )

    # --- what agents report -------------------------------------------------------------------------------

    async def apply(self, event: JobStarting | JobRunning | JobReady | JobExited) -> None:
        job = self.records.get(event.job_id)
        if job is None:
            log.warning("event_for_unknown_job", job_id=event.job_id, kind=type(event).__name__)
            return
        if job.current is not None and job.current.nodes:
            await self._apply_rank(job, event)
            return
        if isinstance(event, JobReady):
            log.warning("event_stale", job_id=job.id, attempt=event.attempt, kind="JobReady")
            return
        cur = job.current
        if cur is None or cur.number != event.attempt or cur.agent_id != event.agent_id:
            log.warning("event_stale", job_id=job.id, attempt=event.attempt, agent_id=event.agent_id,
                        kind=type(event).__name__)
            return
        now = time.time()
        match event:
            case JobStarting():
                change = lambda j: state.starting(j, event.attempt, now)  # noqa: E731
            case JobRunning():
                change = lambda j: state.running(j, event.attempt, now, event.ts)  # noqa: E731
            case JobExited():
                change = lambda j: state.exited(  # noqa: E731
                    j, event.attempt, now, exit_code=event.exit_code, reason=event.reason,
                    cancelled=event.cancelled, tail=event.tail, ended_at=event.ts, outputs=event.outputs,
                    preempted=event.preempted, fenced=event.fenced)
        try:
            job = await self._update(job.id, change)
        except state.IllegalTransition as exc:
            log.warning("event_refused", job_id=job.id, attempt=event.attempt, reason=str(exc))
            return
        log.info("job_state", job_id=job.id, attempt=event.attempt, state=job.state, exit_code=job.exit_code)
        if isinstance(event, JobExited):
            self.kick()

    async def _apply_rank(self, job: Job, event: JobStarting | JobRunning | JobReady | JobExited) -> None:
        """An event from one rank of a multi-node attempt; the attempt starts when all are ready, and is stopped
        whole when one ends other than by succeeding."""
        now = time.time()
        match event:
            case JobStarting():
                change = lambda j: gang.starting(j, event.attempt, event.agent_id, now)  # noqa: E731
            case JobReady():
                change = lambda j: gang.ready(j, event.attempt, event.agent_id, event.port, now)  # noqa: E731
            case JobRunning():
                change = lambda j: gang.running(j, event.attempt, event.agent_id, now, event.ts)  # noqa: E731
            case JobExited():
                to = rank_outcome(event)
                change = lambda j: gang.node_ended(  # noqa: E731
                    j, event.attempt, event.agent_id, event.ts, to=to, exit_code=event.exit_code,
                    reason=event.reason, outputs=event.outputs, tail=event.tail)
        try:
            before = job
            job = await self._update(job.id, change)
        except state.IllegalTransition as exc:
            log.warning("event_refused", job_id=job.id, attempt=event.attempt, agent_id=event.agent_id,
                        reason=str(exc))
            return
        log.info("rank_event", job_id=job.id, attempt=event.attempt, agent_id=event.agent_id,
                 kind=type(event).__name__, state=job.state)
        await self._after_rank_change(before, job)
        if isinstance(event, JobExited):
            self.kick()

    async def _after_rank_change(self, before: Job, after: Job) -> None:
        """Start every rank once all are ready; stop every live rank once the attempt is stopping."""
        cur = after.current
        assert cur is not None
        was_ready = before.current is not None and before.current.number == cur.number and gang.all_ready(before)
        if gang.all_ready(after) and not was_ready:
            await self._start_gang(after)
        if stop := gang.to_stop(before, after):
            assert cur.stopping is not None
            log.warning("gang_stopping", job_id=after.id, attempt=cur.number, cause=cur.stopping.reason, ranks=stop)
            await self._stop_ranks(after, stop)

    async def _start_gang(self, job: Job) -> None:
        """GangStart to every rank that has not started yet, with the environment that names them all; sent to
        all at once, so that the ranks start as close together as the agents allow."""
        cur = job.current
        assert cur is not None
        env = gang.start_env(job)
        log.info("gang_start", job_id=job.id, attempt=cur.number, master=env.get("MASTER_ADDR"),
                 port=env.get("MASTER_PORT"))
        def start(rank: int) -> GangStart:
            return GangStart(job_id=job.id, attempt=cur.number,
                             env=env | {"NODE_RANK": str(rank), "INCL_NODE_RANK": str(rank)})

        await asyncio.gather(*(
            self._send(node.agent_id, start(node.rank), msg_id=f"{job.id}.{cur.number}.start.r{node.rank}")
            for node in cur.nodes if node.state in (JobState.ASSIGNED, JobState.STARTING)))

    async def agent_lost(self, agent_id: str, reason: str, keep: AbstractSet[tuple[str, int]] = frozenset(),
                         preempted: bool = False) -> None:
        """Every attempt on the agent (but those in `keep`) is LOST, their jobs requeued while retry allows; or,
        when its spot instance was reclaimed, PREEMPTED, and their jobs resume."""
        change = state.preempt if preempted else state.lost
        for job in self.on_agent(agent_id):
            assert job.current is not None
            if (job.id, job.current.number) in keep:
                continue
            attempt = job.current.number
            with bound_contextvars(job_id=job.id, attempt=attempt):
                if job.current.nodes:
                    await self._lose_rank(job, agent_id, reason, preempted)
                else:
                    await self._lose(job.id, attempt, agent_id, reason, change)
        self.kick()

    async def _lose_rank(self, job: Job, agent_id: str, reason: str, preempted: bool) -> None:
        """The rank on a lost agent has ended with it (its lease stopped its process): the others are stopped."""
        assert job.current is not None
        to, number = (JobState.PREEMPTED if preempted else JobState.LOST), job.current.number
        try:
            after = await self._update(job.id, lambda j: gang.node_ended(j, number, agent_id, time.time(), to=to,
                                                                         reason=reason))
        except state.IllegalTransition as exc:
            log.warning("lost_refused", job_id=job.id, reason=str(exc))
            return
        log.warning("rank_lost", job_id=job.id, attempt=number, agent_id=agent_id, state=after.state)
        await self._after_rank_change(job, after)

    async def _lose(self, job_id: str, attempt: int, agent_id: str, reason: str,
                    change: Callable[[Job, int, float, str], Job]) -> None:
        try:
            job = await self._update(job_id, lambda j: change(j, attempt, time.time(), reason))
        except state.IllegalTransition as exc:
            log.warning("lost_refused", job_id=job_id, reason=str(exc))
            return
        except TRANSIENT:
            raise
        except Exception:  # this job's record failed; the others are still handled
            log.exception("lost_failed", job_id=job_id, attempt=attempt)
            return
        log.warning("job_attempt_lost", job_id=job_id, attempt=attempt, agent_id=agent_id, state=job.state)
