"""Placement is a pure function: priority then submit time, fit on free resources, spread, reasons to wait."""

from __future__ import annotations

from incl.controller.scheduler import Slot, could_ever_fit, plan
from incl.proto.messages import Job, JobState, Resources
from incl.proto.spec import load_spec


def job(i: str, t: float, prio: int = 0, cpus: float = 1, gpus: int = 0, memory: str | None = None) -> Job:
    res: dict[str, object] = {"cpus": cpus, "gpus": gpus}
    if memory:
        res["memory"] = memory
    return Job(id=i, spec=load_spec({"run": "x", "priority": prio, "resources": res}), user="u",
               state=JobState.QUEUED, submitted_at=t, updated_at=t)


def slot(a: str, cpus: float, gpus: int = 0, memory: int = 10**12) -> Slot:
    return Slot(agent_id=a, free=Resources(cpus=cpus, memory=memory, gpus=gpus))


def test_priority_first_then_submit_time() -> None:
    p = plan([job("late", 2), job("early", 1), job("urgent", 3, prio=5)], [slot("a", 2)])
    assert [j for j, _ in p.placements] == ["urgent", "early"]
    assert p.waiting == {"late": "waiting for an agent with 1 CPU free"}


def test_spreads_over_agents_and_never_overcommits() -> None:
    p = plan([job(str(i), i) for i in range(5)], [slot("a", 2), slot("b", 2)])
    placed = [a for _, a in p.placements]
    assert sorted(placed) == ["a", "a", "b", "b"] and placed[:2] in (["a", "b"], ["b", "a"])
    assert list(p.waiting) == ["4"]


def test_a_big_job_waits_while_smaller_ones_behind_it_run() -> None:
    p = plan([job("big", 1, cpus=8), job("small", 2)], [slot("a", 4)])
    assert p.placements == [("small", "a")] and "8 CPU" in p.waiting["big"]


def test_a_long_queue_of_one_shape_that_fits_nowhere_still_says_why_each_waits() -> None:
    """1,000 queued 8-CPU jobs and a 4-CPU agent: each waits with the same reason (one fit check per shape in a
    pass), and a 1-CPU job queued behind them all is still placed."""
    queue = [job(f"big{i}", i, cpus=8) for i in range(1000)] + [job("small", 2000)]
    p = plan(queue, [slot("a", 4)])
    assert p.placements == [("small", "a")] and len(p.waiting) == 1000
    assert set(p.waiting.values()) == {"waiting for an agent with 8 CPU free"}


def test_gpu_jobs_go_to_gpu_agents_and_cpu_jobs_prefer_cpu_agents() -> None:
    p = plan([job("g", 1, gpus=1), job("c", 2)], [slot("gpu", 8, gpus=1), slot("cpu", 8)])
    assert dict(p.placements) == {"g": "gpu", "c": "cpu"}


def test_memory_counts_and_no_agents_says_so() -> None:
    p = plan([job("m", 1, memory="2GB")], [slot("a", 4, memory=10**9)])
    assert p.placements == [] and "2.0 GB memory" in p.waiting["m"]
    assert plan([job("x", 1)], []).waiting == {"x": "waiting for an agent to register"}


def test_could_ever_fit() -> None:
    shapes = [Resources(cpus=4, memory=10**10), Resources(cpus=8, memory=10**11, gpus=8, gpu_model="A100")]
    assert could_ever_fit(job("a", 0, cpus=8, gpus=2).spec.resources, shapes)
    assert not could_ever_fit(job("a", 0, cpus=16).spec.resources, shapes)
    assert not could_ever_fit(load_spec({"run": "x", "resources": {"gpus": "H100:1"}}).resources, shapes)


def test_a_job_with_secrets_goes_only_to_an_agent_that_sent_a_sealing_key() -> None:
    """An older agent (no key) gets jobs without secrets, never one with them: that one waits, saying why, when no
    agent with a key has room."""
    secret = Job(id="s", spec=load_spec({"run": "x", "secrets": {"TOKEN": "v"}}), user="u", state=JobState.QUEUED,
                 submitted_at=1, updated_at=1)
    old = Slot(agent_id="old", free=Resources(cpus=4, memory=10**12), seals=False)
    p = plan([secret, job("plain", 2)], [old])
    assert p.placements == [("plain", "old")] and "can receive secrets" in p.waiting["s"]
    p = plan([secret], [old, slot("new", 1)])
    assert p.placements == [("s", "new")]
