"""The web server's configuration: every timeout, interval and bound, with its default here and only here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from incl.bus import daemon

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class WebConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    nats_url: str = "nats://127.0.0.1:4222"
    creds: str | None = None  # whose rights the server acts with (default: the CLI's, `resolve_creds`)
    tls_ca: str | None = None  # the CA the NATS server's certificate is verified against (default: the CLI's)
    host: str = "127.0.0.1"
    port: int = 8470
    # Host headers the server answers besides its own address and localhost (a DNS name it is published under).
    # A page on another site cannot pass the checks by pointing its own name at this address (DNS rebinding).
    allowed_hosts: list[str] = []
    # The address people reach this server at (`https://incl.example.com`), for the share links it makes; None:
    # the address the request that asks for one came to.
    public_url: str | None = None
    log_level: str = "info"
    # Sign people in (incl.web.sessions): each acts with their own rights, through a bus connection of their own.
    # Off: every request acts as the server's own identity (`creds`), which is for one person on loopback only.
    sign_in: bool = False
    session_idle: float = 8 * 3600.0  # a session unused this long is closed (its connection and key dropped)
    sessions_max: int = 256  # at most this many at once (the oldest makes room)

    request_timeout: float = 10.0  # one request to the controller
    # A read the leading controller has not answered within this long is asked of any controller too (a standby
    # answers from its warm copy: incl.controller.standby); None asks the leader only (read-your-writes).
    hedge_after: float | None = 0.25
    # The jobs listing is read whole from the controller (its pages are oldest first, with no text filter) and
    # shared by every request for this long, so that many tabs refreshing cost one read.
    jobs_cache_ttl: float = 2.0
    page_default: int = 50  # jobs per page of /api/jobs
    page_max: int = 500
    metric_points: int = 2000  # above this, a metric's points are reduced to min/max per bucket
    metric_points_max: int = 20000  # the most a client may ask for with ?points=
    # Jobs' collected metric points are kept between requests (incl.web.pointcache), at most this many in all
    # (16 bytes each: 80 MB), the least recently used job going first; 0 keeps none.
    metric_cache_points: int = 5_000_000
    metric_pull_batch: int = 1024  # metric batches one pull request of a chart's read may carry

    # Live events (server-sent events): each client has its own queue of at most `stream_queue_bytes` of events; a
    # client that leaves it full for `slow_client_after` seconds is dropped (it reconnects with Last-Event-ID).
    stream_queue_bytes: int = 4 * 2**20
    slow_client_after: float = 5.0
    stream_poll: float = 0.25  # a follower of a stream wakes this often with nothing new
    state_poll: float = 1.0  # how often a stream reads the job's record for state changes
    stream_keepalive: float = 15.0  # a comment line this often keeps proxies from closing a quiet stream
    stream_retry_ms: int = 1000  # how soon a browser reconnects a dropped stream
    shutdown_grace: float = 2.0  # open responses get this long to finish when the server stops

    # The Compare, Study and Cluster pages (incl.web.views).
    compare_max: int = 10  # jobs one /api/compare may name
    cluster_idle_reads: int = 16  # job records read at once to find idle GPUs for /api/cluster

    def __post_init__(self) -> None:
        if not self.sign_in and self.host not in LOOPBACK:
            raise ValueError(f"host {self.host!r} lets other hosts reach the web UI, and without sign_in every one "
                             "of them would act as the server's own identity: set sign_in: true (--sign-in)")


def load_config(path: str | Path | None, **overrides: Any) -> WebConfig:
    return daemon.load_config(WebConfig, path, overrides)
