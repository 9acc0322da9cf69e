"""The jobs list as /api/jobs serves it (pure): rows, filters, sorts and cursor pages.

A cursor is the sort key of the last row sent (the value it was sorted by, then its id), so paging through a
list that changes meanwhile never repeats a row nor skips one that was there when paging began.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import msgspec

from incl.proto.messages import Job, JobState
from incl.web.errors import BadQuery

SORTS = ("submitted", "updated", "name", "user", "state")


class Row(msgspec.Struct, frozen=True):
    """One job as the list shows it: what a table needs, without the spec."""
    id: str
    name: str
    user: str
    state: str
    submitted_at: float
    updated_at: float
    attempts: int
    recoveries: int  # attempts after the first (preempted, lost or retried)
    run: str
    exit_code: int | None = None
    reason: str | None = None
    study: str | None = None
    gpu_util: float | None = None
    team: str | None = None


def row(job: Job, gpu_util: float | None) -> Row:
    return Row(id=job.id, name=job.spec.name or "", user=job.user, state=str(job.state),
               submitted_at=job.submitted_at, updated_at=job.updated_at, attempts=len(job.attempts),
               recoveries=max(len(job.attempts) - 1, 0), run=job.spec.run[:200], exit_code=job.exit_code,
               reason=job.reason, study=job.trial.study_id if job.trial else None, gpu_util=gpu_util,
               team=job.spec.team)


class Query(NamedTuple):
    users: frozenset[str]
    states: frozenset[str]
    teams: frozenset[str]
    studies: frozenset[str]
    text: str
    sort: str  # one of SORTS
    descending: bool
    after: tuple[Any, str] | None
    limit: int


def parse(params: Mapping[str, str], page_default: int, page_max: int) -> Query:
    """The query of /api/jobs; BadQuery naming the parameter it cannot read."""
    states = _list(params.get("state"))
    known = {s.value for s in JobState}
    if bad := sorted(states - known):
        raise BadQuery("state", f"unknown state {bad[0]!r}; one of {', '.join(sorted(known))}")
    sort = params.get("sort", "-submitted")
    field = sort.removeprefix("-")
    if field not in SORTS:
        raise BadQuery("sort", f"cannot sort by {field!r}; by one of {', '.join(SORTS)} (- first: descending)")
    try:
        limit = int(params.get("limit", page_default))
    except ValueError:
        raise BadQuery("limit", "not a number") from None
    if not 1 <= limit <= page_max:
        raise BadQuery("limit", f"must be between 1 and {page_max}")
    cursor = params.get("cursor")
    return Query(users=_list(params.get("user")), states=states, teams=_list(params.get("team")),
                 studies=_list(params.get("study")), text=params.get("q", "").strip().lower(),
                 sort=field, descending=sort.startswith("-"), after=decode_cursor(cursor) if cursor else None,
                 limit=limit)


def _list(value: str | None) -> frozenset[str]:
    return frozenset(v.strip() for v in (value or "").split(",") if v.strip())


def key(r: Row, sort: str) -> tuple[Any, str]:
    value: Any = {"submitted": r.submitted_at, "updated": r.updated_at, "name": r.name.lower(), "user": r.user,
                  "state": r.state}[sort]
    return value, r.id


def encode_cursor(k: tuple[Any, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(k)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[Any, str]:
    try:
        value, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, TypeError, binascii.Error):
        raise BadQuery("cursor", "not a cursor this server gave") from None
    if not isinstance(job_id, str) or not isinstance(value, str | int | float):
        raise BadQuery("cursor", "not a cursor this server gave")
    return value, job_id


def matches(r: Row, q: Query) -> bool:
    if q.users and r.user not in q.users:
        return False
    if q.states and r.state not in q.states:
        return False
    if q.teams and r.team not in q.teams:
        return False
    if q.studies and r.study not in q.studies:
        return False
    if not q.text:
        return True
    return any(q.text in field.lower() for field in (r.id, r.name, r.user, r.run, r.study or "", r.team or ""))


class Page(NamedTuple):
    rows: list[Row]
    total: int  # rows matching the filters, over all pages
    next: str | None  # the cursor of the next page


def select(rows: Iterable[Row], q: Query) -> Page:
    """The page after `q.after` of the rows matching `q`, in its order."""
    chosen = [r for r in rows if matches(r, q)]
    chosen.sort(key=lambda r: key(r, q.sort), reverse=q.descending)
    total = len(chosen)
    if q.after is not None:
        after = q.after
        try:
            chosen = [r for r in chosen if (key(r, q.sort) < after if q.descending else key(r, q.sort) > after)]
        except TypeError:  # a cursor of another sort (a number against names): not ours
            raise BadQuery("cursor", "the cursor belongs to another sort order") from None
    page = chosen[:q.limit]
    more = len(chosen) > q.limit
    return Page(rows=page, total=total, next=encode_cursor(key(page[-1], q.sort)) if more else None)
