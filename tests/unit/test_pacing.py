"""Heartbeat pacing and liveness deadlines at fleet scale (pure)."""

from __future__ import annotations

import random

from incl.controller import pacing
from incl.controller.config import ControllerConfig
from incl.controller.liveness import Deadlines

CFG = ControllerConfig().pacing()  # 5 s interval, 20 s deadline, 400 heartbeats/s, jitter 0.25, 2.5 beats


def test_a_small_fleet_keeps_the_configured_interval_deadline_and_lease() -> None:
    p = pacing.pace(CFG, alive=100, draw=0.0)
    assert (p.interval, p.lost_after) == (5.0, 20.0)
    assert p.lease.duration + p.lease.grace < p.lost_after


def test_a_large_fleet_stretches_the_interval_to_stay_under_the_heartbeat_budget() -> None:
    rng = random.Random(1)
    for alive in (2_000, 5_000, 10_000):
        intervals = [pacing.pace(CFG, alive, rng.random()).interval for _ in range(5_000)]
        rate = sum(alive / i for i in intervals) / len(intervals)  # the fleet's mean heartbeats per second
        assert rate <= CFG.max_heartbeats_per_second, (alive, rate)
        assert min(intervals) >= alive / CFG.max_heartbeats_per_second
        assert max(intervals) <= alive / CFG.max_heartbeats_per_second * (1 + CFG.heartbeat_jitter)


def test_a_stretched_deadline_follows_the_interval_given_and_the_lease_ends_before_it() -> None:
    for draw in (0.0, 0.5, 0.999):
        p = pacing.pace(CFG, alive=10_000, draw=draw)
        assert p.lost_after == CFG.lost_after_beats * p.interval  # under 3 intervals: a dead agent is found fast
        assert p.interval < p.lease.duration  # a live agent renews its lease before it runs out
        assert p.lease.duration + p.lease.grace < p.lost_after  # its jobs are dead before they are handed on


def test_after_a_restart_every_agent_gets_the_longest_deadline_it_may_have_been_told() -> None:
    longest = pacing.longest_deadline(CFG, 10_000)
    assert all(pacing.pace(CFG, 10_000, d / 100).lost_after <= longest for d in range(100))
    assert pacing.longest_deadline(CFG, 10) == CFG.agent_lost_after


def test_deadlines_expire_in_order_and_a_beat_moves_an_agents_deadline() -> None:
    d = Deadlines()
    for i in range(1_000):
        d.beat(f"a{i}", now=0.0, within=10.0 + i)
    for _ in range(50):  # agents that beat often leave stale entries behind: each is skipped
        d.beat("a0", now=0.0, within=2_000.0)
    d.forget("a1")
    assert len(d) == 999 and "a1" not in d
    assert d.next_due() == 12.0  # a2's
    assert d.expired(now=14.0) == ["a2", "a3", "a4"]
    assert d.next_due() == 15.0
    assert "a0" not in d.expired(now=1_500.0) and "a0" in d
    assert d.expired(now=2_000.0) == ["a0"] and len(d) == 0 and d.next_due() is None
