"""Pages of `incl ls` over every job record: those held in memory and those a bounded cache let go, which are
read from the jobs bucket (`incl.controller.store.Retention`).

While memory holds every record, a listing pages the records held, by submission (`paging.page`). Otherwise it
has two parts, and its cursor says which, and where:
  1. `@<revision>/<bound>`: the bucket's records last written at revisions up to `bound` (the bucket's latest when
     the listing began), in revision order: read from the bucket's stream a chunk at a time (`Bucket.since`, one
     short-lived consumer a chunk), never by a listing of every key;
  2. `+<bound>/<submission cursor>`: the records held that were written after `bound`, by submission.
A job written while it is listed shows in part 2 with its new value (and also in part 1, with its old one, if part
1 had passed it): none that existed when the listing began is skipped, except one that both changed during the
listing and was let go from memory before part 2 came to it (`ended_jobs_in_memory` other jobs ended meanwhile).
"""

from __future__ import annotations

from collections.abc import Callable

from incl.controller.paging import page
from incl.controller.store import Records
from incl.proto import limits
from incl.proto.errors import BadRequest
from incl.proto.messages import Job

SCAN_MAX = 10 * limits.PAGE_MAX_ITEMS  # records part 1 reads for one page at most (a page of few visible ones)


def job_key(job: Job) -> str:
    """Submission order, then id: a stable cursor for `incl ls` pages."""
    return f"{job.submitted_at:020.6f}/{job.id}"


async def list_page(records: Records[Job], keep: Callable[[Job], bool], after: str | None, limit: int | None,
                    max_bytes: int, timeout: float) -> tuple[list[Job], str | None]:
    """The jobs `keep` chooses after the cursor `after`, as many as fit; and the cursor of the next page."""
    if (after is None and not records.evicted) or (after is not None and after[:1] not in ("@", "+")):
        return page([j for j in records if keep(j)], job_key, after, limit, max_bytes)
    if after is None:
        after = f"@0/{await records.bucket.last_revision()}"
    try:
        position, rest = after[1:].split("/", 1)
        bound = int(rest if after[0] == "@" else position)
        start = int(position) if after[0] == "@" else 0
    except ValueError:
        raise BadRequest(f"not a cursor of this listing: {after!r}") from None
    if after[0] == "@":
        chosen, reached = await _from_bucket(records, keep, start, bound, limit, max_bytes, timeout)
        if reached is not None:
            return chosen, f"@{reached}/{bound}"
        if chosen:
            return chosen, f"+{bound}/"
        rest = ""
    held = [j for j in records if (records.revision(j.id) or 0) > bound and keep(j)]
    chosen, cursor = page(held, job_key, rest or None, limit, max_bytes)
    return chosen, None if cursor is None else f"+{bound}/{cursor}"


async def _from_bucket(records: Records[Job], keep: Callable[[Job], bool], start: int, bound: int,
                       limit: int | None, max_bytes: int, timeout: float) -> tuple[list[Job], int | None]:
    """Part 1 from revision `start` on: the page, and the revision it reached (None: it got past `bound`)."""
    n = min(limit or limits.PAGE_MAX_ITEMS, limits.PAGE_MAX_ITEMS)
    chosen: list[Job] = []
    size = 0
    reached = start
    scanned = 0
    while scanned < SCAN_MAX:
        if reached >= bound:  # (a read past the stream's end waits out its timeout)
            return chosen, None
        changes = await records.bucket.since(reached, limits.PAGE_MAX_ITEMS, timeout)
        scanned += len(changes)
        for change in changes:
            if change.revision > bound:
                return chosen, None
            job = None if change.value is None else records.decode(change.key, change.value)
            if job is not None and keep(job):
                size += len(change.value or b"")  # as stored: the view sent is no larger (secrets masked)
                if chosen and size > max_bytes:
                    return chosen, reached
                chosen.append(job)
            reached = change.revision
            if len(chosen) >= n:
                return chosen, reached
        if not changes:
            return chosen, None
    return chosen, reached
