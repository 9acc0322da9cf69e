"""What the bus's own loops count for the daemon they run in: retries, messages applied and parked.

`incl.bus.retry.forever` and `incl.bus.consume` run in every daemon and in the CLI, far from any metrics object.
A daemon installs its `Counts` once, at the top of its lifespan (`install`); the tasks it starts from then on
inherit it through their context, so two daemons in one process count apart, and code outside a daemon (the
CLI, tests) counts nothing and pays one context lookup. This module imports no metrics library: the CLI
does not need one.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Protocol


class Counts(Protocol):
    def retried(self, what: str) -> None:
        """One more try of `what` after a transient failure (`incl.bus.retry.forever`)."""

    def parked(self, source: str) -> None:
        """A message `source` could not handle went to the dead-letter stream."""

    def applied(self, source: str) -> Callable[[], None]:
        """The counter of messages `source` handled, bound once per consume loop (called per message)."""


_counts: ContextVar[Counts | None] = ContextVar("incl_bus_counts", default=None)


def install(counts: Counts) -> None:
    """From now on, in this task and those it starts, the bus counts into `counts`."""
    _counts.set(counts)


def _nothing() -> None:
    pass


def retried(what: str) -> None:
    if (counts := _counts.get()) is not None:
        counts.retried(what)


def parked(source: str) -> None:
    if (counts := _counts.get()) is not None:
        counts.parked(source)


def applied(source: str) -> Callable[[], None]:
    counts = _counts.get()
    return _nothing if counts is None else counts.applied(source)
