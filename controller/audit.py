"""The audit trail: every state-changing request recorded with who asked, when, what, on what, from where and how
it was answered, in the stream INCL_AUDIT (own retention: `streams.audit_max_age`, `streams.audit_max_bytes`).

The API records an entry after it has answered a request whose verb is in AUDITED, from the request and the answer
itself, so a refusal or an error raised anywhere in the handler is recorded as the caller saw it. The entry is
published before the reply goes out, retried on a failing NATS (`incl.bus.retry`) for at most `record_timeout`,
then logged whole as `audit_lost`: an entry is never dropped in silence, and the API never waits long on it.
Reads (`incl admin audit`) go through `read` (`incl.controller.auditread`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import structlog

from incl.bus.connection import Bus
from incl.bus.retry import TRANSIENT, forever
from incl.controller import auditread, policy
from incl.controller.policy import Principal
from incl.proto import audit, subjects
from incl.proto.audit import Actor, AuditEntry, AuditReply, AuditRequest, Outcome, UserChangedRequest
from incl.proto.codec import Decoder
from incl.proto.errors import DecodeError, InclError, NotAllowed, Unavailable
from incl.proto.messages import CancelReply, CancelRequest, ErrorReply, Origin, SubmitReply, SubmitRequest
from incl.proto.registry import AliasModelReply, AliasModelRequest, RegisterModelReply, RegisterModelRequest
from incl.proto.shares import CreateShareReply, CreateShareRequest, RevokeShareReply, RevokeShareRequest
from incl.proto.studies import StopStudyReply, StopStudyRequest, SubmitStudyReply, SubmitStudyRequest

log = structlog.get_logger()

# The user verbs that change something (reads are not recorded).
AUDITED = frozenset({subjects.SUBMIT, subjects.CANCEL, subjects.SUBMIT_STUDY, subjects.STOP_STUDY,
                     subjects.REGISTER_MODEL, subjects.ALIAS_MODEL, subjects.USERS_ADDED, subjects.USERS_REMOVED,
                     subjects.USERS_ROTATED, subjects.CREATE_SHARE, subjects.REVOKE_SHARE})


class AuditConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    record_timeout: float = 5.0  # an entry's publish is retried this long, then logged as `audit_lost`
    read_timeout: float = 10.0  # one step of a read (a consumer made, a batch fetched)
    read_window: int = 4096  # a read scans the stream back this many entries at a time (doubling while few match)
    read_window_max: int = 262144
    read_batch: int = 512


_replies: Decoder[Any] = Decoder(SubmitReply | CancelReply | SubmitStudyReply | StopStudyReply | RegisterModelReply
                                 | AliasModelReply | audit.UserChangedReply | CreateShareReply | RevokeShareReply
                                 | ErrorReply)


def outcome_of(reply: object) -> tuple[Outcome, str | None]:
    """How the caller was answered: ok, refused (not allowed) or an error, with its reason."""
    if not isinstance(reply, ErrorReply):
        return Outcome.OK, None
    kind = Outcome.REFUSED if reply.code == NotAllowed.code else Outcome.ERROR
    return kind, audit.cut(reply.message, audit.REASON_MAX_CHARS)


def described(req: object, reply: object) -> tuple[str | None, dict[str, str]]:
    """What a request acted on (the id the answer gave it, else the one it named) and a little of what it asked."""
    detail: dict[str, Any] = {}
    target: str | None = None
    match req:
        case SubmitRequest(spec=spec) | SubmitStudyRequest(spec=spec):
            detail = {"name": spec.name, "image": spec.image}
            match reply:
                case SubmitReply(job=job):
                    target = job.id
                case SubmitStudyReply(study=study):
                    target = study.id
        case CancelRequest(job_id=job_id):
            target = job_id
        case StopStudyRequest(study_id=study_id, cancel=cancel):
            target, detail = study_id, {"cancel": "yes" if cancel else None}
        case RegisterModelRequest(name=name, job_id=job_id, alias=alias):
            number = reply.version.version if isinstance(reply, RegisterModelReply) else None
            target = name if number is None else f"{name}:v{number}"
            detail = {"job": job_id, "alias": alias}
        case AliasModelRequest(name=name, version=version, alias=alias):
            target, detail = f"{name}:v{version}", {"alias": alias}
            if isinstance(reply, AliasModelReply) and reply.previous is not None:
                detail["previous"] = f"v{reply.previous}"
        case CreateShareRequest(target=shared, expires_in=expires_in):
            what = f"{shared.model}:v{shared.version}" if shared.model else f"{shared.job_id}:{shared.path or '/'}"
            target = reply.share.id if isinstance(reply, CreateShareReply) else None
            detail = {"what": what, "expires_in": f"{expires_in:g}s" if expires_in else None}
        case RevokeShareRequest(share_id=share_id):
            target = share_id
        case UserChangedRequest(name=name, teams=teams, admin=admin):
            target, detail = name, {"teams": ",".join(teams) or None, "admin": "yes" if admin else None}
    return target, {k: audit.cut(str(v), audit.DETAIL_MAX_CHARS) for k, v in detail.items() if v is not None}


def entry_of(who: subjects.Caller, req: object | None, reply: object, at: float) -> AuditEntry:
    """The entry for one answered request (pure). `req` None: it could not be decoded."""
    outcome, reason = outcome_of(reply)
    target, detail = described(req, reply)
    meta = getattr(req, "meta", None)
    return AuditEntry(id=uuid.uuid4().hex, at=at, who=Actor(kind=who.kind, name=who.name), verb=who.verb,
                      outcome=outcome, target=target, reason=reason, detail=detail,
                      origin=_bounded(meta.origin) if meta is not None else None,
                      request_id=audit.cut(meta.request_id, audit.ORIGIN_MAX_CHARS) if meta is not None else None)


def _bounded(origin: Origin | None) -> Origin | None:
    """The client's word on where it is, cut to size: it is whatever the client sent."""
    if origin is None:
        return None
    address = audit.cut(origin.address, audit.ORIGIN_MAX_CHARS) if origin.address is not None else None
    return Origin(host=audit.cut(origin.host, audit.ORIGIN_MAX_CHARS), address=address)


class Audit:
    def __init__(self, bus: Bus, cfg: AuditConfig, *, retry_initial: float, retry_max: float, page_bytes: int,
                 fence: Callable[[], None] = lambda: None) -> None:
        """`fence`: called before every entry is written, as before every record (the leader's lease check: a
        deposed leader's late answer is not recorded twice, its NotLeader ends its term)."""
        self._bus, self._cfg, self._fence = bus, cfg, fence
        self._retry = (retry_initial, retry_max)
        self._page_bytes = page_bytes

    async def answered(self, who: subjects.Caller, decoder: Decoder[Any], data: bytes, answer: bytes) -> None:
        """Record a state-changing request as it was answered (`data` and `answer` as they crossed the wire)."""
        try:
            req: object | None = decoder.decode(data)
        except InclError:  # undecodable, another protocol version: recorded with what the subject says
            req = None
        try:
            reply = _replies.decode(answer)
        except DecodeError:  # not a reply this module knows: record what is known, as an error
            reply = ErrorReply(code="internal", message="an answer the audit could not read")
        await self.record(entry_of(who, req, reply, time.time()))

    async def record(self, entry: AuditEntry) -> None:
        """Store `entry` (once, whatever the retries), or log it whole as lost after `record_timeout`."""
        self._fence()
        data, subject = msgspec.msgpack.encode(entry), audit.subject(entry)
        initial, maximum = self._retry

        async def publish() -> None:
            await self._bus.publish_durable(subject, data, msg_id=entry.id, timeout=self._cfg.record_timeout)

        try:
            await asyncio.wait_for(forever("audit_record", publish, initial=initial, maximum=maximum),
                                   self._cfg.record_timeout)
        except Exception as exc:  # noqa: BLE001 - whatever failed, the entry is in the log instead
            log.error("audit_lost", error=repr(exc), **msgspec.to_builtins(entry))

    async def read(self, req: AuditRequest, who: Principal) -> AuditReply:
        """The newest entries first, as `req` narrows them; for cluster admins only (it says who did what to
        every job)."""
        policy.check_admin(who, "reading the audit trail")
        try:
            return await auditread.newest(self._bus, req, self._cfg, self._page_bytes)
        except TRANSIENT as exc:
            raise Unavailable(f"the audit trail could not be read now ({type(exc).__name__}); try again") from None
