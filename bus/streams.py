"""The JetStream streams and KV buckets INCL keeps its durable state in. Only the controller creates and
configures them (`ensure_streams`, `ensure_buckets`); every other part only uses them.

Every stream and bucket is kept on `replicas` servers (1 on a single server, 3 on a cluster, from the controller's
config). A stream or bucket made with another count (an R1 store from before the cluster) is brought to it in
place: JetStream changes a stream's replicas on update."""

from __future__ import annotations

import dataclasses
from typing import Any

import msgspec
import structlog
from nats.js import JetStreamContext, api
from nats.js.errors import APIError, NotFoundError, ServerError

from incl.bus.connection import Bus
from incl.bus.kv import MARKER_TTL, Bucket
from incl.proto import subjects

log = structlog.get_logger()


class StreamLimits(msgspec.Struct, frozen=True, kw_only=True):
    logs_max_bytes: int = 8 * 2**30
    logs_max_age: float = 30 * 86400.0
    metrics_max_bytes: int = 2 * 2**30
    metrics_max_age: float = 90 * 86400.0
    dead_max_bytes: int = 256 * 2**20  # messages a consumer could not handle (`incl admin dead-letters`)
    dead_max_age: float = 30 * 86400.0
    studies_max_bytes: int = 1 * 2**30  # HPO journals: kept with no age limit (every study stays readable)
    audit_max_age: float = 365 * 86400.0  # the audit trail (`incl admin audit`): entries older than this go...
    audit_max_bytes: int = 1 * 2**30  # ...and the oldest go past this size
    duplicate_window: float = 120.0  # publish retries within it are stored once (Nats-Msg-Id)


def _stream(name: str, prefix: str, limits: StreamLimits, replicas: int, *, tokens: str = "*",
            **kwargs: Any) -> api.StreamConfig:
    return api.StreamConfig(name=name, subjects=[f"{prefix}.{tokens}"], storage=api.StorageType.FILE,
                            duplicate_window=limits.duplicate_window, num_replicas=replicas, **kwargs)


def stream_configs(limits: StreamLimits, replicas: int = 1) -> list[api.StreamConfig]:
    work_queue, keep = api.RetentionPolicy.WORK_QUEUE, api.RetentionPolicy.LIMITS
    return [
        _stream(subjects.ASSIGN_STREAM, subjects.ASSIGN_PREFIX, limits, replicas, retention=work_queue),
        _stream(subjects.EVENTS_STREAM, subjects.EVENTS_PREFIX, limits, replicas, retention=work_queue),
        # A job's output: `<team>.<owner>.<job>` (`subjects.logs`). Direct gets: a reader's "the last batch of this
        # job" is a request whose subject names the job's subject, so the server's permissions can scope it.
        _stream(subjects.LOGS_STREAM, subjects.LOGS_PREFIX, limits, replicas, tokens=">", retention=keep,
                max_bytes=limits.logs_max_bytes, max_age=limits.logs_max_age, allow_direct=True),
        _stream(subjects.METRICS_STREAM, subjects.METRICS_PREFIX, limits, replicas, tokens=">", retention=keep,
                max_bytes=limits.metrics_max_bytes, max_age=limits.metrics_max_age, allow_direct=True),
        _stream(subjects.DEAD_STREAM, subjects.DEAD_PREFIX, limits, replicas, retention=keep,
                max_bytes=limits.dead_max_bytes, max_age=limits.dead_max_age),
        # A journal must never lose its oldest entries: past the limit, new appends are refused, not old dropped.
        _stream(subjects.STUDIES_STREAM, subjects.STUDIES_PREFIX, limits, replicas, tokens=">", retention=keep,
                allow_direct=True,
                max_bytes=limits.studies_max_bytes, discard=api.DiscardPolicy.NEW),
        # `incl.audit.<kind>.<name>.<verb>`, the verb of one or more tokens
        _stream(subjects.AUDIT_STREAM, subjects.AUDIT_PREFIX, limits, replicas, tokens=">", retention=keep,
                max_bytes=limits.audit_max_bytes, max_age=limits.audit_max_age),
    ]


INSUFFICIENT_STORAGE = 10047  # JetStream's error code when the streams' max_bytes exceed what it may store
NOT_CLUSTERED = 10074  # "replicas > 1 not supported in non-clustered mode"
NO_PEERS = 10005  # "no suitable peers for placement": fewer JetStream servers up than the replicas asked
MIN_LOGS_BYTES = 64 * 2**20


class StorageTooSmall(Exception):
    """JetStream cannot hold even the smallest useful log retention: say so and what to change, at once."""


class ReplicasUnavailable(Exception):
    """The config asks for more replicas than the NATS servers can hold: a configuration error, said at once."""


def _placement(exc: APIError, name: str, replicas: int) -> ReplicasUnavailable | None:
    """The clear error for a stream or bucket JetStream could not place on `replicas` servers, else None."""
    if exc.err_code == NOT_CLUSTERED:
        return ReplicasUnavailable(f"replicas: {replicas} in the controller's config, but NATS is a single server "
                                   f"(creating {name}: {exc.description}); set replicas: 1, or point nats_url at "
                                   "a cluster")
    if exc.err_code == NO_PEERS:
        return ReplicasUnavailable(f"replicas: {replicas} in the controller's config, but fewer than {replicas} "
                                   f"JetStream servers of the cluster are up (creating {name}: {exc.description}); "
                                   "start the missing servers, or lower replicas to the cluster's size")
    return None


async def _apply(js: JetStreamContext, config: api.StreamConfig) -> None:
    name, replicas = config.name or "", config.num_replicas or 1
    try:
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(config)
            return
        # exists, perhaps with other settings (limits changed in the config, sized down, fewer replicas): in line
        await js.update_stream(config)
    except APIError as exc:
        raise _placement(exc, name, replicas) or exc from None
    if info.config.num_replicas != replicas:
        log.info("stream_replicas_changed", stream=name, was=info.config.num_replicas, now=replicas)


def scaled(limits: StreamLimits, factor: float) -> StreamLimits:
    return msgspec.structs.replace(limits, logs_max_bytes=int(limits.logs_max_bytes * factor),
                                   metrics_max_bytes=int(limits.metrics_max_bytes * factor),
                                   dead_max_bytes=int(limits.dead_max_bytes * factor),
                                   studies_max_bytes=int(limits.studies_max_bytes * factor),
                                   audit_max_bytes=int(limits.audit_max_bytes * factor))


async def ensure_streams(bus: Bus, limits: StreamLimits, replicas: int = 1) -> StreamLimits:
    """Create the streams, or bring their settings in line (only the controller calls this), each on `replicas`
    servers. Streams that do not fit the storage JetStream has (error 10047) are sized down by halves, never
    below MIN_LOGS_BYTES of logs; returns the limits applied."""
    factor = 1.0
    while True:
        applied = scaled(limits, factor) if factor < 1.0 else limits
        try:
            for config in stream_configs(applied, replicas):
                await _apply(bus.jetstream, config)
            return applied
        except ServerError as exc:
            if exc.err_code != INSUFFICIENT_STORAGE:
                raise
            factor /= 2
            if limits.logs_max_bytes * factor < MIN_LOGS_BYTES:
                raise StorageTooSmall(
                    f"JetStream has too little storage for INCL's streams ({exc.description}, even with "
                    f"{applied.logs_max_bytes / 2**20:.0f} MiB of logs): free disk space where NATS stores its "
                    "data ($INCL_HOME for `incl up`), or raise jetstream.max_file_store in the NATS server's "
                    "config") from None


async def _rescale_bucket(js: JetStreamContext, name: str, replicas: int) -> None:
    """A bucket made with another replica count: change its stream's, keeping every other setting (creating it
    again with the new count would be refused as a different configuration)."""
    stream = f"KV_{name}"
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return
    if info.config.num_replicas == replicas:
        return
    try:
        await js.update_stream(dataclasses.replace(info.config, num_replicas=replicas))
    except APIError as exc:
        raise _placement(exc, stream, replicas) or exc from None
    log.info("stream_replicas_changed", stream=stream, was=info.config.num_replicas, now=replicas)


async def ensure_buckets(bus: Bus, submit_ttl: float = 86400.0, replicas: int = 1) -> dict[str, Bucket]:
    """The controller's buckets, each on `replicas` servers; `submit_ttl`: how long a submit's idempotency key is
    remembered."""
    buckets: dict[str, Bucket] = {}
    wanted = ((subjects.JOBS_BUCKET, None), (subjects.AGENTS_BUCKET, None), (subjects.SUBMITS_BUCKET, submit_ttl),
              (subjects.STUDIES_BUCKET, None), (subjects.MODELS_BUCKET, None),
              (subjects.SHARES_BUCKET, None))
    # Buckets whose keys come and go: a deleted key's marker expires (`Bucket.delete`), so they stay bounded.
    passing = ((subjects.IDLE_BUCKET, None), (subjects.NOTICES_BUCKET, None))
    for name, ttl in (*wanted, *passing):
        await _rescale_bucket(bus.jetstream, name, replicas)
        markers = MARKER_TTL if (name, ttl) in passing else None
        config = api.KeyValueConfig(bucket=name, history=1, storage=api.StorageType.FILE, ttl=ttl, replicas=replicas,
                                    limit_marker_ttl=markers)
        try:
            kv = await bus.jetstream.create_key_value(config)
        except APIError as exc:
            raise _placement(exc, f"bucket {name}", replicas) or exc from None
        buckets[name] = Bucket(kv)
    return buckets


async def ensure_expiring_bucket(bus: Bus, name: str, ttl: float, replicas: int) -> Bucket:
    """A bucket whose entries live `ttl` seconds past their last write (the controllers' lease), on file storage
    so that a NATS restart ends no lease; made again in place if it exists with another TTL or replica count."""
    config = api.KeyValueConfig(bucket=name, history=1, ttl=ttl, replicas=replicas, storage=api.StorageType.FILE,
                                limit_marker_ttl=MARKER_TTL)  # a removed key leaves no marker for long
    js = bus.jetstream
    try:
        return Bucket(await js.create_key_value(config))
    except APIError:
        info = await js.stream_info(f"KV_{name}")
        try:
            await js.update_stream(dataclasses.replace(info.config, max_age=ttl, num_replicas=replicas))
        except APIError as exc:
            raise _placement(exc, f"bucket {name}", replicas) or exc from None
        return Bucket(await js.key_value(name))
