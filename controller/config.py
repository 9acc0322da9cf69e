"""The controller's configuration: every interval, timeout and limit, with its default here and only here."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from incl.auth.callout import CalloutConfig
from incl.bus import daemon as _daemon
from incl.bus.connection import Servers
from incl.bus.streams import StreamLimits
from incl.controller.audit import AuditConfig
from incl.controller.idle import IdlePolicy
from incl.controller.notify import ClusterNotify, NotifierConfig
from incl.controller.pacing import PacingConfig
from incl.controller.providers.catalog import AwsConfig
from incl.controller.reconcile import ReconcileConfig
from incl.controller.shares import ShareConfig
from incl.proto.messages import Resources


class StudyConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the controller drives HPO studies."""
    step_interval: float = 2.0  # a study's periodic pass, besides the one each change of its trials triggers
    report_interval: float = 0.2  # a running trial's metric points reach Optuna at most this often (in batches)
    metric_poll: float = 0.5  # a follower of a trial's metric wakes this often with nothing new (and reports)
    journal_timeout: float = 10.0  # one read or append of a study's journal
    ended_cache: int = 64  # views of ended studies kept in memory
    retry_initial: float = 1.0  # a study whose driver failed is run again after this, doubling...
    retry_max: float = 60.0  # ...up to this


class ControllerConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    nats_url: Servers = "nats://127.0.0.1:4222"  # a cluster's nodes: a list, or URLs separated by commas
    creds: str | None = None  # the controller's credential file (incl.auth.keys); None: a server without authentication
    tls_ca: str | None = None  # the CA certificate the NATS server's is verified against (None: the system's CAs)
    controller_id: str = msgspec.field(default_factory=socket.gethostname)
    log_level: str = "info"

    # Liveness: the controller tells agents when to report next and owns the deadline (incl.controller.pacing).
    heartbeat_interval: float = 5.0
    agent_lost_after: float = 20.0  # no heartbeat for this long: the agent and its jobs are LOST
    # A large fleet: the interval stretches to keep all heartbeats under this rate (10,000 agents: 25 s)...
    max_heartbeats_per_second: float = 400.0
    heartbeat_jitter: float = 0.25  # ...each reply's interval is stretched by up to this fraction, at random...
    lost_after_beats: float = 2.5  # ...and a stretched interval's deadline is this many of it (never shorter)
    # Fencing: an agent that has not heard from the controller for `agent_lost_after - fence_grace -
    # fence_margin` stops its jobs, SIGKILLs them `fence_grace` later, so none runs when they are handed on.
    fence_grace: float = 5.0
    fence_margin: float = 2.0
    # An attempt the controller has on an agent, that the agent neither runs nor reports ended, for this long:
    # its exit event was lost; the attempt is LOST (and the job requeued while retry allows).
    attempt_missing_after: float = 10.0

    # Several controllers: one leads (a lease in KV), the others stand by (incl.controller.leader). A standby
    # takes over at most leader_ttl + leader_poll after the leader stopped renewing; the leader stops acting
    # leader_margin before its lease can expire. `controller_id` must differ between controllers.
    leader_ttl: float = 2.5
    leader_renew: float = 0.5
    leader_poll: float = 0.2
    leader_margin: float = 0.5
    # A controller that leads again within this many seconds of its last term brings that term's records up to date
    # (the records written since, from the buckets' streams) instead of reading every one again; 0: always reads.
    catch_up_within: Annotated[float, msgspec.Meta(ge=0)] = 300.0

    # Scheduling and dispatch.
    schedule_interval: float = 2.0  # periodic pass, besides the pass every submit and event triggers
    # At most this share of the controller's time goes to planning placements: with a long queue each plan takes
    # longer, and passes are spaced out so that submits, events and heartbeats still get their turn.
    schedule_duty: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5
    assign_resend_after: float = 15.0  # an ASSIGNED attempt that has not started is re-sent (deduplicated)
    # The placements of one pass are written and published this many at a time, side by side: their round trips
    # to NATS overlap, and their commands share socket writes.
    dispatch_in_flight: Annotated[int, msgspec.Meta(ge=1)] = 32
    cancel_grace: float = 10.0  # SIGTERM, then this long, then SIGKILL
    gang_reserve_for: float = 120.0  # a multi-node job first in its class holds fitting agents this long for the rest
    idempotency_ttl: float = 86400.0  # a submit retried with the same key within this returns the same job
    # Memory stays flat however many jobs ran (Nomad's job_gc_threshold, as a count): jobs not over, and trials of
    # studies, are always held; of the jobs over, the most recently ended this many. Older ones are read from the
    # jobs bucket when asked for (a job, a page of `incl ls`), at about 1.6 KB of memory each saved.
    ended_jobs_in_memory: Annotated[int, msgspec.Meta(ge=0)] = 2000

    # NATS.
    connect_timeout: float = 5.0
    reconnect_wait: float = 0.5
    request_timeout: float = 5.0
    events_fetch_batch: int = 256
    events_fetch_timeout: float = 1.0
    events_ack_wait: float = 30.0
    retry_initial: float = 0.05  # backoff on a failing dependency (NATS, the KV store)
    retry_max: float = 2.0
    # Servers each stream and bucket is kept on: 1 on a single NATS server, 3 on a 3-node cluster (at most 5).
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1

    # The artifact store (code snapshots, outputs, checkpoints): file://DIR or s3://bucket/prefix. The CLI and
    # the agents learn it from the controller.
    store_url: str = "file://" + str(Path.home() / ".incl" / "store")

    # The key that encrypts job secrets at rest in the jobs bucket (incl.auth.sealing.Vault), made on first start,
    # mode 0600. Every controller of a cluster must read the same file. None: $INCL_HOME/controller/secrets.key.
    secrets_key_file: str | None = None
    shares: ShareConfig = ShareConfig()  # share links: their signing key (`shares.key_file`) and how long they live

    # Who the users are (teams, team admins, cluster admins: `incl.controller.policy`): the identities registry
    # the NATS server's configuration is rendered from, read again whenever it changes. None: with `creds` set
    # (a server with authentication), $INCL_HOME/auth/identities.json; without, no policy (a server without
    # authentication cannot tell callers apart: every caller is trusted).
    identities_file: str | None = None

    # Shapes agents could come in, besides the provider's own: a job that fits none of these, no known agent and
    # nothing the provider could launch is refused at submit.
    provider_shapes: list[Resources] = []

    # Where agents run (`incl.controller.providers`): "local" (started by hand or by `incl up`) or "aws"
    # (instances for queued jobs, from `aws.catalog`; the reconcile loop launches and terminates them).
    provider: Literal["local", "aws"] = "local"
    aws: AwsConfig = AwsConfig()
    reconcile: ReconcileConfig = ReconcileConfig()
    agent_nats_url: Servers | None = None  # the NATS URL(s) instances' agents dial (None: `nats_url`)
    # One NATS identity per EC2 instance (`incl.auth.callout`): every controller, leader or standby, answers the
    # server's auth callout for agents that connect with their signed instance identity document. Off by default.
    callout: CalloutConfig = CalloutConfig()

    def secrets_key_path(self) -> Path:
        if self.secrets_key_file is not None:
            return Path(self.secrets_key_file)
        return Path(os.environ.get("INCL_HOME", Path.home() / ".incl")) / "controller" / "secrets.key"

    def callout_issuer_path(self) -> Path:
        if self.callout.issuer_seed is not None:
            return Path(self.callout.issuer_seed)
        return Path(os.environ.get("INCL_HOME", Path.home() / ".incl")) / "auth" / "callout.nk"

    def identities_path(self) -> Path | None:
        if self.identities_file is not None:
            return Path(self.identities_file)
        if self.creds is None:
            return None
        return Path(os.environ.get("INCL_HOME", Path.home() / ".incl")) / "auth" / "identities.json"

    def pacing(self) -> PacingConfig:
        return PacingConfig(heartbeat_interval=self.heartbeat_interval,
                            max_heartbeats_per_second=self.max_heartbeats_per_second,
                            heartbeat_jitter=self.heartbeat_jitter, agent_lost_after=self.agent_lost_after,
                            lost_after_beats=self.lost_after_beats, fence_grace=self.fence_grace,
                            fence_margin=self.fence_margin)

    # GPU idle monitor: the cluster default, over which a job's `gpu_idle:` applies.
    gpu_idle: IdlePolicy = IdlePolicy()

    # Quotas and priority classes: the admin's file (see incl.controller.quota); None: no limits.
    quota_file: str | None = None

    # Slack notifications: the cluster's webhook, named channels, and the events sent.
    notify: ClusterNotify = ClusterNotify()
    notifier: NotifierConfig = NotifierConfig()

    streams: StreamLimits = StreamLimits()  # its audit_max_age and audit_max_bytes: the audit trail's retention
    studies: StudyConfig = StudyConfig()
    audit: AuditConfig = AuditConfig()  # recording and reading the audit trail (incl.controller.audit)

    # Prometheus metrics at http://metrics_host:metrics_port/metrics (docs/observability.md); None or 0: none.
    # On by default: one controller per cluster is the process an operator always watches, and a fixed port
    # lets a scrape config find it with no change here. Loopback by default (the endpoint has no
    # authentication): a deployment opens it with `metrics_host: 0.0.0.0`. A port in use is logged, not fatal.
    metrics_port: int | None = 9464
    metrics_host: str = "127.0.0.1"


def load_config(path: str | Path | None = None, **overrides: object) -> ControllerConfig:
    return _daemon.load_config(ControllerConfig, path, overrides)
