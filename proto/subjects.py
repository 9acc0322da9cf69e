"""NATS subject, stream, consumer and bucket names: the only place they are spelled."""

# Request-reply, served by the controller.
API_PREFIX = "incl.api"
SUBMIT = f"{API_PREFIX}.submit"
LIST_JOBS = f"{API_PREFIX}.jobs.list"
GET_JOB = f"{API_PREFIX}.jobs.get"
CANCEL = f"{API_PREFIX}.jobs.cancel"
LIST_AGENTS = f"{API_PREFIX}.agents.list"
REGISTER = f"{API_PREFIX}.agents.register"
HEARTBEAT = f"{API_PREFIX}.agents.heartbeat"
ASSIGNMENT = f"{API_PREFIX}.agents.assignment"
PING = f"{API_PREFIX}.ping"
STATUS = f"{API_PREFIX}.status"
QUOTA = f"{API_PREFIX}.quota"
DEAD_LETTERS = f"{API_PREFIX}.admin.dead_letters"
SUBMIT_STUDY = f"{API_PREFIX}.studies.submit"
LIST_STUDIES = f"{API_PREFIX}.studies.list"
GET_STUDY = f"{API_PREFIX}.studies.get"
STOP_STUDY = f"{API_PREFIX}.studies.stop"

# Controller -> agent: a JetStream work queue, one durable consumer per agent.
ASSIGN_STREAM = "INCL_ASSIGN"
ASSIGN_PREFIX = "incl.assign"

# Agent -> controller: job lifecycle events, durable until the controller has applied them.
EVENTS_STREAM = "INCL_EVENTS"
EVENTS_PREFIX = "incl.events"
EVENTS_CONSUMER = "controller"

# Agent -> readers: log lines and metric points, one subject per job.
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


def assign(agent_id: str) -> str:
    return f"{ASSIGN_PREFIX}.{agent_id}"


def assign_consumer(agent_id: str) -> str:
    return f"agent-{agent_id}"


def events(agent_id: str) -> str:
    return f"{EVENTS_PREFIX}.{agent_id}"


def logs(job_id: str) -> str:
    return f"{LOGS_PREFIX}.{job_id}"


def metrics(job_id: str) -> str:
    return f"{METRICS_PREFIX}.{job_id}"


def dead(source: str) -> str:
    return f"{DEAD_PREFIX}.{source}"


def study_journal(study_id: str) -> str:
    return f"{STUDIES_PREFIX}.{study_id}"
