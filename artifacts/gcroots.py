"""What a collection keeps, read off the job and study records: the roots of gc.py's mark.

A job is kept while it is queued or running and for `retention` seconds after it ended: its code snapshot, each
attempt's outputs and every ref under refs/jobs/<job>/ (outputs per attempt, checkpoints). A study keeps its code
snapshot the same way. A share link keeps what it opens until it expires or is revoked, however old its job: a
link someone was sent must not turn into a 404 while it is still valid.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from incl.proto.messages import TERMINAL, Job
from incl.proto.shares import Share
from incl.proto.studies import STUDY_ENDED, Study


class Roots(NamedTuple):
    jobs: set[str]  # jobs whose refs are kept
    trees: set[str]  # manifest digests named by kept records


def job_ended(job: Job) -> float | None:
    """When a finished job ended; None while it may still run."""
    if job.state not in TERMINAL:
        return None
    ends = [a.ended_at for a in job.attempts if a.ended_at is not None]
    return max(ends, default=job.updated_at)


def kept_roots(jobs: Iterable[Job], studies: Iterable[Study], now: float, retention: float,
               shares: Iterable[Share] = ()) -> Roots:
    roots = Roots(set(), set())
    for share in shares:
        if share.state(now) == "active":
            roots.trees.update(t.digest for t in share.trees)
    for job in jobs:
        ended = job_ended(job)
        if ended is not None and now - ended > retention:
            continue
        roots.jobs.add(job.id)
        trees = [job.code, *(a.outputs for a in job.attempts), *(n.outputs for a in job.attempts for n in a.nodes)]
        roots.trees.update(t.digest for t in trees if t is not None)
    for study in studies:
        ended = study.ended_at if study.state in STUDY_ENDED else None
        if study.code is not None and (ended is None or now - ended <= retention):
            roots.trees.add(study.code.digest)
    return roots
