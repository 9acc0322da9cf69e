"""The audit trail on the wire: one entry per state-changing request, and the request that reads them back.

Every submit, cancel, study submit or stop, model registration or alias, and every user added or removed, is
recorded by the controller as an `AuditEntry` (who, when, what, on what, how it went, from where) in the stream
`INCL_AUDIT`, which only the controller writes and which keeps its own retention. An entry's subject is
`incl.audit.<kind>.<name>.<verb>`, so the server itself narrows a read to one caller or one verb.

`origin` is what the client says about itself (its host name, and the address the NATS server saw it connect
from, as the server told the client): NATS does not tell a responder who sent a request, so it is self-reported.
"""

from __future__ import annotations

import enum

import msgspec

from incl.proto import subjects
from incl.proto.messages import Origin, Reply, Request

REASON_MAX_CHARS = 500  # a refusal's or error's reason, as recorded
DETAIL_MAX_CHARS = 200  # each value of an entry's detail
ORIGIN_MAX_CHARS = 255  # the host and address a client reports, and its request id


class _Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class Outcome(enum.StrEnum):
    OK = "ok"
    REFUSED = "refused"  # not allowed (the caller, or the request, may not do this)
    ERROR = "error"  # anything else the controller answered with an error (bad input, not found, a failure)


class Actor(_Struct, frozen=True):
    """Who asked, as the request's subject names them (never the payload)."""
    kind: str  # subjects.USER or subjects.AGENT
    name: str


class AuditEntry(_Struct, frozen=True):
    id: str  # unique; also its Nats-Msg-Id, so a publish retried is stored once
    at: float  # unix time the controller answered
    who: Actor
    verb: str  # the API verb (`submit`, `jobs.cancel`, `models.alias`, `users.added`, ...)
    outcome: Outcome
    target: str | None = None  # what it acted on: a job, study or model version id, a user name
    reason: str | None = None  # why it was refused or failed
    detail: dict[str, str] = {}  # a little of what was asked: a job's name and image, a model's alias
    origin: Origin | None = None  # self-reported by the client (see the module docstring)
    request_id: str | None = None  # the request's envelope id, to find it in the daemons' logs


class AuditRequest(Request, frozen=True):
    """The newest entries first, narrowed by caller (`user`), verb and time; `cursor`: the `next` of the page
    before."""
    user: str | None = None
    since: float | None = None  # unix time
    verb: str | None = None
    limit: int | None = None
    cursor: int | None = None


class AuditReply(Reply, frozen=True):
    entries: list[AuditEntry] = msgspec.field(default_factory=list)
    next: int | None = None  # None: no older entry matches


class UserChangedRequest(Request, frozen=True):
    """`incl admin user add|remove|rotate` tells the controller what it changed in the registry, so that it is recorded
    (the registry is a file the CLI writes, not something the controller is asked to change)."""
    name: str
    teams: list[str] = msgspec.field(default_factory=list)
    admin: bool = False


class UserChangedReply(Reply, frozen=True):
    pass


def subject(entry: AuditEntry) -> str:
    return f"{subjects.AUDIT_PREFIX}.{entry.who.kind}.{entry.who.name}.{entry.verb}"


def filter_subject(user: str | None, verb: str | None) -> str:
    """The subjects holding the entries of caller `user` (a user) and `verb`, either or both None for any; ValueError
    for a name or verb that is not made of subject tokens."""
    if user is None and verb is None:
        return f"{subjects.AUDIT_PREFIX}.>"
    who = f"{subjects.USER}.{subjects.name_token(user)}" if user is not None else "*.*"
    if verb is not None and (not all(verb.split(".")) or any(c in verb for c in "*> \t\r\n")):
        raise ValueError(f"{verb!r} is not a verb")
    return f"{subjects.AUDIT_PREFIX}.{who}.{verb if verb is not None else '>'}"


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"
