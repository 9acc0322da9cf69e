"""Reading one attempt's output (its log or metric batches): only what the agents the controller assigned it wrote.

An agent writes `<...>.<job>.<key>.<its own id>` (`subjects.output`) and the NATS server lets it publish under no
other id (`incl.auth.permissions`), so a subject's last token is the agent that wrote the batch. A reader follows
`<key>.*` and keeps the batches whose agent is one of the attempt's (`Attempt.writers`: the rank agents of a gang, from
the record the reader holds already, so no request is added). A batch another agent wrote under its own id, on a
subject whose key it learnt, is dropped, counted, and logged once per read.

Attempts from before the agent token (`Attempt.agent_subjects` False) have their batches on `<key>`
(`subjects.legacy_output`), where no agent may publish any more: that subject is read first, to its end (nothing is
added to it), then `<key>.*` (an agent upgraded while the attempt ran went on there).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncGenerator

import structlog

from incl.bus.connection import Bus
from incl.bus.follow import PULL_BATCH, Followed, to_end
from incl.proto import subjects
from incl.proto.messages import Attempt, Job

log = structlog.get_logger()


class Writers:
    """Which batches of one attempt a reader keeps; counts those it drops and logs the first."""

    def __init__(self, job: Job, attempt: Attempt) -> None:
        self._job_id, self._attempt = job.id, attempt.number
        self._assigned = attempt.writers
        self.dropped = 0

    def keeps(self, subject: str) -> bool:
        writer = subjects.output_writer(subject)
        if writer is None or writer in self._assigned:
            return True
        self.dropped += 1
        if self.dropped == 1:
            log.warning("output_batch_dropped", job_id=self._job_id, attempt=self._attempt, writer=writer,
                        reason="written by an agent the attempt was not assigned to")
        return False


async def follow_attempt(bus: Bus, stream: str, job: Job, attempt: Attempt, poll: float, *, from_seq: int = 1,
                         batch: int = PULL_BATCH) -> AsyncGenerator[Followed | None, None]:
    """`Bus.follow` of one attempt's output in `stream` (LOGS_STREAM or METRICS_STREAM): every batch its assigned
    agents wrote, in order, from stream sequence `from_seq` on; None each `poll` seconds with nothing new, and where
    a dropped batch was the last the stream held (the reader has caught up)."""
    if not attempt.agent_subjects:
        legacy = subjects.legacy_output(stream, job, attempt.output_key)
        async with contextlib.aclosing(bus.follow(stream, legacy, poll, from_seq=from_seq, batch=batch)) as items:
            async for item in items:
                if item is None:
                    break
                yield dataclasses.replace(item, pending=max(item.pending, 1))  # not caught up: `<key>.*` comes next
                if item.pending == 0:
                    break
    writers = Writers(job, attempt)
    subject = subjects.output(stream, job, attempt.output_key, subjects.ANY_AGENT)
    async with contextlib.aclosing(bus.follow(stream, subject, poll, from_seq=from_seq, batch=batch)) as items:
        async for item in items:
            if item is None or writers.keeps(item.subject):
                yield item
            elif item.pending == 0:
                yield None


async def read_attempt(bus: Bus, stream: str, job: Job, attempt: Attempt, poll: float) -> AsyncGenerator[bytes, None]:
    """Every batch of the attempt's output in `stream` now, in order (`follow_attempt` up to the stream's end)."""
    async with contextlib.aclosing(to_end(follow_attempt(bus, stream, job, attempt, poll))) as data:
        async for item in data:
            yield item
