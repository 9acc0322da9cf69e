"""What each identity may publish and subscribe to on the NATS server: a pure function of the identity.

Everything not allowed is denied (the server's allow lists are closed). The JetStream API is a set of request
subjects, `$JS.API.<verb>.<stream>[.<consumer>[.<filter>]]`, so allowing a verb on one stream is allowing that subject.

- The controller: everything (it owns the buckets and streams and answers every inbox).
- A user: requests under their own name; the output (logs, metrics) of the jobs they may read, as the policy says
  (`incl.controller.policy`): their own jobs', `incl.logs.*.<user>.<job>.<key>.<agent>`, and their teams',
  `incl.logs.<team>.*.<job>.<key>.<agent>` (a cluster admin: every job's); the same one token shorter, the subjects
  agents wrote before the agent token (`subjects.legacy_output`), which nobody may write any more. The output is
  read through consumers whose filter is in the API subject (`$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`:
  the server refuses a payload whose filter differs) and by direct gets whose subject names the subject read; a
  reader's filter has `*` for the agent token, which the rights' `*` matches; the forms that carry what they read
  in the payload
  (`CONSUMER.CREATE.<stream>`, `STREAM.MSG.GET`, `DIRECT.GET.<stream>` by sequence, `STREAM.INFO`) are denied.
  Studies' journals (`incl.hpo.storage`) are scoped the same way. Replies only on their own inbox.
  Never events, assignments, the KV buckets (`$KV.>`, the `KV_*` streams, direct gets) or any other stream.
- An agent: requests under its own id; its own events subject; log and metric batches on subjects that end in its
  own id only (`incl.logs.<team>.<owner>.<job>.<key>.<agent>`); its own dead letters; its own assignment consumer
  only, created with its own subject as the filter (the subject pins it), fetched from and acked; the last log or
  metric batch on its own subjects by direct get (where a restarted agent resumes shipping); replies only on its own
  inbox.

What the server now refuses an agent: a batch on any subject that does not end in its own id, so one agent's
credentials cannot write another agent's batches, nor on the old subjects without the agent token; and the last
batch of any subject but its own. What it still accepts: a batch under its own id on a job it was not assigned, if it
knows the job's owner, team, id and its attempt's random key (`Attempt.output_key`). Readers drop those: they keep only
the batches of the agents the controller assigned the attempt (`incl.bus.output`), so such a batch is never shown.
"""

from __future__ import annotations

from typing import Any

from incl.auth.identities import AGENT, CONTROLLER, USER, Identity
from incl.proto import subjects

JS = "$JS.API"
# The streams of jobs' output, `<prefix>.<team>.<owner>.<job>.<key>.<agent>` (`subjects.logs`).
OUTPUT = ((subjects.LOGS_STREAM, subjects.LOGS_PREFIX), (subjects.METRICS_STREAM, subjects.METRICS_PREFIX))


OUTPUT_REST = 3  # the tokens of a job's output subject after its owner: `<job>.<key>.<agent>`


def output_scopes(identity: Identity, rest: int = OUTPUT_REST) -> list[str]:
    """The `<team>.<owner>.<...>` subjects (wildcards) a user may read: `rest` tokens after the owner (a job's
    output: `<job>.<key>.<agent>`, OUTPUT_REST; one fewer, the subjects from before the agent token; a study's
    journal: `<study>`)."""
    if identity.admin:
        return [">"]
    teams = sorted(set(identity.teams) | set(identity.team_admin))
    tail = ".*" * rest
    return [f"*.{identity.name}{tail}", *(f"{team}.*{tail}" for team in teams)]


def _output_reader(stream: str, prefix: str, scopes: list[str]) -> list[str]:
    """Reading `stream`'s subjects that `scopes` match, and nothing else of it (see the module's docstring)."""
    allowed = [f"{JS}.CONSUMER.MSG.NEXT.{stream}.*", f"{JS}.CONSUMER.DELETE.{stream}.*"]
    for scope in scopes:
        allowed += [f"{JS}.CONSUMER.CREATE.{stream}.*.{prefix}.{scope}", f"{JS}.DIRECT.GET.{stream}.{prefix}.{scope}"]
    return allowed


def _user(identity: Identity) -> dict[str, Any]:
    name = identity.name
    publish = [f"{subjects.API_PREFIX}.{subjects.USER}.{name}.>", f"{JS}.STREAM.NAMES"]
    # The subjects from before the agent token are read too (one token shorter): nobody may write there any more.
    scopes = list(dict.fromkeys([*output_scopes(identity), *output_scopes(identity, rest=OUTPUT_REST - 1)]))
    for stream, prefix in OUTPUT:
        publish += _output_reader(stream, prefix, scopes)
    # Studies' journals (`incl.hpo.storage`), scoped as the output: a named consumer, a direct get by subject.
    publish += _output_reader(subjects.STUDIES_STREAM, subjects.STUDIES_PREFIX, output_scopes(identity, rest=1))
    return {"publish": {"allow": publish}, "subscribe": {"allow": [f"{subjects.user_inbox(name)}.>"]}}


def _agent(agent_id: str) -> dict[str, Any]:
    consumer = subjects.assign_consumer(agent_id)
    own = f"{subjects.ASSIGN_STREAM}.{consumer}"
    # Its own output subjects, `<prefix>.<team>.<owner>.<job>.<key>.<agent_id>` (`subjects.output`), of any job.
    mine = [(stream, f"{prefix}.*.*.*.*.{agent_id}") for stream, prefix in OUTPUT]
    publish = [
        f"{subjects.API_PREFIX}.{subjects.AGENT}.{agent_id}.>",
        subjects.events(agent_id),
        *(subject for _, subject in mine),
        subjects.dead(consumer),
        *(f"{JS}.DIRECT.GET.{stream}.{subject}" for stream, subject in mine),
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
        return _user(identity)
    if identity.kind == AGENT:
        return _agent(identity.name)
    raise ValueError(f"unknown kind of identity {identity.kind!r}")
