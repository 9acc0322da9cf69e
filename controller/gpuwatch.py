"""Where GPU telemetry meets jobs: current utilization per job, idle alerts, and stopping idle jobs.

Heartbeats feed `observe`; the idle monitor (pure) decides; this module notifies, and queues `stop` actions
and the writes of alerted episodes for its own task, so that a heartbeat reply never waits on a store write.

An alerted episode is kept in its bucket until the episode or the attempt ends; a restarted controller resumes
it silently. The episode is written after its alert is queued (whose outbox keeps the alert itself): a kill
between the two can give one more alert once a whole new window has passed, never a lost one.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from incl.controller.idle import (
    STOP_REASON,
    Episode,
    IdleEnded,
    IdleMonitor,
    IdlePolicy,
    IdleStarted,
    policy_for,
    stale_episodes,
)
from incl.controller.jobs import Jobs
from incl.controller.notify import Kind, Notice, Notifier
from incl.controller.store import Records
from incl.proto.errors import InclError
from incl.proto.messages import JobState
from incl.proto.spec import IdleAction as Action
from incl.proto.telemetry import GpuTelemetry

log = structlog.get_logger()


class GpuWatch:
    """`episodes`: the alerted episodes, loaded."""

    def __init__(self, jobs: Jobs, notifier: Notifier, default: IdlePolicy, episodes: Records[Episode]) -> None:
        self._jobs = jobs
        self._notifier = notifier
        self._default = default
        self.monitor = IdleMonitor()
        self.util: dict[str, float] = {}  # job id -> utilization in the last heartbeat that covered it
        self._tracked: dict[str, int] = {}  # job id -> the attempt being watched
        self._stops: asyncio.Queue[str] = asyncio.Queue()
        self._store = episodes
        self._alerted = {e.job_id: e for e in episodes}  # as the bucket will hold it once `_writes` are done
        self._writes: asyncio.Queue[tuple[str, Episode | None]] = asyncio.Queue()  # job id, episode (None: gone)

    def observe(self, telemetry: GpuTelemetry) -> None:
        for job_id, util in telemetry.job_utilization().items():
            self.util[job_id] = util
            job = self._jobs.records.get(job_id)
            if job is None or job.state is not JobState.RUNNING or job.current is None:
                continue
            if self._tracked.get(job_id) != job.current.number:
                self.monitor.forget(job_id)
                kept = self._alerted.get(job_id)
                if kept is not None and kept.attempt != job.current.number:
                    self._episode_over(job_id)
                    kept = None
                self.monitor.track(job_id, job.current.started_at or telemetry.start,
                                   policy_for(job.spec.gpu_idle, self._default),
                                   alerted_since=kept.since if kept is not None else None)
                self._tracked[job_id] = job.current.number
            for event in self.monitor.observe(job_id, telemetry.end, util):
                self._on_event(event)

    def _on_event(self, event: IdleStarted | IdleEnded) -> None:
        job = self._jobs.records.get(event.job_id)
        if job is None:
            return
        if isinstance(event, IdleStarted):
            log.warning("gpu_idle", job_id=job.id, util=round(event.util, 1), action=str(event.action))
            notice = Notice.from_job(Kind.IDLE, job, detail=event.describe(), episode=event.since)
            self._notifier.notify(notice)
            if job.current is not None:
                kept = Episode(job_id=job.id, attempt=job.current.number, since=event.since, alerted_at=time.time(),
                               notice_id=notice.id, detail=notice.detail or "")
                self._alerted[job.id] = kept
                self._writes.put_nowait((job.id, kept))
            if event.action is Action.STOP:
                self._stops.put_nowait(job.id)
        else:
            log.info("gpu_idle_ended", job_id=job.id)
            self._notifier.notify(Notice.from_job(Kind.IDLE_ENDED, job, detail=event.describe(), episode=event.since))
            self._episode_over(job.id)

    def _episode_over(self, job_id: str) -> None:
        if self._alerted.pop(job_id, None) is not None:
            self._writes.put_nowait((job_id, None))

    def forget(self, job_id: str) -> None:
        self.monitor.forget(job_id)
        self._tracked.pop(job_id, None)
        self.util.pop(job_id, None)
        self._episode_over(job_id)

    async def run(self) -> None:
        """Drop the kept episodes that ended while no controller ran, then keep the bucket in step and carry out
        `stop` actions, until cancelled."""
        running = {j.id: j.current.number for j in self._jobs.records
                   if j.state is JobState.RUNNING and j.current is not None}
        for job_id in stale_episodes(self._alerted.values(), running):
            self._episode_over(job_id)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._write_episodes())
            tg.create_task(self._stop_idle())

    async def _write_episodes(self) -> None:
        while True:
            job_id, episode = await self._writes.get()
            try:
                if episode is None:
                    await self._store.delete(job_id)
                else:
                    await self._store.put(episode)
            except Exception as exc:  # noqa: BLE001 - one lost write costs at most one alert after a restart
                log.warning("idle_episode_not_kept", job_id=job_id, error=repr(exc))

    async def _stop_idle(self) -> None:
        """Carry out `stop` actions: cancel the job with reason gpu_idle."""
        while True:
            job_id = await self._stops.get()
            try:
                await self._jobs.cancel(job_id, reason=STOP_REASON)
            except InclError as exc:  # finished meanwhile
                log.info("gpu_idle_stop_skipped", job_id=job_id, error=str(exc))
