"""What each identity may publish and subscribe to on the NATS server: a pure function of the identity.

Everything not allowed is denied (the server's allow lists are closed). The JetStream API is a set of request
subjects, `$JS.API.<verb>.<stream>[.<consumer>[.<filter>]]`, so allowing a verb on one stream is allowing that subject.

- The controller: everything (it owns the buckets and streams and answers every inbox).
- A user: requests under their own name; reading the logs, metrics and study-journal streams the way the client
  library reads them (ordered push consumers, short-lived pull consumers, last-message gets, stream info); replies
  only on their own inbox. Never events, assignments, the KV buckets (`$KV.>`, the `KV_*` streams, direct gets) or any
  stream but those three.
- An agent: requests under its own id; its own events subject; log and metric batches (of any job for now: narrowing
  to the jobs assigned to it is phase 2); its own dead letters; its own assignment consumer only, created with its
  own subject as the filter (the subject pins it), fetched from and acked; the last log or metric batch of a job
  (where a restarted agent resumes shipping); replies only on its own inbox.
"""

from __future__ import annotations

from typing import Any

from incl.auth.identities import AGENT, CONTROLLER, USER, Identity
from incl.proto import subjects

JS = "$JS.API"
# The streams a user reads: log lines, metric points, and HPO studies' journals (`incl.hpo.storage`).
USER_READABLE = (subjects.LOGS_STREAM, subjects.METRICS_STREAM, subjects.STUDIES_STREAM)


def _stream_reader(stream: str) -> list[str]:
    """The JetStream API calls that read `stream` through consumers the reader makes itself, and gets."""
    return [
        f"{JS}.STREAM.INFO.{stream}",
        f"{JS}.STREAM.MSG.GET.{stream}",
        f"{JS}.DIRECT.GET.{stream}",
        f"{JS}.DIRECT.GET.{stream}.>",
        f"{JS}.CONSUMER.CREATE.{stream}",  # an unnamed (ordered, push) consumer
        f"{JS}.CONSUMER.CREATE.{stream}.>",  # a named one, with or without its filter
        f"{JS}.CONSUMER.INFO.{stream}.*",
        f"{JS}.CONSUMER.DELETE.{stream}.*",
        f"{JS}.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.FC.{stream}.>",  # flow-control answers of a push consumer
    ]


def _user(name: str) -> dict[str, Any]:
    publish = [f"{subjects.API_PREFIX}.{subjects.USER}.{name}.>", f"{JS}.STREAM.NAMES"]
    for stream in USER_READABLE:
        publish += _stream_reader(stream)
    return {"publish": {"allow": publish}, "subscribe": {"allow": [f"{subjects.user_inbox(name)}.>"]}}


def _agent(agent_id: str) -> dict[str, Any]:
    consumer = subjects.assign_consumer(agent_id)
    own = f"{subjects.ASSIGN_STREAM}.{consumer}"
    publish = [
        f"{subjects.API_PREFIX}.{subjects.AGENT}.{agent_id}.>",
        subjects.events(agent_id),
        f"{subjects.LOGS_PREFIX}.*",
        f"{subjects.METRICS_PREFIX}.*",
        subjects.dead(consumer),
        f"{JS}.STREAM.MSG.GET.{subjects.LOGS_STREAM}",
        f"{JS}.STREAM.MSG.GET.{subjects.METRICS_STREAM}",
        f"{JS}.CONSUMER.INFO.{own}",
        f"{JS}.CONSUMER.CREATE.{own}.{subjects.assign(agent_id)}",
        f"{JS}.CONSUMER.MSG.NEXT.{own}",
        f"$JS.ACK.{own}.>",
    ]
    return {"publish": {"allow": publish}, "subscribe": {"allow": [f"{subjects.agent_inbox(agent_id)}.>"]}}


def permissions(identity: Identity) -> dict[str, Any]:
    """The `permissions` block of `identity` in the nats-server configuration."""
    if identity.kind == CONTROLLER:
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    if identity.kind == USER:
        return _user(identity.name)
    if identity.kind == AGENT:
        return _agent(identity.name)
    raise ValueError(f"unknown kind of identity {identity.kind!r}")
