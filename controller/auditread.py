"""Reading the audit trail newest first (`incl admin audit`).

JetStream reads forward only, so the stream is scanned back from its newest entry (or from the cursor) in windows
of sequences, each read forward through one short-lived consumer that the server filters by subject (the caller,
the verb: `incl.proto.audit.filter_subject`); a window that finds few doubles the next. The scan ends when a page is
full, or at `since` (the first sequence stored at or after it, one request) or the stream's first entry. A page is
at most `limit` entries and `max_bytes` encoded; its `next` is the sequence of its oldest entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from incl.bus.connection import Bus, Stored
from incl.proto import audit, limits, subjects
from incl.proto.audit import AuditEntry, AuditReply, AuditRequest
from incl.proto.codec import Decoder, encode
from incl.proto.errors import BadRequest, DecodeError

if TYPE_CHECKING:
    from incl.controller.audit import AuditConfig

_decoder: Decoder[AuditEntry] = Decoder(AuditEntry)


def decoded(stored: Iterable[Stored], since: float | None) -> list[tuple[int, AuditEntry]]:
    """Each entry with its sequence, in the order given; what does not decode (not ours) or is older than `since`
    is left out."""
    out = []
    for message in stored:
        try:
            entry = _decoder.decode(message.data)
        except DecodeError:
            continue
        if since is None or entry.at >= since:
            out.append((message.seq, entry))
    return out


def page(found: list[tuple[int, AuditEntry]], limit: int, max_bytes: int, more: bool) -> AuditReply:
    """The first `limit` of `found` (newest first) that fit in `max_bytes` (one at least); `more`: older entries
    may match beyond `found`."""
    chosen: list[tuple[int, AuditEntry]] = []
    size = 0
    for seq, entry in found[:limit]:
        size += len(encode(entry))
        if chosen and size > max_bytes:
            break
        chosen.append((seq, entry))
    left = more or len(chosen) < len(found)
    return AuditReply(entries=[e for _, e in chosen], next=chosen[-1][0] if left and chosen else None)


async def newest(bus: Bus, req: AuditRequest, cfg: AuditConfig, max_bytes: int) -> AuditReply:
    try:
        wanted = audit.filter_subject(req.user, req.verb)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    limit = max(1, min(req.limit or limits.PAGE_MAX_ITEMS, limits.PAGE_MAX_ITEMS))
    state = await bus.state(subjects.AUDIT_STREAM)
    floor = state.first_seq
    if req.since is not None:
        start = await bus.seq_at(subjects.AUDIT_STREAM, req.since, cfg.read_timeout)
        if start is None:
            return AuditReply()
        floor = max(floor, start)
    top = state.last_seq if req.cursor is None else min(state.last_seq, req.cursor - 1)
    found: list[tuple[int, AuditEntry]] = []
    window = cfg.read_window
    while top >= floor and len(found) <= limit:  # one more than a page: then there is a next
        low = max(floor, top - window + 1)
        stored = await bus.read_subject(subjects.AUDIT_STREAM, wanted, low, to_seq=top, batch=cfg.read_batch,
                                        timeout=cfg.read_timeout, inactive=cfg.read_timeout * 2)
        found += decoded(reversed(stored), req.since)
        top = low - 1
        window = min(window * 2, cfg.read_window_max)
    return page(found, limit, max_bytes, more=top >= floor)
