"""The JetStream streams and KV buckets INCL keeps its durable state in, created idempotently by any side."""

from __future__ import annotations

import msgspec
from nats.js import JetStreamContext
from nats.js import api
from nats.js.errors import BadRequestError

from incl.proto import subjects


class StreamLimits(msgspec.Struct, frozen=True, kw_only=True):
    logs_max_bytes: int = 8 * 2**30
    logs_max_age: float = 30 * 86400.0
    metrics_max_bytes: int = 2 * 2**30
    metrics_max_age: float = 90 * 86400.0
    dead_max_bytes: int = 256 * 2**20  # messages a consumer could not handle (`incl admin dead-letters`)
    dead_max_age: float = 30 * 86400.0
    duplicate_window: float = 120.0  # publish retries within it are stored once (Nats-Msg-Id)


def _stream(name: str, prefix: str, limits: StreamLimits, **kwargs: object) -> api.StreamConfig:
    return api.StreamConfig(name=name, subjects=[f"{prefix}.*"], storage=api.StorageType.FILE,
                            duplicate_window=limits.duplicate_window, **kwargs)


def stream_configs(limits: StreamLimits) -> list[api.StreamConfig]:
    work_queue, keep = api.RetentionPolicy.WORK_QUEUE, api.RetentionPolicy.LIMITS
    return [
        _stream(subjects.ASSIGN_STREAM, subjects.ASSIGN_PREFIX, limits, retention=work_queue),
        _stream(subjects.EVENTS_STREAM, subjects.EVENTS_PREFIX, limits, retention=work_queue),
        _stream(subjects.LOGS_STREAM, subjects.LOGS_PREFIX, limits, retention=keep,
                max_bytes=limits.logs_max_bytes, max_age=limits.logs_max_age),
        _stream(subjects.METRICS_STREAM, subjects.METRICS_PREFIX, limits, retention=keep,
                max_bytes=limits.metrics_max_bytes, max_age=limits.metrics_max_age),
        _stream(subjects.DEAD_STREAM, subjects.DEAD_PREFIX, limits, retention=keep,
                max_bytes=limits.dead_max_bytes, max_age=limits.dead_max_age),
    ]


async def ensure_streams(js: JetStreamContext, limits: StreamLimits) -> None:
    for config in stream_configs(limits):
        try:
            await js.add_stream(config)
        except BadRequestError:
            # Exists with other settings (e.g. limits changed in the config): bring it in line.
            await js.update_stream(config)


async def ensure_buckets(js: JetStreamContext, submit_ttl: float = 86400.0) -> dict[str, object]:
    """The controller's buckets; `submit_ttl`: how long a submit's idempotency key is remembered."""
    buckets = {}
    for name, ttl in ((subjects.JOBS_BUCKET, None), (subjects.AGENTS_BUCKET, None), (subjects.SUBMITS_BUCKET, submit_ttl)):
        buckets[name] = await js.create_key_value(
            api.KeyValueConfig(bucket=name, history=1, storage=api.StorageType.FILE, ttl=ttl)
        )
    return buckets
