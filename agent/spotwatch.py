"""The spot watcher: polls instance metadata for an interruption notice and a rebalance recommendation.

EC2 posts `spot/instance-action` two minutes before it stops or terminates a spot instance, and
`events/recommendations/rebalance` when the instance is at elevated risk of that. The watcher reads both every
`poll_interval` seconds and calls back once per distinct notice: `Interruption` (with the deadline: checkpoint
now) and `Rebalance` (a hint to move early). A failing read is logged and retried, backing off up to
`error_backoff_max`; a failing callback is logged and the notice is delivered again at the next poll. One task
in the agent's TaskGroup; cancel it to stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated

import msgspec
import structlog

from incl.agent.metadata import InstanceAction, Metadata, MetadataError

log = structlog.get_logger()


class SpotWatchConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # At most 2 s: the notice comes 120 s ahead and the job needs the rest to checkpoint.
    poll_interval: Annotated[float, msgspec.Meta(gt=0, le=2.0)] = 2.0
    error_backoff_max: float = 10.0  # after failed reads, the wait doubles from poll_interval up to this


class Interruption(msgspec.Struct, frozen=True, kw_only=True):
    action: str  # terminate, stop or hibernate
    deadline: datetime  # when EC2 acts


class Rebalance(msgspec.Struct, frozen=True, kw_only=True):
    noticed_at: datetime


SpotNotice = Interruption | Rebalance


class SpotWatcher:
    def __init__(self, metadata: Metadata, on_notice: Callable[[SpotNotice], Awaitable[None]],
                 cfg: SpotWatchConfig = SpotWatchConfig()) -> None:  # noqa: B008 (frozen)
        self._metadata = metadata
        self._on_notice = on_notice
        self.cfg = cfg
        self.delivered: set[SpotNotice] = set()

    async def run(self) -> None:
        delay = self.cfg.poll_interval
        while True:
            try:
                await self.poll()
                delay = self.cfg.poll_interval
            except MetadataError as exc:
                log.warning("spot_watch_failed", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, max(self.cfg.error_backoff_max, self.cfg.poll_interval))
                continue
            await asyncio.sleep(delay)

    async def poll(self) -> None:
        """One read of both notices; each new one is passed to the callback."""
        action: InstanceAction | None = await self._metadata.spot_notice()
        if action is not None:
            await self._deliver(Interruption(action=action.action, deadline=action.time))
        noticed = await self._metadata.rebalance()
        if noticed is not None:
            await self._deliver(Rebalance(noticed_at=noticed))

    async def _deliver(self, notice: SpotNotice) -> None:
        if notice in self.delivered:
            return
        if isinstance(notice, Interruption):
            log.warning("spot_interruption_notice", action=notice.action, deadline=notice.deadline.isoformat())
        else:
            log.info("spot_rebalance_recommendation", noticed_at=notice.noticed_at.isoformat())
        try:
            await self._on_notice(notice)
        except Exception:  # the agent must keep watching; the notice is offered again at the next poll
            log.exception("spot_callback_failed", notice=type(notice).__name__)
            return
        self.delivered.add(notice)
