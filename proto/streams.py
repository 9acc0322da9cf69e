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
    duplicate_window: float = 120.0  # publish retries within it are stored once (Nats-Msg-Id)


def stream_configs(limits: StreamLimits) -> list[api.StreamConfig]:
    file = api.StorageType.FILE
    return [
        api.StreamConfig(
            name=subjects.ASSIGN_STREAM,
            subjects=[f"{subjects.ASSIGN_PREFIX}.*"],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=file,
            duplicate_window=limits.duplicate_window,
        ),
        api.StreamConfig(
            name=subjects.EVENTS_STREAM,
            subjects=[f"{subjects.EVENTS_PREFIX}.*"],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=file,
            duplicate_window=limits.duplicate_window,
        ),
        api.StreamConfig(
            name=subjects.LOGS_STREAM,
            subjects=[f"{subjects.LOGS_PREFIX}.*"],
            retention=api.RetentionPolicy.LIMITS,
            storage=file,
            max_bytes=limits.logs_max_bytes,
            max_age=limits.logs_max_age,
            duplicate_window=limits.duplicate_window,
        ),
        api.StreamConfig(
            name=subjects.METRICS_STREAM,
            subjects=[f"{subjects.METRICS_PREFIX}.*"],
            retention=api.RetentionPolicy.LIMITS,
            storage=file,
            max_bytes=limits.metrics_max_bytes,
            max_age=limits.metrics_max_age,
            duplicate_window=limits.duplicate_window,
        ),
    ]


async def ensure_streams(js: JetStreamContext, limits: StreamLimits) -> None:
    for config in stream_configs(limits):
        try:
            await js.add_stream(config)
        except BadRequestError:
            # Exists with other settings (e.g. limits changed in the config): bring it in line.
            await js.update_stream(config)


async def ensure_buckets(js: JetStreamContext) -> dict[str, object]:
    buckets = {}
    for name in (subjects.JOBS_BUCKET, subjects.AGENTS_BUCKET):
        buckets[name] = await js.create_key_value(
            api.KeyValueConfig(bucket=name, history=1, storage=api.StorageType.FILE)
        )
    return buckets
