"""Running things side by side: coroutines that fail as one, and blocking file work (hashing, copying) spread
over a few threads with small files grouped to spare thread hops."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

from incl.artifacts.config import TreeLimits

T = TypeVar("T")
R = TypeVar("R")


async def run_all(coros: Iterable[Awaitable[T]]) -> list[T]:
    """Run the coroutines concurrently; the first failure cancels the others and is raised as itself (callers
    match on our error classes, so an ExceptionGroup would hide them)."""
    try:
        async with asyncio.TaskGroup() as tg:
            tasks: list[asyncio.Task[T]] = [tg.create_task(c) for c in coros]  # type: ignore[arg-type]
    except BaseExceptionGroup as group:
        first = group.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    return [t.result() for t in tasks]


async def each(items: Iterable[T], fn: Callable[[T], Awaitable[object]], workers: int) -> None:
    """`fn(item)` for every item, at most `workers` at once. A few workers share one iterator rather than a task
    per item: 100,000 tasks at once hold up the event loop for seconds."""
    it = iter(items)

    async def worker() -> None:
        for item in it:
            await fn(item)

    await run_all(worker() for _ in range(workers))


def group(items: Sequence[T], size: Callable[[T], int], limits: TreeLimits) -> list[list[T]]:
    batches: list[list[T]] = []
    batch: list[T] = []
    total = 0
    for item in items:
        batch.append(item)
        total += size(item)
        if total >= limits.batch_bytes or len(batch) >= limits.batch_files:
            batches.append(batch)
            batch, total = [], 0
    if batch:
        batches.append(batch)
    return batches


async def in_threads(items: Sequence[T], size: Callable[[T], int], fn: Callable[[list[T]], list[R]],
                     limits: TreeLimits) -> list[R]:
    """`fn` over batches of `items` in up to `limits.io_workers` threads; results in the order of `items`."""
    slots = asyncio.Semaphore(limits.io_workers)

    async def run(batch: list[T]) -> list[R]:
        async with slots:
            return await asyncio.to_thread(fn, batch)

    return [r for batch in await run_all(run(b) for b in group(items, size, limits)) for r in batch]
