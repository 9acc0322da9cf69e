"""Heartbeat pacing (pure): how often each agent reports, and the deadline and lease that follow from it.

The controller tells every agent, in each reply, when to report next. With a fixed interval its heartbeat load
grows with the fleet (10,000 agents every 5 s is 2,000 requests a second), so the interval stretches once the
fleet is large: `alive / max_heartbeats_per_second` seconds, never under `heartbeat_interval` (as Nomad does).
Each reply adds a random stretch of up to `heartbeat_jitter` of it, so agents that registered together (after a
controller restart, a scale-up) spread out instead of beating in step. The mean load stays under the limit.

An agent's liveness deadline follows the interval it was given: `lost_after_beats` of them, never less than
`agent_lost_after`; its lease (how long it runs jobs without an answer) is derived from that deadline, so its
jobs are stopped before the controller may hand them on, however far the interval stretched.
"""

from __future__ import annotations

from dataclasses import dataclass

from incl.proto.messages import Lease


@dataclass(frozen=True)
class PacingConfig:
    heartbeat_interval: float  # the interval of a small fleet
    max_heartbeats_per_second: float  # the controller's heartbeat budget, over the whole fleet
    heartbeat_jitter: float  # each interval is stretched by up to this fraction of it
    agent_lost_after: float  # the deadline of a small fleet
    lost_after_beats: float  # a stretched interval's deadline, in intervals
    fence_grace: float
    fence_margin: float


@dataclass(frozen=True)
class Pace:
    interval: float  # the agent reports next this long after the reply
    lost_after: float  # and is declared lost after this much silence
    lease: Lease


def spread(cfg: PacingConfig, alive: int) -> float:
    """The interval, before jitter, that keeps `alive` agents under the heartbeat budget."""
    return max(cfg.heartbeat_interval, alive / cfg.max_heartbeats_per_second)


def lost_after(cfg: PacingConfig, interval: float) -> float:
    return max(cfg.agent_lost_after, cfg.lost_after_beats * interval)


def lease(cfg: PacingConfig, lost: float) -> Lease:
    """The end of the lease plus the kill grace falls before the deadline `lost`."""
    grace = min(cfg.fence_grace, lost / 4)
    margin = min(cfg.fence_margin, lost / 8)
    return Lease(duration=lost - grace - margin, grace=grace)


def pace(cfg: PacingConfig, alive: int, draw: float) -> Pace:
    """The pace for one reply; `draw` is uniform in [0, 1) (the jitter)."""
    interval = spread(cfg, alive) * (1 + cfg.heartbeat_jitter * draw)
    lost = lost_after(cfg, interval)
    return Pace(interval=interval, lost_after=lost, lease=lease(cfg, lost))


def longest_deadline(cfg: PacingConfig, alive: int) -> float:
    """The longest deadline any of `alive` agents may have been given: what each gets after a controller
    restart, since the new process does not know which interval each was told."""
    return lost_after(cfg, spread(cfg, alive) * (1 + cfg.heartbeat_jitter))
