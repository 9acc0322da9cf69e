"""Which stored trees hold a job's outputs: pure functions of the job record, shared by `incl outputs`, the web
UI's outputs browser and the controller's share links, so that all three show the same files."""

from __future__ import annotations

from incl.proto.errors import NotFound
from incl.proto.messages import TERMINAL, Attempt, Job, TreeRef

Trees = list[tuple[str, TreeRef]]  # (the folder it goes in, "" or "rank-K/"; the tree)


def rank_trees(job: Job, att: Attempt) -> Trees:
    """The trees an attempt left, each with the folder it goes in: its own outputs at the top level (a multi-node
    attempt's: rank 0's, or the rank `outputs.ranks` names) and, with `outputs: {ranks: all}`, every other
    rank's under `rank-K/`."""
    kept = job.spec.outputs.ranks
    own = kept if isinstance(kept, int) and kept < len(att.nodes) else 0
    top = att.outputs or next((n.outputs for n in att.nodes if n.rank == own), None)
    trees = [("", top)] if top is not None else []
    return trees + [(f"rank-{n.rank}/", n.outputs) for n in att.nodes if n.outputs is not None and n.rank != own]


def attempt_with_outputs(job: Job, number: int | None) -> Attempt | None:
    """The attempt whose outputs to show (the last one that left some, or attempt `number`); None when the job
    ended and left none (a normal answer); NotFound for a job still running that has none yet."""
    chosen = [a for a in job.attempts if (number is None or a.number == number)]
    with_outputs = [a for a in chosen if rank_trees(job, a)]
    if with_outputs:
        return with_outputs[-1]
    if number is not None and not chosen:
        raise NotFound(f"job {job.id} has no attempt {number}")
    if job.state in TERMINAL:
        return None
    raise NotFound(f"job {job.id} has no outputs yet (they are uploaded when an attempt ends; it is {job.state})")
