"""The GPU idle monitor: one alert per idle episode, a message when it ends, policy from the spec."""

from __future__ import annotations

import pytest

from incl.controller.idle import (
    DEFAULT_POLICY,
    Action,
    Episode,
    IdleEnded,
    IdleMonitor,
    IdlePolicy,
    IdleStarted,
    format_duration,
    policy_for,
    stale_episodes,
)
from incl.proto.errors import SpecInvalid
from incl.proto.spec import load_spec, parse_duration

POLICY = IdlePolicy(threshold=10, window=60, grace=0)


def policy(gpu_idle: object, default: IdlePolicy = DEFAULT_POLICY) -> IdlePolicy | None:
    """The policy a job with this `gpu_idle:` in its incl.yaml gets on a cluster with `default`."""
    return policy_for(load_spec({"run": "x", "gpu_idle": gpu_idle}).gpu_idle, default)


def feed(monitor: IdleMonitor, job_id: str, samples: list[tuple[float, float]]) -> list[tuple[float, object]]:
    """Feed (ts, util) samples; return (ts, event) for every event that came out."""
    return [(ts, ev) for ts, util in samples for ev in monitor.observe(job_id, ts, util)]


def every(step: float, start: float, end: float, util: float) -> list[tuple[float, float]]:
    n = int((end - start) / step)
    return [(start + i * step, util) for i in range(n + 1)]


def test_cluster_default_is_below_10_percent_for_15_minutes_then_notify() -> None:
    assert (DEFAULT_POLICY.threshold, DEFAULT_POLICY.window, DEFAULT_POLICY.action) == (10, 900, Action.NOTIFY)
    assert DEFAULT_POLICY.grace > 0


def test_alert_only_after_a_full_window_below_threshold_and_only_once() -> None:
    m = IdleMonitor()
    m.track("j", started_at=0, policy=POLICY)
    events = feed(m, "j", every(5, 0, 300, util=3.0))
    assert len(events) == 1
    ts, ev = events[0]
    assert ts == 60 and isinstance(ev, IdleStarted)
    assert (ev.since, ev.util, ev.action) == (0, 3.0, Action.NOTIFY)
    assert ev.describe() == "GPU utilization below 10% for 1m 00s (mean 3.0%)"
    assert m.idle_since("j") == 0


def test_one_busy_sample_restarts_the_window() -> None:
    m = IdleMonitor()
    m.track("j", started_at=0, policy=POLICY)
    samples = [*every(5, 0, 55, 2.0), (60, 50.0), *every(5, 65, 200, 2.0)]
    events = feed(m, "j", samples)
    assert [(ts, type(ev)) for ts, ev in events] == [(125, IdleStarted)]


def test_episode_ends_with_one_message_and_a_new_episode_needs_a_new_full_window() -> None:
    m = IdleMonitor()
    m.track("j", started_at=0, policy=POLICY)
    samples = [*every(10, 0, 100, 1.0), (110, 80.0), (120, 90.0), *every(10, 130, 250, 1.0)]
    events = feed(m, "j", samples)
    assert [(ts, type(ev).__name__) for ts, ev in events] == [
        (60, "IdleStarted"),
        (110, "IdleEnded"),
        (190, "IdleStarted"),
    ]
    ended = events[1][1]
    assert isinstance(ended, IdleEnded) and ended.since == 0 and ended.util == 80.0
    assert ended.describe() == "GPUs busy again (80%) after 1m 50s idle"
    assert m.idle_since("j") == 130


def test_samples_in_the_grace_period_do_not_count() -> None:
    m = IdleMonitor()
    m.track("j", started_at=1000, policy=IdlePolicy(threshold=10, window=60, grace=120))
    events = feed(m, "j", every(10, 1000, 1400, 0.0))
    assert [ts for ts, _ in events] == [1180]  # grace ends at 1120, then a full minute


def test_stop_action_is_carried_to_the_controller() -> None:
    m = IdleMonitor()
    m.track("j", started_at=0, policy=IdlePolicy(threshold=10, window=30, grace=0, action=Action.STOP))
    [(_, ev)] = feed(m, "j", every(10, 0, 40, 0.0))
    assert ev.action == Action.STOP


def test_jobs_are_watched_separately_and_untracked_or_forgotten_jobs_are_ignored() -> None:
    m = IdleMonitor()
    m.track("busy", started_at=0, policy=POLICY)
    m.track("idle", started_at=0, policy=POLICY)
    events = feed(m, "busy", every(10, 0, 200, 95.0)) + feed(m, "idle", every(10, 0, 200, 0.0))
    assert [ev.job_id for _, ev in events] == ["idle"]
    assert m.observe("never-tracked", 500, 0.0) == []
    m.forget("idle")
    assert feed(m, "idle", every(10, 300, 500, 0.0)) == []


def test_disabled_policy_watches_nothing() -> None:
    m = IdleMonitor()
    m.track("j", started_at=0, policy=policy(False))
    assert feed(m, "j", every(10, 0, 5000, 0.0)) == []


def test_stale_or_repeated_samples_are_ignored() -> None:
    m = IdleMonitor()
    m.track("j", started_at=0, policy=POLICY)
    feed(m, "j", [(0, 1.0), (50, 1.0)])
    assert m.observe("j", 40, 99.0) == []  # older than what was seen: ignored, the run goes on
    assert [type(e) for e in m.observe("j", 60, 1.0)] == [IdleStarted]


def test_tracking_again_after_a_restart_of_the_job_begins_afresh() -> None:
    m = IdleMonitor()
    m.track("j", started_at=0, policy=POLICY)
    feed(m, "j", every(10, 0, 100, 0.0))
    m.track("j", started_at=0, policy=POLICY)  # the same attempt again (controller rebuild): no change
    assert m.idle_since("j") == 0
    m.track("j", started_at=500, policy=POLICY)  # a new attempt
    assert m.idle_since("j") is None
    assert [ts for ts, _ in feed(m, "j", every(10, 500, 600, 0.0))] == [560]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("1h", 3600), ("1h30m", 5400), ("90", 90), (45, 45), (1.5, 1.5), ("2d", 172800),
     ("500ms", 0.5), (" 1H 5M ", 3900)],
)  # fmt: skip
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["fifteen minutes", "15 x", "m15", "-5s", -3, True, None, "1h-30m", ""])
def test_parse_duration_refuses_what_is_not_a_duration(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_duration() -> None:
    assert [format_duration(s) for s in (5, 65, 3725, 90000)] == ["5s", "1m 05s", "1h 02m", "1d 01h"]


def test_spec_policy_merges_over_the_cluster_default() -> None:
    cluster = IdlePolicy(threshold=5, window=600, grace=60)
    own = policy({"threshold": "20%", "window": "30s", "action": "stop"}, cluster)
    assert own == IdlePolicy(threshold=20, window=30, action=Action.STOP, grace=60)
    assert policy(None, cluster) == policy(True, cluster) == policy({}, cluster) == cluster
    assert policy({"threshold": None}, cluster) == cluster  # `key:` with nothing after it: the cluster's
    assert policy({"grace": "0s"}) == IdlePolicy(grace=0)
    assert policy(False, cluster) is None


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({"treshold": 10}, "gpu_idle.treshold", "did you mean 'threshold'"),
        ({"threshold": 0}, "gpu_idle.threshold", "above 0"),
        ({"threshold": 150}, "gpu_idle.threshold", "at most 100"),
        ({"threshold": "lots"}, "gpu_idle.threshold", "percentage"),
        ({"window": "soon"}, "gpu_idle.window", "duration"),
        ({"window": 0}, "gpu_idle.window", "longer than 0s"),
        ({"window": float("inf")}, "gpu_idle.window", "finite"),
        ({"action": "kill"}, "gpu_idle.action", "notify, stop"),
        ({"grace": "-1m"}, "gpu_idle.grace", "duration"),
        ({"grace": -1}, "gpu_idle.grace", "not negative"),
        ("15m", "gpu_idle", "mapping"),
        (5, "gpu_idle", "mapping"),
    ],
)
def test_bad_policy_is_refused_naming_the_key(raw: object, field: str, words: str) -> None:
    with pytest.raises(SpecInvalid) as err:
        load_spec({"run": "x", "gpu_idle": raw})
    assert err.value.field == field and words in err.value.message


def test_a_resumed_alerted_episode_stays_silent_until_busy_then_ends_with_its_own_start() -> None:
    m = IdleMonitor()
    m.track("j", 0.0, POLICY, alerted_since=100.0)  # alerted before a restart
    assert m.idle_since("j") == 100.0
    events = feed(m, "j", [(t, 0.0) for t in range(200, 400, 10)] + [(400, 90.0)])
    assert [(ts, type(e)) for ts, e in events] == [(400, IdleEnded)]
    assert events[0][1].since == 100.0  # type: ignore[attr-defined]
    assert [type(e) for _, e in feed(m, "j", [(t, 0.0) for t in range(410, 480, 5)])] == [IdleStarted]


def test_kept_episodes_of_jobs_no_longer_running_that_attempt_are_stale() -> None:
    def ep(job_id: str, attempt: int) -> Episode:
        return Episode(job_id=job_id, attempt=attempt, since=1.0, alerted_at=2.0, notice_id="n", detail="")

    kept = [ep("running", 1), ep("retried", 1), ep("ended", 2)]
    assert stale_episodes(kept, {"running": 1, "retried": 2}) == ["retried", "ended"]
