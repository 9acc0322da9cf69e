"""The audit trail's pure parts: `--since` parsing, the subject filters, an entry made from a request and its answer,
and a page of the newest entries."""

from __future__ import annotations

import datetime

import pytest

from incl.bus.connection import Stored
from incl.cli.audit import parse_since
from incl.controller.audit import entry_of
from incl.controller.auditread import decoded, page
from incl.proto import audit, subjects
from incl.proto.audit import Actor, AuditEntry, Outcome
from incl.proto.codec import encode
from incl.proto.messages import CancelRequest, Envelope, ErrorReply, Job, JobState, Origin, SubmitReply, SubmitRequest
from incl.proto.registry import AliasModelReply, AliasModelRequest, ModelAlias
from incl.proto.spec import load_spec

NOW = 1_800_000_000.0
ALICE = subjects.Caller(kind=subjects.USER, name="alice", verb=subjects.SUBMIT)


def test_since_takes_a_duration_back_from_now_or_a_date_and_time() -> None:
    assert parse_since("90s", NOW) == NOW - 90
    assert parse_since("30m", NOW) == NOW - 1800
    assert parse_since("1h", NOW) == NOW - 3600
    assert parse_since("1.5h", NOW) == NOW - 5400
    assert parse_since("2d", NOW) == NOW - 2 * 86400
    assert parse_since("1w", NOW) == NOW - 7 * 86400
    local = datetime.datetime(2026, 11, 30, 10, 0).timestamp()
    assert parse_since("2026-11-30T10:00", NOW) == local
    assert parse_since("2026-11-30", NOW) == datetime.datetime(2026, 11, 30).timestamp()
    assert parse_since("2026-11-30T10:00+00:00", NOW) == datetime.datetime(2026, 11, 30, 10, tzinfo=datetime.UTC
                                                                           ).timestamp()
    for bad in ("yesterday", "1y", "-1h", ""):
        with pytest.raises(ValueError, match="neither a duration"):
            parse_since(bad, NOW)


def test_the_filters_are_subjects_the_server_matches() -> None:
    assert audit.filter_subject(None, None) == "incl.audit.>"
    assert audit.filter_subject("bob", None) == "incl.audit.user.bob.>"
    assert audit.filter_subject(None, "jobs.cancel") == "incl.audit.*.*.jobs.cancel"
    assert audit.filter_subject("bob", "submit") == "incl.audit.user.bob.submit"
    entry = AuditEntry(id="x", at=NOW, who=Actor(kind="user", name="bob"), verb="jobs.cancel", outcome=Outcome.OK)
    assert audit.subject(entry) == "incl.audit.user.bob.jobs.cancel"
    for user, verb in (("bo.b", None), ("*", None), (None, "jobs.>"), (None, "jobs..cancel"), (None, "a b")):
        with pytest.raises(ValueError):
            audit.filter_subject(user, verb)


def _job(job_id: str) -> Job:
    return Job(id=job_id, spec=load_spec({"run": "true"}), user="alice", state=JobState.QUEUED, submitted_at=NOW,
               updated_at=NOW)


def test_an_entry_says_who_what_on_what_from_where_and_how_it_went() -> None:
    origin = Origin(host="laptop", address="10.0.0.7")
    spec = load_spec({"run": "python train.py", "name": "resnet", "image": "pytorch:2"})
    req = SubmitRequest(meta=Envelope.new("cli:alice", origin=origin), spec=spec, user="alice")
    ok = entry_of(ALICE, req, SubmitReply(job=_job("j-7")), NOW)
    assert (ok.who, ok.verb, ok.target, ok.outcome, ok.reason) == (Actor(kind="user", name="alice"), "submit", "j-7",
                                                                   Outcome.OK, None)
    assert ok.detail == {"name": "resnet", "image": "pytorch:2"}
    assert (ok.origin, ok.request_id, ok.at) == (origin, req.meta.request_id, NOW)

    refused = entry_of(ALICE, req, ErrorReply(code="not_allowed", message="not allowed: names user 'bob'"), NOW)
    assert (refused.outcome, refused.reason, refused.target) == (Outcome.REFUSED, "not allowed: names user 'bob'",
                                                                 None)
    long = entry_of(ALICE._replace(verb=subjects.CANCEL), CancelRequest(meta=Envelope.new("x"), job_id="j-9"),
                    ErrorReply(code="not_found", message="x" * 5000), NOW)
    assert (long.outcome, long.target, len(long.reason or "")) == (Outcome.ERROR, "j-9", audit.REASON_MAX_CHARS)

    boastful = SubmitRequest(meta=Envelope.new("x", origin=Origin(host="h" * 10**5, address="a" * 10**5)), spec=spec,
                             user="alice")
    cut = entry_of(ALICE, boastful, SubmitReply(job=_job("j-8")), NOW).origin
    assert cut is not None and len(cut.host) == len(cut.address or "") == audit.ORIGIN_MAX_CHARS

    garbage = entry_of(ALICE, None, ErrorReply(code="decode_error", message="undecodable message"), NOW)
    assert (garbage.outcome, garbage.target, garbage.origin, garbage.verb) == (Outcome.ERROR, None, None, "submit")

    alias = AliasModelRequest(meta=Envelope.new("x"), name="resnet", version=3, alias="production")
    moved = entry_of(ALICE._replace(verb=subjects.ALIAS_MODEL), alias, AliasModelReply(
        alias=ModelAlias(name="resnet", alias="production", version=3, set_by="alice", set_at=NOW), previous=2), NOW)
    assert (moved.target, moved.detail) == ("resnet:v3", {"alias": "production", "previous": "v2"})


def _entries(n: int) -> list[tuple[int, AuditEntry]]:
    """`n` entries, newest (highest sequence) first."""
    return [(seq, AuditEntry(id=str(seq), at=NOW + seq, who=Actor(kind="user", name="alice"), verb="submit",
                             outcome=Outcome.OK, target=f"j-{seq}")) for seq in range(n, 0, -1)]


def test_a_page_is_the_newest_first_under_the_limit_and_the_bytes_with_the_cursor_of_its_oldest() -> None:
    found = _entries(10)
    first = page(found, 4, 10**6, more=False)
    assert [e.target for e in first.entries] == ["j-10", "j-9", "j-8", "j-7"] and first.next == 7
    one = len(encode(found[0][1]))
    small = page(found, 10, one * 3, more=False)
    assert len(small.entries) == 3 and small.next == 8
    assert page(found, 10, 1, more=False).entries == [found[0][1]]  # one entry at least, however large
    assert page(found, 10, 10**6, more=False).next is None  # everything: no next
    assert page(found, 10, 10**6, more=True).next == 1  # the scan stopped before the stream's start
    assert page([], 10, 10**6, more=False) == audit.AuditReply()


def test_decoded_keeps_the_order_and_leaves_out_what_is_not_an_entry_or_too_old() -> None:
    stored = [Stored(seq=seq, msg_id=None, data=encode(e)) for seq, e in _entries(3)]
    stored.insert(1, Stored(seq=99, msg_id=None, data=b"not an entry"))
    assert [seq for seq, _ in decoded(stored, None)] == [3, 2, 1]
    assert [seq for seq, _ in decoded(stored, NOW + 2)] == [3, 2]
