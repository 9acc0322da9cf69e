"""Where GPU telemetry meets jobs: current utilization per job, idle alerts, and stopping idle jobs.

Heartbeats feed `observe`; the idle monitor (pure) decides; this module notifies, and queues `stop` actions
for its own task, so that a heartbeat reply never waits on a job store write.
"""

from __future__ import annotations

import asyncio

import structlog

from incl.controller.idle import STOP_REASON, IdleEnded, IdleMonitor, IdlePolicy, IdleStarted, policy_for
from incl.controller.jobs import Jobs
from incl.controller.notify import Kind, Notice, Notifier
from incl.proto.errors import InclError
from incl.proto.messages import JobState
from incl.proto.spec import IdleAction as Action
from incl.proto.telemetry import GpuTelemetry

log = structlog.get_logger()


class GpuWatch:
    def __init__(self, jobs: Jobs, notifier: Notifier, default: IdlePolicy) -> None:
        self._jobs = jobs
        self._notifier = notifier
        self._default = default
        self.monitor = IdleMonitor()
        self.util: dict[str, float] = {}  # job id -> utilization in the last heartbeat that covered it
        self._tracked: dict[str, int] = {}  # job id -> the attempt being watched
        self._stops: asyncio.Queue[str] = asyncio.Queue()

    def observe(self, telemetry: GpuTelemetry) -> None:
        for job_id, util in telemetry.job_utilization().items():
            self.util[job_id] = util
            job = self._jobs.records.get(job_id)
            if job is None or job.state is not JobState.RUNNING or job.current is None:
                continue
            if self._tracked.get(job_id) != job.current.number:
                self.monitor.forget(job_id)
                self.monitor.track(job_id, job.current.started_at or telemetry.start,
                                   policy_for(job.spec.gpu_idle, self._default))
                self._tracked[job_id] = job.current.number
            for event in self.monitor.observe(job_id, telemetry.end, util):
                self._on_event(event)

    def _on_event(self, event: IdleStarted | IdleEnded) -> None:
        job = self._jobs.records.get(event.job_id)
        if job is None:
            return
        if isinstance(event, IdleStarted):
            log.warning("gpu_idle", job_id=job.id, util=round(event.util, 1), action=str(event.action))
            self._notifier.notify(Notice.from_job(Kind.IDLE, job, detail=event.describe()))
            if event.action is Action.STOP:
                self._stops.put_nowait(job.id)
        else:
            log.info("gpu_idle_ended", job_id=job.id)
            self._notifier.notify(Notice.from_job(Kind.IDLE_ENDED, job, detail=event.describe()))

    def forget(self, job_id: str) -> None:
        self.monitor.forget(job_id)
        self._tracked.pop(job_id, None)
        self.util.pop(job_id, None)

    async def run(self) -> None:
        """Carry out `stop` actions: cancel the job with reason gpu_idle."""
        while True:
            job_id = await self._stops.get()
            try:
                await self._jobs.cancel(job_id, reason=STOP_REASON)
            except InclError as exc:  # finished meanwhile
                log.info("gpu_idle_stop_skipped", job_id=job_id, error=str(exc))
