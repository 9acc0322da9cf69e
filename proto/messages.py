"""Every message and record INCL puts on the wire: frozen msgspec structs, MessagePack encoded.

Messages are a closed, tagged union (the `type` field holds the class name); unknown fields are refused.
Records (jobs, agents) are stored in JetStream KV buckets with the same codec.
"""

from __future__ import annotations

import collections.abc
import enum
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import overload

import msgspec

from incl.proto import PROTOCOL_VERSION
from incl.proto.hpo import Choice
from incl.proto.spec import JobSpec
from incl.proto.telemetry import GpuInfo, GpuTelemetry


class _Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class Message(_Struct, tag=True, frozen=True):
    """Base of every tagged message."""


# --- shared envelope --------------------------------------------------------------------------------------


class Origin(_Struct, frozen=True):
    """Where a request comes from, as its client says: its host name, and the address the NATS server saw it
    connect from (the server's INFO tells the client). Self-reported: NATS does not tell a responder."""
    host: str
    address: str | None = None


class Envelope(_Struct, frozen=True):
    request_id: str
    sender: str
    version: int = PROTOCOL_VERSION
    idempotency_key: str | None = None
    origin: Origin | None = None  # None: a client from before the audit trail, or one that does not say

    @classmethod
    def new(cls, sender: str, idempotency_key: str | None = None, origin: Origin | None = None) -> Envelope:
        return cls(request_id=uuid.uuid4().hex, sender=sender, idempotency_key=idempotency_key, origin=origin)


class Request(Message, frozen=True):
    meta: Envelope


class Reply(Message, frozen=True):
    pass


class ErrorReply(Reply, frozen=True):
    code: str
    message: str
    field: str | None = None


# --- records ----------------------------------------------------------------------------------------------


class JobState(enum.StrEnum):
    QUEUED = "QUEUED"
    ASSIGNED = "ASSIGNED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    PREEMPTED = "PREEMPTED"
    LOST = "LOST"


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
ON_AGENT = frozenset({JobState.ASSIGNED, JobState.STARTING, JobState.RUNNING})


class JobRef(_Struct, array_like=True, frozen=True):
    job_id: str
    attempt: int


class TreeRef(_Struct, frozen=True):
    """A directory tree in the artifact store (code snapshot, outputs): its manifest digest and size."""
    digest: str
    files: int = 0
    bytes: int = 0


class Node(_Struct, frozen=True):
    """One rank of a multi-node attempt: where it runs and how it went. `state` is the rank's own (ASSIGNED,
    STARTING, RUNNING, then SUCCEEDED, FAILED, CANCELLED, LOST or PREEMPTED)."""
    rank: int
    agent_id: str
    state: JobState
    instance_id: str | None = None
    instance_type: str | None = None
    market: str | None = None
    address: str | None = None  # the host's private address, where the other ranks reach it
    ready: bool = False  # its code, image and data are in place: it waits at the start barrier
    port: int | None = None  # rank 0: the free port its agent chose (MASTER_PORT)
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    reason: str | None = None
    outputs: TreeRef | None = None


class Stopping(_Struct, frozen=True):
    """Why a multi-node attempt is being stopped: the first rank that ended other than by succeeding (the others
    are stopped, and the attempt ends as this says once every rank has ended)."""
    kind: str  # "failed" | "lost" | "preempted" | "cancelled"
    rank: int
    reason: str
    exit_code: int | None = None


class Attempt(_Struct, frozen=True):
    number: int
    agent_id: str
    state: JobState
    assigned_at: float
    instance_id: str | None = None  # the cloud instance the agent runs on, its type and market (spot, on-demand)
    instance_type: str | None = None
    market: str | None = None
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    reason: str | None = None
    tail: list[str] = []
    outputs: TreeRef | None = None  # what the attempt left in $INCL_OUTPUT_DIR, uploaded when it ended
    nodes: list[Node] = []  # a multi-node attempt's ranks, in rank order (`agent_id` above is rank 0's)
    stopping: Stopping | None = None
    # The last token of the attempt's output subjects (`subjects.logs`): random, told only to the agents that run
    # the attempt (in their assignment) and to those who may read the job, so that no other agent can write
    # where readers read. "": an attempt from before it (its subjects end in `_`).
    output_key: str = ""
    # Whether the attempt's agents write subjects that end in their own ids (`subjects.output`); False: an attempt
    # from before, whose batches may also lie on `subjects.legacy_output` (read as well, see `incl.bus.output`).
    agent_subjects: bool = False

    @property
    def writers(self) -> frozenset[str]:
        """The agents the controller assigned the attempt: the only ones whose batches its readers keep."""
        return frozenset([self.agent_id, *(n.agent_id for n in self.nodes)])


class TrialRef(_Struct, frozen=True):
    """The HPO trial a job runs: its study and Optuna's trial number."""
    study_id: str
    number: int
    params: dict[str, Choice] = {}  # its active parameters, typed (`incl.params()` reads them back)


class Job(_Struct, frozen=True):
    id: str
    spec: JobSpec
    user: str
    state: JobState
    submitted_at: float
    updated_at: float
    attempts: list[Attempt] = []
    cancel_requested: bool = False
    reason: str | None = None
    exit_code: int | None = None
    code: TreeRef | None = None  # the workdir snapshot the CLI uploaded at submit
    trial: TrialRef | None = None  # set when the job is a trial of an HPO study
    # The values of `spec.secrets`, each encrypted with the controller's vault key (`incl.auth.sealing`); the
    # spec then keeps the names with empty values, so the jobs bucket holds no clear value. None: a record an
    # older controller wrote, whose spec still holds the values (sealed at its next write).
    locked_secrets: dict[str, bytes] | None = None

    @property
    def name(self) -> str:
        return self.spec.name or self.id

    # What names the job's output subjects (`subjects.logs`): the same on a record and on its assignment.
    @property
    def job_id(self) -> str:
        return self.id

    @property
    def owner(self) -> str:
        return self.user

    @property
    def team(self) -> str | None:
        return self.spec.team

    @property
    def current(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None


class Resources(_Struct, frozen=True):
    cpus: float
    memory: int
    gpus: int = 0
    gpu_model: str | None = None


class AgentInfo(_Struct, frozen=True):
    agent_id: str
    hostname: str
    capacity: Resources
    provider: str = "local"
    instance_id: str | None = None
    instance_type: str | None = None
    market: str | None = None  # "spot" or "on-demand" (EC2's instance-life-cycle); None off the cloud
    zone: str | None = None
    address: str | None = None  # the instance's private IPv4, where other nodes reach it
    labels: dict[str, str] = {}
    runtimes: list[str] = msgspec.field(default_factory=lambda: ["process"])
    gpus: list[GpuInfo] = []
    version: str = ""
    # The agent's X25519 public key: the controller seals each secret value of an assignment to it. None: an
    # older agent, which is given no job that has secrets.
    seal_key: bytes | None = None


class AgentState(enum.StrEnum):
    ALIVE = "alive"
    LOST = "lost"


class AgentRecord(_Struct, frozen=True):
    info: AgentInfo
    state: AgentState
    registered_at: float  # when the current agent process (instance) registered
    last_seen: float
    instance: str = ""  # the agent process: a new one per process start


# --- CLI <-> controller -----------------------------------------------------------------------------------


class SubmitRequest(Request, frozen=True):
    spec: JobSpec
    user: str
    code: TreeRef | None = None


class SubmitReply(Reply, frozen=True):
    job: Job


class ListJobsRequest(Request, frozen=True):
    states: list[JobState] | None = None
    user: str | None = None
    study: str | None = None  # only the trials of this study
    after: str | None = None  # the previous page's `next`: listings come in pages
    limit: int | None = None  # at most this many (the controller also caps a page by its size)


class ListJobsReply(Reply, frozen=True):
    jobs: list[Job]
    gpu_util: dict[str, float] = {}  # job id -> its GPUs' utilization in the last heartbeat, percent
    next: str | None = None  # more follow: ask again with `after=next`


class GetJobRequest(Request, frozen=True):
    job_id: str
    why_no_logs: bool = False  # also say whether the job's log lines expired (`logs_expired`): a stream read




class GetJobReply(Reply, frozen=True):
    job: Job
    gpu_util: float | None = None
    gpu_idle_since: float | None = None  # set while the idle monitor considers the job idle
    logs_expired: str | None = None  # asked `why_no_logs`: "expired: the cluster keeps them for 30 days", or None


class CancelRequest(Request, frozen=True):
    job_id: str


class CancelReply(Reply, frozen=True):
    job: Job


class ListAgentsRequest(Request, frozen=True):
    after: str | None = None
    limit: int | None = None


class AgentView(_Struct, frozen=True):
    record: AgentRecord
    running: list[JobRef] = []
    allocated: Resources | None = None
    telemetry: GpuTelemetry | None = None  # the last heartbeat's GPU readings


class ListAgentsReply(Reply, frozen=True):
    agents: list[AgentView]
    next: str | None = None


class QuotaLine(_Struct, frozen=True):
    kind: str  # "user" | "team"
    name: str
    used: int
    limit: int | None = None  # None: no limit


class QuotaRequest(Request, frozen=True):
    pass


class QuotaReply(Reply, frozen=True):
    lines: list[QuotaLine]


class PingRequest(Request, frozen=True):
    pass


class PingReply(Reply, frozen=True):
    controller_id: str
    version: int = PROTOCOL_VERSION
    store_url: str | None = None  # the artifact store: where code goes at submit and outputs come from


# --- agent <-> controller ---------------------------------------------------------------------------------


class Lease(_Struct, frozen=True):
    """How long an agent may run its jobs without hearing from the controller: past `duration` seconds from
    the sending of its last answered request it stops them all (SIGTERM, SIGKILL after `grace`), so that
    they have ended before the controller may declare the agent lost and run them elsewhere."""
    duration: float
    grace: float


class RegisterRequest(Request, frozen=True):
    info: AgentInfo
    running: list[JobRef] = []
    instance: str = ""  # a new random id per agent process: a restart is told apart from a re-registration
    previous_instance: str = ""  # the process this one replaces (it found that one's id in its locked work dir)


class RegisterReply(Reply, frozen=True):
    heartbeat_interval: float
    stop: list[JobRef] = []
    store_url: str | None = None  # the cluster's artifact store, unless the agent's config names one
    lease: Lease | None = None


class HeartbeatRequest(Request, frozen=True):
    agent_id: str
    running: list[JobRef] = []
    telemetry: GpuTelemetry | None = None  # GPU readings aggregated since the previous heartbeat
    instance: str = ""
    ended: list[JobRef] = []  # attempts that ended lately, whose exit event the events stream holds


class HeartbeatReply(Reply, frozen=True):
    heartbeat_interval: float
    registered: bool = True  # False: the controller does not know this agent (or declared it lost)
    stop: list[JobRef] = []  # attempts this agent must stop: they are no longer its to run
    lease: Lease | None = None
    superseded: bool = False  # another process of this agent id took over: stop every job and exit


class AssignmentRequest(Request, frozen=True):
    """An agent asks, before it starts an attempt from its queue, whether the attempt is still its to run (the
    queue may hold a re-sent copy of one that was cancelled or handed on)."""
    job_id: str
    attempt: int
    agent_id: str


class AssignmentReply(Reply, frozen=True):
    current: bool  # the job's current attempt is this one, on this agent, and not started yet
    cancel_requested: bool = False


# --- controller -> agent (work queue) ---------------------------------------------------------------------


class Gang(_Struct, frozen=True):
    """This agent runs rank `rank` of `nodes`: it prepares, reports JobReady, and starts the job only when the
    controller's GangStart says every rank is ready."""
    rank: int
    nodes: int


class Assign(Message, frozen=True):
    job_id: str
    attempt: int
    spec: JobSpec
    env: dict[str, str] = {}
    code: TreeRef | None = None
    gang: Gang | None = None
    # The values of `spec.secrets`, each sealed to the agent's key (only it opens them); the spec then keeps the
    # names with empty values. None: no secrets, or an assignment from an older controller (values in the spec).
    sealed: dict[str, bytes] | None = None
    owner: str = ""  # who submitted the job: with `spec.team`, it names the job's output subjects
    output_key: str = ""  # the attempt's (`Attempt.output_key`): the last token of those subjects

    @property
    def team(self) -> str | None:
        return self.spec.team


class CancelJob(Message, frozen=True):
    job_id: str
    attempt: int
    grace: float


class GangStart(Message, frozen=True):
    """Every rank of the attempt is ready: start, with the environment that names them all (MASTER_ADDR...)."""
    job_id: str
    attempt: int
    env: dict[str, str]


AgentCommand = Assign | CancelJob | GangStart


# --- agent -> controller (durable events) -----------------------------------------------------------------


class JobEvent(Message, frozen=True):
    job_id: str
    attempt: int
    agent_id: str
    ts: float = msgspec.field(default_factory=time.time)


class JobStarting(JobEvent, frozen=True):
    pass


class JobRunning(JobEvent, frozen=True):
    pid: int | None = None


class JobReady(JobEvent, frozen=True):
    """A rank of a multi-node attempt is prepared and waits at the start barrier. Rank 0 names the port it chose
    for the rendezvous."""
    rank: int = 0
    port: int | None = None


class JobExited(JobEvent, frozen=True):
    exit_code: int | None = None  # None when the process never started
    signal: int | None = None
    reason: str | None = None
    cancelled: bool = False
    preempted: bool = False  # stopped because its spot instance is being reclaimed: it resumes elsewhere
    fenced: bool = False  # stopped because the agent lost contact with the controller past its lease
    tail: list[str] = []
    outputs: TreeRef | None = None


class AgentInterrupted(Message, frozen=True):
    """The agent's spot instance got its interruption notice: nothing new goes there; its jobs checkpoint."""
    agent_id: str
    instance_id: str | None
    action: str  # terminate, stop, hibernate
    deadline: float  # when EC2 takes the instance (unix time)
    ts: float = msgspec.field(default_factory=time.time)


AgentEvent = JobStarting | JobRunning | JobReady | JobExited | AgentInterrupted


# --- logs and metrics -------------------------------------------------------------------------------------


class Stream(enum.IntEnum):
    STDOUT = 1
    STDERR = 2
    SYSTEM = 3  # lines INCL itself writes into the job's log (setup, failures to start)


class LogLine(_Struct, array_like=True, frozen=True):
    ts: float
    stream: Stream
    data: bytes
    partial: bool = False  # a piece of a longer line: the next piece continues it (no newline after this)


class LogBatch(Message, frozen=True):
    job_id: str
    attempt: int
    seq: int
    lines: list[LogLine]
    rank: int = 0  # the rank of a multi-node job that wrote them
    # Lines of the job's stdout and stderr shipped for this attempt up to and including this batch: an agent
    # that re-adopts a running container replays its output and skips this many of each.
    stdout_total: int = 0
    stderr_total: int = 0


class MetricPoint(_Struct, array_like=True, frozen=True, gc=False):
    # gc=False: a point holds no reference that could make a cycle, and a million of them decoded for a chart
    # otherwise cost the cyclic collector 40% of the decoding (measured: bench/metric_read.py).
    ts: float
    step: int | None
    values: dict[str, float]


class MetricRun(_Struct, array_like=True, frozen=True, gc=False):
    """Consecutive points that log the same metrics, the same way (each with a step, or none with one), stored a
    column at a time: a million of them decode as a few lists of numbers, not a million objects and dicts."""
    names: list[str]
    ts: list[float]
    steps: list[int] | None  # None: logged without a step
    columns: list[list[float]]  # one per name, each as long as `ts`

    def __len__(self) -> int:
        return len(self.ts)

    def point(self, i: int) -> MetricPoint:
        return MetricPoint(ts=self.ts[i], step=None if self.steps is None else self.steps[i],
                           values={name: column[i] for name, column in zip(self.names, self.columns, strict=True)})


class MetricColumns(_Struct, frozen=True, gc=False):
    """A batch's points as runs of columns (what agents write). It reads as the sequence of `MetricPoint`s it holds,
    so code that walks `batch.points` does not care which form a batch came in; code that wants speed (a chart of a
    million points) takes `runs` as they are."""
    runs: list[MetricRun]

    @classmethod
    def of(cls, points: Iterable[MetricPoint]) -> MetricColumns:
        runs: list[MetricRun] = []
        names: list[str] | None = None
        stepped = False
        for p in points:
            if names is None or list(p.values) != names or (p.step is not None) != stepped:
                names, stepped = list(p.values), p.step is not None
                runs.append(MetricRun(names=names, ts=[], steps=[] if stepped else None,
                                      columns=[[] for _ in names]))
            run = runs[-1]
            run.ts.append(p.ts)
            if run.steps is not None:
                run.steps.append(p.step)  # type: ignore[arg-type]  # stepped: every point of the run has one
            for column, value in zip(run.columns, p.values.values(), strict=True):
                column.append(value)
        return cls(runs=runs)

    def __len__(self) -> int:
        return sum(len(run) for run in self.runs)

    def __iter__(self) -> Iterator[MetricPoint]:
        for run in self.runs:
            for i in range(len(run)):
                yield run.point(i)

    @overload
    def __getitem__(self, index: int) -> MetricPoint: ...

    @overload
    def __getitem__(self, index: slice) -> list[MetricPoint]: ...

    def __getitem__(self, index: int | slice) -> MetricPoint | list[MetricPoint]:
        if isinstance(index, slice):
            return list(self)[index]
        if index < 0:
            index += len(self)
        for run in self.runs:
            if 0 <= index < len(run):
                return run.point(index)
            index -= len(run)
        raise IndexError("metric point index out of range")

    def __eq__(self, other: object) -> bool:  # equal to the same points in either form
        if isinstance(other, MetricColumns | list):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # as a list's: it equals a list of the same points


collections.abc.Sequence.register(MetricColumns)


class MetricBatch(Message, frozen=True):
    job_id: str
    attempt: int
    seq: int
    # Agents write columns; a list of points (as agents wrote before, and tests write by hand) reads the same.
    points: list[MetricPoint] | MetricColumns
    rank: int = 0


class SeriesSummary(_Struct, array_like=True, frozen=True, gc=False):
    """One metric of an attempt as a chart of the whole run draws it: of each bucket of consecutive points, the
    lowest, the highest and the first NaN or infinity, in the order they were logged."""
    name: str
    points: int  # how many the metric has (a step-less series' numbering goes on from here in a later attempt)
    index: list[int]  # each kept point's place in the metric's points
    ts: list[float]
    steps: list[int | None]
    values: list[float]


class MetricSummary(Message, frozen=True):
    """An attempt's metrics reduced, written by its agent on the attempt's metric subject after its last batch, so
    that the first chart of a long run that has ended reads one message, not every point (incl.web.summary)."""
    job_id: str
    attempt: int
    batches: int  # the attempt's batches before it: all of them
    series: list[SeriesSummary]
    rank: int = 0


# --- messages a consumer could not handle ------------------------------------------------------------------


class DeadLetter(_Struct, frozen=True):
    """A message a consumer could not handle: parked in the dead-letter stream, not redelivered into a crash
    loop. `incl admin dead-letters` lists them."""
    source: str  # which consumer parked it
    subject: str
    error: str
    data: bytes  # the message as received, cut to a bound
    size: int  # its whole size
    ts: float


class ListDeadLettersRequest(Request, frozen=True):
    limit: int = 20  # the newest this many


class DeadLetterView(_Struct, frozen=True):
    seq: int
    letter: DeadLetter  # its data cut to a preview


class ListDeadLettersReply(Reply, frozen=True):
    letters: list[DeadLetterView]
    total: int  # how many the stream holds
