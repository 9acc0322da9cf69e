"""What a model version records of the job that made it, as pure functions of the job record and its metrics.

Which jobs may be registered: one that is over (SUCCEEDED, FAILED or CANCELLED) and left outputs. MLflow lets any
run register a model; a job still running may yet rewrite its outputs, and its final metrics are not final, so
INCL waits for the end. A failed or cancelled job is allowed (a run stopped after it converged, or one whose last
checkpoint is what is wanted); its state is part of the lineage, so nobody mistakes it for a clean run.
"""

from __future__ import annotations

from collections.abc import Iterable

from incl.proto.errors import Conflict, NotFound
from incl.proto.messages import TERMINAL, Attempt, Job, MetricBatch, TreeRef
from incl.proto.registry import MAX_METRICS, Lineage


def outputs_of(job: Job) -> tuple[Attempt, TreeRef]:
    """The attempt a version is made from (the last one that left outputs) and its outputs tree (a multi-node
    attempt's: rank 0's); Conflict for a job not over yet, NotFound for one that left no outputs."""
    if job.state not in TERMINAL:
        raise Conflict(f"job {job.id} has not finished (it is {job.state}); register its outputs once it is over")
    for att in reversed(job.attempts):
        tree = att.outputs or next((n.outputs for n in att.nodes if n.rank == 0 and n.outputs), None)
        if tree is not None:
            return att, tree
    raise NotFound(f"job {job.id} left no outputs (nothing in $INCL_OUTPUT_DIR): there is nothing to register")


def final_metrics(batches: Iterable[MetricBatch], so_far: dict[str, float] | None = None) -> dict[str, float]:
    """The last value of each metric, in the order the batches were logged (rank 0's: every rank of a multi-node
    job logs its own copy), at most MAX_METRICS names: the first ones logged are kept. `so_far`: the values of
    the batches before these (a long series is folded in batch by batch, never held whole)."""
    last = dict(so_far or {})
    for batch in batches:
        if batch.rank != 0:
            continue
        for point in batch.points:
            for name, value in point.values.items():
                if name in last or len(last) < MAX_METRICS:
                    last[name] = value
    return last


def lineage(job: Job, attempt: Attempt, metrics: dict[str, float]) -> Lineage:
    return Lineage(job_id=job.id, job_name=job.name, job_state=job.state, attempt=attempt.number, user=job.user,
                   code=job.code, image=job.spec.image, env=dict(job.spec.env),
                   params=dict(job.trial.params) if job.trial else {},
                   study_id=job.trial.study_id if job.trial else None, metrics=metrics)
