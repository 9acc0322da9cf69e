"""Following one job's log or metric subject, as `Client.log_batches(job_id, follow=True)` does for logs.

The client library follows only logs; metric charts need the same for metrics (`Client` would be the place for
both: this is the one read that the web server makes on the bus connection itself).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import TypeVar

from incl.bus.client import Client
from incl.proto.codec import Decoder
from incl.proto.errors import DecodeError
from incl.proto.messages import TERMINAL, LogBatch, MetricBatch

B = TypeVar("B", LogBatch, MetricBatch)


async def follow(client: Client, subject: str, type_: type[B], job_id: str, poll: float) -> AsyncGenerator[B, None]:
    """Every batch on `subject` from the first, in order, until the job has ended and all of it is read. A
    batch that does not decode is skipped, as the CLI skips it."""
    decoder: Decoder[B] = Decoder(type_)
    ended = False
    async with contextlib.aclosing(client.bus.follow(subject, poll)) as items:
        async for item in items:
            if item is not None:
                with contextlib.suppress(DecodeError):
                    yield decoder.decode(item.data)
                if item.pending > 0:
                    continue
            if item is None:
                if ended:  # caught up once more after seeing it ended: nothing can follow
                    return
                ended = (await client.job(job_id)).state in TERMINAL
