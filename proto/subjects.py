"""NATS subject, stream, consumer and bucket names: the only place they are spelled."""

from typing import NamedTuple, Protocol

# Request-reply, served by the controller. A request's subject names its caller, `incl.api.user.<name>.<verb>` or
# `incl.api.agent.<agent_id>.<verb>`, so that the NATS server's permissions (each identity may publish only under its
# own name) make the subject the proof of who asks: the controller reads the caller from it, never from the payload.
API_PREFIX = "incl.api"
USER = "user"
AGENT = "agent"
# What users ask (verbs: the subject's tokens after the caller).
SUBMIT = "submit"
LIST_JOBS = "jobs.list"
GET_JOB = "jobs.get"
CANCEL = "jobs.cancel"
LIST_AGENTS = "agents.list"
PING = "ping"
STATUS = "status"
QUOTA = "quota"
DEAD_LETTERS = "admin.dead_letters"
SUBMIT_STUDY = "studies.submit"
LIST_STUDIES = "studies.list"
GET_STUDY = "studies.get"
STOP_STUDY = "studies.stop"
REGISTER_MODEL = "models.register"
LIST_MODELS = "models.list"
GET_MODEL = "models.get"
LIST_VERSIONS = "models.versions"
ALIAS_MODEL = "models.alias"
CREATE_SHARE = "shares.create"
LIST_SHARES = "shares.list"
REVOKE_SHARE = "shares.revoke"
RESOLVE_SHARE = "shares.resolve"  # a link's token -> what it opens (the web server asks, for anyone with the link)
# What agents ask.
REGISTER = "agents.register"
HEARTBEAT = "agents.heartbeat"
ASSIGNMENT = "agents.assignment"

# Reply inboxes, one prefix per identity, so that nobody may subscribe to another's replies.
INBOX_PREFIX = "_INBOX"


# Controller -> agent: a JetStream work queue, one durable consumer per agent.
ASSIGN_STREAM = "INCL_ASSIGN"
ASSIGN_PREFIX = "incl.assign"

# Agent -> controller: job lifecycle events, durable until the controller has applied them.
EVENTS_STREAM = "INCL_EVENTS"
EVENTS_PREFIX = "incl.events"
EVENTS_CONSUMER = "controller"

# Agent -> readers: log lines and metric points, one subject per attempt and writing agent,
# `incl.logs.<team>.<owner>.<job>.<key>.<agent>`: the team and the owner in the subject let the NATS server's
# permissions give each user their own jobs' output and their teams' (`incl.auth.permissions`), and nobody else's;
# the attempt's random key (`Attempt.output_key`) is known only to the agents running it and to its readers; the last
# token is the agent that wrote the batch, and an agent may publish only subjects ending in its own id, so the server
# refuses a batch written under another agent's name. Readers read `<key>.*` and keep only the batches of the agents
# the controller assigned the attempt (`incl.bus.output`). A job of no team has the team token NO_TEAM. Attempts from
# before the agent token (`Attempt.agent_subjects` False) also have batches on `<...>.<key>` (`legacy_output`).
LOGS_STREAM = "INCL_LOGS"
LOGS_PREFIX = "incl.logs"
METRICS_STREAM = "INCL_METRICS"
METRICS_PREFIX = "incl.metrics"

# Messages a consumer could not handle, parked with the reason (one subject per consumer).
DEAD_STREAM = "INCL_DEAD"
DEAD_PREFIX = "incl.dead"

# HPO studies: each study's Optuna journal, one subject per study, kept as long as the study (no age limit).
STUDIES_STREAM = "INCL_STUDIES"
STUDIES_PREFIX = "incl.studies"

# KV buckets.
JOBS_BUCKET = "incl_jobs"
AGENTS_BUCKET = "incl_agents"
SUBMITS_BUCKET = "incl_submits"  # idempotency key of a submit -> the job it created
STUDIES_BUCKET = "incl_studies"  # study id -> its record (spec, state); the trials are in its journal
IDLE_BUCKET = "incl_idle"  # job id -> its idle-GPU episode already alerted (deleted when the episode ends)
LEADER_BUCKET = "incl_leader"  # the controllers' lease (`leader`) and who runs (`member.<id>`); entries expire
NOTICES_BUCKET = "incl_notices"  # notice id -> a Slack notice not yet delivered (deleted once it is)
MODELS_BUCKET = "incl_models"  # <model>/v/<N> -> a registered version, <model>/a/<alias> -> where an alias points
SHARES_BUCKET = "incl_shares"  # share id -> its record (proto/shares.py), kept after it expires or is revoked


def assign(agent_id: str) -> str:
    return f"{ASSIGN_PREFIX}.{agent_id}"


def assign_consumer(agent_id: str) -> str:
    return f"agent-{agent_id}"


def events(agent_id: str) -> str:
    return f"{EVENTS_PREFIX}.{agent_id}"


NO_TEAM = "_"


class Owned(Protocol):
    """What names a job's output subjects: a job record, or an assignment (which carries its owner)."""
    @property
    def job_id(self) -> str: ...
    @property
    def owner(self) -> str: ...
    @property
    def team(self) -> str | None: ...


def scope(owner: str, team: str | None) -> str:
    """The `<team>.<owner>` tokens of a job's output subjects (an assignment from an older controller names no
    owner: `_`, which only the controller and cluster admins read)."""
    return f"{name_token(team) if team else NO_TEAM}.{name_token(owner) if owner else NO_TEAM}"


ANY_AGENT = "*"  # the agent token of a reader's filter: every agent's batches (the reader keeps the assigned ones')


def _agent_token(agent: str) -> str:
    return agent if agent == ANY_AGENT else name_token(agent)


def _attempt(prefix: str, job: Owned, key: str) -> str:
    return f"{prefix}.{scope(job.owner, job.team)}.{job.job_id}.{name_token(key) if key else NO_TEAM}"


def logs(job: Owned, key: str, agent: str) -> str:
    """The log subject `agent` writes for one attempt of `job`, whose output key is `key` (`Attempt.output_key`);
    `agent` ANY_AGENT: every agent's (a reader's filter)."""
    return f"{_attempt(LOGS_PREFIX, job, key)}.{_agent_token(agent)}"


def metrics(job: Owned, key: str, agent: str) -> str:
    return f"{_attempt(METRICS_PREFIX, job, key)}.{_agent_token(agent)}"


def output(stream: str, job: Owned, key: str, agent: str) -> str:
    """The subject of one attempt's batches that `agent` writes in `stream` (LOGS_STREAM or METRICS_STREAM)."""
    return logs(job, key, agent) if stream == LOGS_STREAM else metrics(job, key, agent)


def legacy_output(stream: str, job: Owned, key: str) -> str:
    """The subject of one attempt's batches in `stream` as agents from before the agent token wrote them
    (`<...>.<job>.<key>`): no agent may publish there any more, so what it holds is what they wrote."""
    return _attempt(LOGS_PREFIX if stream == LOGS_STREAM else METRICS_PREFIX, job, key)


_OUTPUT_TOKENS = 7  # incl.logs.<team>.<owner>.<job>.<key>.<agent>


def output_writer(subject: str) -> str | None:
    """The agent that wrote a batch, as its output subject names it; None for a subject from before the agent
    token (`legacy_output`)."""
    tokens = subject.split(".")
    return tokens[-1] if len(tokens) == _OUTPUT_TOKENS else None


def dead(source: str) -> str:
    return f"{DEAD_PREFIX}.{source}"


def study_journal(study_id: str, owner: str = "", team: str | None = None) -> str:
    """A study's journal: `incl.studies.<team>.<owner>.<study>`, scoped as jobs' output is (a study's reader may
    read its owner's and teams' only); without an owner, the subject of a study from before (`incl.studies.<id>`),
    which only the controller and cluster admins read."""
    return f"{STUDIES_PREFIX}.{scope(owner, team)}.{study_id}" if owner else f"{STUDIES_PREFIX}.{study_id}"


class Caller(NamedTuple):
    """Who asks (`kind` USER or AGENT, and the name) and what (`verb`), as a request's subject says."""
    kind: str
    name: str
    verb: str


def name_token(name: str) -> str:
    """`name` as one subject token; ValueError for a name NATS cannot carry in one (empty, a dot, a wildcard,
    white space)."""
    if not name or any(c in name for c in ".*> \t\r\n"):
        raise ValueError(f"{name!r} cannot name an identity on the bus (no dots, wildcards or spaces)")
    return name


def user_api(user: str, verb: str) -> str:
    return f"{API_PREFIX}.{USER}.{name_token(user)}.{verb}"


def user_api_any(user: str, verb: str) -> str:
    """A read (`verb` in READS) that any controller, a standby too, may answer."""
    return f"{API_PREFIX}.{USER}.{name_token(user)}.{ANY}.{verb}"


def asks_any(subject: str) -> bool:
    """Whether `subject` is a read asked of any controller (`user_api_any`)."""
    who = caller(subject)
    return who is not None and who.kind == USER and who.verb.startswith(f"{ANY}.")


def every_user_api_any(verb: str) -> str:
    """Every user's `user_api_any` requests of `verb` (what a standby subscribes to)."""
    return f"{API_PREFIX}.{USER}.*.{ANY}.{verb}"


def agent_api(agent_id: str, verb: str) -> str:
    return f"{API_PREFIX}.{AGENT}.{name_token(agent_id)}.{verb}"


def caller(subject: str) -> Caller | None:
    """The caller and verb a request subject names; None for a subject that is not a well-formed request."""
    parts = subject.split(".", 4)
    if len(parts) != 5 or f"{parts[0]}.{parts[1]}" != API_PREFIX or parts[2] not in (USER, AGENT):
        return None
    return Caller(kind=parts[2], name=parts[3], verb=parts[4])


def user_inbox(user: str) -> str:
    return f"{INBOX_PREFIX}.u.{name_token(user)}"


def agent_inbox(agent_id: str) -> str:
    return f"{INBOX_PREFIX}.a.{name_token(agent_id)}"


# The audit trail (incl.proto.audit): entries on `incl.audit.<kind>.<name>.<verb>`, written by the controller only;
# `admin.audit` reads them, `users.added` / `users.removed` / `users.rotated` report a change of the identity registry.
AUDIT_STREAM = "INCL_AUDIT"
AUDIT_PREFIX = "incl.audit"
AUDIT = "admin.audit"
USERS_ADDED = "users.added"
USERS_REMOVED = "users.removed"
USERS_ROTATED = "users.rotated"

# The verbs users ask that change nothing. A standby answers them too, from the records it keeps warm
# (`incl.controller.standby`), when asked as `incl.api.user.<name>.any.<verb>` (`user_api_any`): the client asks the
# leader first and the standbys once the leader has not answered within a moment (`incl.bus.client`). Every other
# verb (each a write the audit trail records) and every agent verb reaches the leader only.
READS = frozenset({
    LIST_JOBS, GET_JOB, LIST_AGENTS, PING, STATUS, QUOTA, DEAD_LETTERS, LIST_STUDIES, GET_STUDY, LIST_MODELS,
    GET_MODEL, LIST_VERSIONS, LIST_SHARES, RESOLVE_SHARE, AUDIT,
})
ANY = "any"  # the token before a read's verb that any controller may answer
