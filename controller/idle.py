"""The GPU idle monitor, as pure logic: time is passed in, events come out, nothing is sent from here.

A job is idle when every utilization sample reported for it in the last `window` seconds was below
`threshold` percent, and those samples cover the whole window. Samples taken during the `grace` period after
the job started do not count. An idle episode gives one `IdleStarted`; the first sample at or above the
threshold ends it with one `IdleEnded`, and a new episode needs a whole new window below the threshold.

An episode already alerted is kept (`Episode`, in its bucket: see `controller/gpuwatch.py`) until it or the
attempt ends, so that a restarted controller resumes it (`track(..., alerted_since=...)`) rather than alerting
a second time once a new window has passed.

The job's `gpu_idle:` (`proto.spec.GpuIdle`, validated at submit) applies key by key over the cluster's
`IdlePolicy`; `gpu_idle: false` turns the monitor off for the job.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from incl.proto.spec import GpuIdle
from incl.proto.spec import IdleAction as Action

STOP_REASON = "gpu_idle"  # the reason a job stopped by the monitor is cancelled with


class IdlePolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    threshold: float = 10.0  # percent
    window: float = 900.0  # seconds
    action: Action = Action.NOTIFY
    grace: float = 300.0  # seconds after the job started during which samples are ignored


DEFAULT_POLICY = IdlePolicy()


class IdleStarted(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    ts: float  # when the window was full
    since: float  # the first sample of the episode
    util: float  # mean utilization over the episode so far
    policy: IdlePolicy

    @property
    def action(self) -> Action:
        return self.policy.action

    def describe(self) -> str:
        return (
            f"GPU utilization below {self.policy.threshold:g}% for {format_duration(self.ts - self.since)}"
            f" (mean {self.util:.1f}%)"
        )


class IdleEnded(msgspec.Struct, frozen=True, kw_only=True):
    job_id: str
    ts: float
    since: float  # when the episode began
    util: float  # the sample that ended it

    def describe(self) -> str:
        return f"GPUs busy again ({self.util:.0f}%) after {format_duration(self.ts - self.since)} idle"


IdleEvent = IdleStarted | IdleEnded


class Episode(msgspec.Struct, frozen=True, kw_only=True):
    """An idle episode whose alert went out: one per job at most (the monitor watches the current attempt)."""

    job_id: str
    attempt: int
    since: float  # the episode's first sample
    alerted_at: float
    notice_id: str  # the alert that was sent
    detail: str


def stale_episodes(episodes: Iterable[Episode], running: Mapping[str, int]) -> list[str]:
    """The jobs whose kept episode is over: the job no longer runs, or runs another attempt (`running`: job id ->
    the attempt running now). Pure: the caller deletes them."""
    return [e.job_id for e in episodes if running.get(e.job_id) != e.attempt]


class _Track:
    __slots__ = ("alerted", "last_ts", "low_count", "low_since", "low_sum", "policy", "started_at")

    def __init__(self, policy: IdlePolicy, started_at: float) -> None:
        self.policy, self.started_at = policy, started_at
        self.last_ts = float("-inf")
        self.low_since: float | None = None  # the first sample of the current run below the threshold
        self.low_sum, self.low_count = 0.0, 0
        self.alerted = False


class IdleMonitor:
    """One rolling window per running job. Not thread-safe: the controller's loop owns it."""

    def __init__(self) -> None:
        self._jobs: dict[str, _Track] = {}

    def track(self, job_id: str, started_at: float, policy: IdlePolicy | None,
              alerted_since: float | None = None) -> None:
        """Watch a job that started running at `started_at`; `policy` None (gpu_idle: false) watches nothing.
        `alerted_since`: the start of an episode already alerted (before a restart), which goes on, silent, until
        a busy sample ends it."""
        if policy is None:
            self._jobs.pop(job_id, None)
        elif job_id not in self._jobs or self._jobs[job_id].started_at != started_at:
            t = self._jobs[job_id] = _Track(policy, started_at)
            if alerted_since is not None:
                t.low_since, t.alerted = alerted_since, True

    def forget(self, job_id: str) -> None:
        self._jobs.pop(job_id, None)

    def idle_since(self, job_id: str) -> float | None:
        """When the job's current alerted episode began, or None while it is not idle."""
        t = self._jobs.get(job_id)
        return t.low_since if t is not None and t.alerted else None

    def observe(self, job_id: str, ts: float, util: float) -> list[IdleEvent]:
        """Feed one sample (the job's mean GPU utilization, percent). Untracked jobs and stale samples: []."""
        t = self._jobs.get(job_id)
        if t is None or ts <= t.last_ts or ts < t.started_at + t.policy.grace:
            return []
        t.last_ts = ts
        if util >= t.policy.threshold:
            events: list[IdleEvent] = []
            if t.alerted and t.low_since is not None:
                events.append(IdleEnded(job_id=job_id, ts=ts, since=t.low_since, util=util))
            t.low_since, t.low_sum, t.low_count, t.alerted = None, 0.0, 0, False
            return events
        if t.low_since is None:
            t.low_since = ts
        t.low_sum, t.low_count = t.low_sum + util, t.low_count + 1
        if t.alerted or ts - t.low_since < t.policy.window:
            return []
        t.alerted = True
        return [IdleStarted(job_id=job_id, ts=ts, since=t.low_since, util=t.low_sum / t.low_count, policy=t.policy)]


# --- text -----------------------------------------------------------------------------------------------

def format_duration(seconds: float) -> str:
    """45s, 12m 03s, 1h 02m, 2d 03h."""
    s = round(max(seconds, 0))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def policy_for(spec: bool | GpuIdle | None, default: IdlePolicy = DEFAULT_POLICY) -> IdlePolicy | None:
    """The job's policy: its spec's `gpu_idle` over the cluster's `default`; None when the job turns it off."""
    if spec is False:
        return None
    if not isinstance(spec, GpuIdle):
        return default
    own = {f: v for f in default.__struct_fields__ if (v := getattr(spec, f)) is not None}
    return msgspec.structs.replace(default, **own)
