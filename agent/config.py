"""The agent's configuration: every interval, timeout and limit, with its default here and only here."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

import msgspec

from incl.agent.docker import DockerSettings
from incl.agent.metadata import MetadataConfig
from incl.agent.spotwatch import SpotWatchConfig
from incl.artifacts.config import StoreConfig
from incl.bus import daemon as _daemon
from incl.bus.connection import Servers


def _default_id() -> str:
    return socket.gethostname()


class AgentConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    agent_id: str = msgspec.field(default_factory=_default_id)
    nats_url: Servers = "nats://127.0.0.1:4222"  # a cluster's nodes: a list, or URLs separated by commas
    creds: str | None = None  # this agent's credential file (incl.auth.keys); None: a server without authentication
    # How the agent proves who it is to NATS: "creds" (the file above, or nothing) or "instance" (on EC2: its signed
    # instance identity document from IMDS, which the controllers' auth callout checks; agent_id must then be the
    # instance id, as the AWS provider's user-data writes it: incl.auth.callout).
    nats_identity: Literal["creds", "instance"] = "creds"
    tls_ca: str | None = None  # the CA certificate the NATS server's is verified against (None: the system's CAs)
    work_dir: str = str(Path.home() / ".incl" / "agent")
    provider: str = "local"
    labels: dict[str, str] = {}
    log_level: str = "info"

    # Capacity advertised to the scheduler; None means "what this host has".
    cpus: float | None = None
    memory: int | None = None

    # Talking to the controller.
    heartbeat_interval: float = 5.0  # until the controller's first reply says otherwise
    request_timeout: float = 5.0
    connect_timeout: float = 5.0
    reconnect_wait: float = 0.5
    retry_initial: float = 0.05
    retry_max: float = 2.0
    assign_fetch_timeout: float = 5.0  # long-poll on the assignment queue
    assign_ack_wait: float = 60.0
    taken_max: int = 4096  # attempts remembered, to drop re-sent copies at once (older ones: the controller says)
    ran_kept_for: float = 86400.0  # an attempt's "started here" mark (work_dir/ran/) outlives its folder this long
    ended_retention: float = 300.0  # ended attempts are reported in heartbeats this long (their exit is stored)

    # Running jobs.
    cancel_grace: float = 10.0  # SIGTERM, then this long, then SIGKILL (a CancelJob can say otherwise)
    gang_start_timeout: float = 3600.0  # a multi-node rank, prepared, waits this long for the others to be ready
    output_drain_timeout: float = 3.0  # a job is over when its command exits: its output is read this much longer
    shell: str = "/bin/bash"
    # Whom process jobs run as (incl.agent.jobuser): "auto" — an agent running as root starts each job as a
    # fresh uid of its own (never root; no job reads another's files or environment) when others can reach
    # work_dir; "agent" — the agent's own user.
    job_user: Literal["auto", "agent"] = "auto"
    job_uid_base: int = 1_000_000  # jobs' uids and gids: from here...
    job_uid_range: int = 65_536  # ...round robin over this many (a uid comes back after that many jobs)

    # GPU telemetry (NVML; no GPU or no driver means no GPUs, never a crash).
    gpu_sample_interval: float = 1.0
    gpu_recording: str | None = None  # play back recorded NVML readings (YAML/JSON) instead of NVML: tests
    # A running job's GPUs, as metric points of its own (`sys/gpu_util` %, `sys/gpu_mem_gib`), this often: its
    # charts show them over time beside what it logs. 0: never.
    gpu_metrics_interval: float = 10.0

    # Shipping logs and metrics.
    flush_interval: float = 0.05
    batch_max_lines: int = 4096
    batch_max_bytes: int = 512 * 1024
    buffer_max_bytes: int = 32 * 2**20  # past this the job's output waits (backpressure), nothing is dropped
    max_line_bytes: int = 64 * 1024  # longer lines are split into pieces of this size
    tail_lines: int = 20  # last lines sent with the exit event, for `incl show`


    # Files: the artifact store (None: the one the controller names at registration) and the Docker runtime.
    store_url: str | None = None
    store: StoreConfig = StoreConfig()
    # The blob and data caches together stay under this many bytes, least recently used evicted first; what a
    # running job uses (its code's blobs, its data views) is never evicted. None: no limit.
    cache_max_bytes: int | None = None
    checkpoint_sync_attempts: int = 5  # a file the job writes while it is read: snapshot again, this many times
    checkpoint_retry_delay: float = 0.2
    docker: DockerSettings = DockerSettings()

    # On EC2 (provider "aws"): instance metadata through IMDSv2, and the spot-interruption watcher. After a notice
    # the jobs get SIGTERM and the time left to the deadline, less this reserve for uploading their checkpoints.
    metadata: MetadataConfig = MetadataConfig()
    spot: SpotWatchConfig = SpotWatchConfig()
    spot_upload_reserve: float = 30.0

    # Prometheus metrics at http://metrics_host:metrics_port/metrics (docs/observability.md). Off by default: local
    # agents share a host (`incl up` starts several), so a fixed port would clash; instances set one (9465).
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"

    def host_cpus(self) -> float:
        return self.cpus if self.cpus is not None else float(os.cpu_count() or 1)

    def host_memory(self) -> int:
        if self.memory is not None:
            return self.memory
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def load_config(path: str | Path | None = None, **overrides: object) -> AgentConfig:
    return _daemon.load_config(AgentConfig, path, overrides)
