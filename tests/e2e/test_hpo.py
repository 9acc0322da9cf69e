"""HPO studies end to end: real nats-server, controller and agents; every trial a real process.

A trial reads its parameters from the environment (named as in `params:`) and reports with `incl.log`; the
study lives in its journal on the bus, so plain Optuna reads it back the same."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import Cluster, wait_for

from incl.proto.messages import TERMINAL, JobState
from incl.proto.spec import load_spec
from incl.proto.studies import STUDY_ENDED, GetStudyReply, Study, StudyState, TrialState

pytestmark = pytest.mark.slow

# Minimise (X - 1.5)^2 + (Y + 0.5)^2 over [-4, 4]^2. The trial prints what it read, exactly as read.
QUADRATIC = (
    "import incl, json, os\n"
    "x, y = float(os.environ['X']), float(os.environ['Y'])\n"
    "print('PARAMS', json.dumps({'X': os.environ['X'], 'Y': os.environ['Y'], 'typed': incl.params(),\n"
    "      'study': os.environ['INCL_STUDY_ID'], 'trial': int(os.environ['INCL_TRIAL_NUMBER'])}))\n"
    "incl.log({'loss': (x - 1.5) ** 2 + (y + 0.5) ** 2}, step=0)\n"
)

# A learning curve: a bad trial (high BAD) stays high and is pruned; a good one goes down.
CURVE = (
    "import incl, os, time\n"
    "bad = os.environ['BAD'] == 'true'\n"
    "for step in range(40):\n"
    "    incl.log({'loss': (10.0 if bad else 1.0 / (step + 1))}, step=step)\n"
    "    time.sleep(0.1)\n"
)


def study_spec(run: str, **hpo: Any) -> dict[str, Any]:
    return {"run": run, "hpo": {"metric": "loss", **hpo}}


async def submit_study(cluster: Cluster, spec: dict[str, Any], tmp: Path, script: str) -> Study:
    (tmp / "work").mkdir(exist_ok=True)
    (tmp / "work" / "trial.py").write_text(script)
    parsed = load_spec({**spec, "workdir": str(tmp / "work")})
    await cluster.wait_controller()
    from incl.cli.files import upload_workdir
    async with cluster.client() as c:
        code = await upload_workdir(c, parsed.workdir) if parsed.workdir else None
        return await c.submit_study(parsed, user="tester", code=code)


async def study(cluster: Cluster, study_id: str) -> GetStudyReply:
    async with cluster.client() as c:
        return await c.study(study_id)


async def wait_study(cluster: Cluster, study_id: str, timeout: float = 120.0) -> GetStudyReply:
    async def check() -> GetStudyReply | None:
        reply = await study(cluster, study_id)
        return reply if reply.summary.study.state in STUDY_ENDED else None

    return await wait_for(check, timeout, f"study {study_id} to end", interval=0.5)


async def test_a_30_trial_study_over_two_agents_finds_the_minimum_with_exact_env_values(
        cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_controller()
    cluster.start_agent("a1", cpus=2)
    cluster.start_agent("a2", cpus=2)
    await cluster.wait_agents(2)
    spec = study_spec("python3 trial.py", trials=30, parallel=4, sampler="tpe", seed=7,
                      params={"X": {"type": "float", "low": -4, "high": 4},
                              "Y": {"type": "float", "low": -4, "high": 4}})
    created = await submit_study(cluster, spec, tmp_path, QUADRATIC)
    assert created.state is StudyState.RUNNING and created.id.startswith("s-")

    max_in_flight = 0

    async def in_flight() -> None:
        nonlocal max_in_flight
        while True:
            async with cluster.client() as c:
                jobs = await c.jobs(study=created.id)
            max_in_flight = max(max_in_flight, sum(1 for j in jobs if j.state not in TERMINAL))
            await asyncio.sleep(0.1)

    watcher = asyncio.create_task(in_flight())
    try:
        done = await wait_study(cluster, created.id, timeout=150)
    finally:
        watcher.cancel()
    assert done.summary.study.state is StudyState.COMPLETED
    assert len(done.trials) == 30 and all(t.state is TrialState.COMPLETE for t in done.trials)
    assert 1 <= max_in_flight <= 4
    assert done.summary.best_value is not None and done.summary.best_value < 0.5
    assert done.best_so_far == sorted(done.best_so_far, reverse=True)  # never gets worse

    async with cluster.client() as c:
        jobs = {j.trial.number: j for j in await c.jobs(study=created.id) if j.trial is not None}
    assert sorted(jobs) == list(range(30)) and all(j.state is JobState.SUCCEEDED for j in jobs.values())
    agents = {j.current.agent_id for j in jobs.values() if j.current}
    assert agents == {"a1", "a2"}
    # Plain Optuna reads the same study from the bus.
    from incl.hpo import storage
    loaded = optuna.load_study(study_name=created.id, storage=storage(cluster.nats.url, created.id))
    assert len(loaded.trials) == 30
    for trial, view in zip(loaded.trials, done.trials, strict=True):
        assert trial.params == view.params and trial.value == view.value
        assert -4 <= trial.params["X"] <= 4 and -4 <= trial.params["Y"] <= 4
        lines = [line for line in await cluster.log_lines(jobs[trial.number].id) if line.startswith(b"PARAMS")]
        seen = json.loads(lines[0].removeprefix(b"PARAMS "))
        # the env var reads back as exactly the float Optuna sampled, and incl.params() gives it typed
        assert float(seen["X"]) == trial.params["X"] and float(seen["Y"]) == trial.params["Y"]
        assert seen["typed"] == trial.params and seen["study"] == created.id and seen["trial"] == trial.number
        assert math.isclose(trial.value or 0.0, (trial.params["X"] - 1.5) ** 2 + (trial.params["Y"] + 0.5) ** 2)


async def test_a_bad_curve_is_pruned_and_its_process_is_gone(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_controller()
    cluster.start_agent("a1", cpus=4)
    await cluster.wait_agents(1)
    # Two good trials first (the median pruner needs finished trials to compare with), then bad ones: the grid's
    # order is drawn from the seed (4: good, good, bad, bad with Optuna 5.0).
    spec = study_spec("python3 trial.py", trials=4, parallel=1, sampler="grid", seed=4,
                      pruner={"type": "median", "startup_trials": 2, "min_step": 3},
                      params={"BAD": {"type": "categorical", "choices": [False, True]},
                              "R": {"type": "int", "low": 0, "high": 1}})
    created = await submit_study(cluster, spec, tmp_path, CURVE)
    done = await wait_study(cluster, created.id, timeout=120)
    states = {t.number: t for t in done.trials}
    pruned = [t for t in states.values() if t.state is TrialState.PRUNED]
    assert pruned, [(t.number, t.state, t.params, t.reason) for t in done.trials]
    for t in pruned:
        assert t.params["BAD"] is True and "pruned at step" in (t.reason or "")
        assert t.last_step is not None and t.last_step < 39  # stopped well before the end of its curve
        job = await cluster.job(t.job_id or "")
        assert job.state is JobState.CANCELLED
        # the pruner's decision (the trial's end) to the process gone (the attempt's end): well within 2 s
        assert job.current is not None and job.current.ended_at is not None and t.ended_at is not None
        assert job.current.ended_at - t.ended_at < 2.0, (job.current.ended_at, t.ended_at)
    assert all(t.state is TrialState.COMPLETE for t in done.trials if t.params["BAD"] is False)


SLEEPY = (
    "import incl, os, time\n"
    "time.sleep(float(os.environ['SLEEP']))\n"
    "incl.log({'loss': float(os.environ['X'])})\n"
)


async def test_stop_starts_no_more_trials_and_cancel_stops_the_running_ones(cluster: Cluster,
                                                                           tmp_path: Path) -> None:
    cluster.start_controller()
    cluster.start_agent("a1", cpus=4)
    await cluster.wait_agents(1)
    spec = {**study_spec("python3 trial.py", trials=50, parallel=2, params={"X": {"type": "float", "low": 0,
                                                                                "high": 1}}),
            "env": {"SLEEP": "30"}}
    created = await submit_study(cluster, spec, tmp_path, SLEEPY)

    async def two_running() -> bool:
        async with cluster.client() as c:
            return len([j for j in await c.jobs(study=created.id) if j.state is JobState.RUNNING]) == 2

    await wait_for(two_running, 30, "2 trials running")
    stopped = cluster.cli("study", "stop", created.id, "--cancel")
    assert stopped.returncode == 0 and created.id in stopped.stdout, stopped.stderr
    done = await wait_study(cluster, created.id, timeout=30)
    assert done.summary.study.state is StudyState.STOPPED and len(done.trials) == 2
    assert all(t.state is TrialState.FAIL and "cancelled" in (t.reason or "") for t in done.trials)
    async with cluster.client() as c:
        assert all(j.state is JobState.CANCELLED for j in await c.jobs(study=created.id))
    again = cluster.cli("study", "stop", created.id)
    assert again.returncode != 0 and "already ended" in (again.stdout + again.stderr)


async def test_a_wall_budget_stops_starting_trials_and_the_study_completes_with_the_reason(
        cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_controller()
    cluster.start_agent("a1", cpus=4)
    await cluster.wait_agents(1)
    spec = {**study_spec("python3 trial.py", trials=100, parallel=1, budget={"wall": "3s"},
                         params={"X": {"type": "float", "low": 0, "high": 1}}), "env": {"SLEEP": "1"}}
    created = await submit_study(cluster, spec, tmp_path, SLEEPY)
    done = await wait_study(cluster, created.id, timeout=30)
    assert done.summary.study.state is StudyState.COMPLETED
    assert "budget spent" in (done.summary.study.reason or "") and 1 <= len(done.trials) <= 4
    assert all(t.state is TrialState.COMPLETE for t in done.trials)  # running ones finished, none cut


async def test_the_cli_submits_lists_shows_and_filters_a_study(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start_controller()
    cluster.start_agent("a1", cpus=4)
    await cluster.wait_agents(1)
    work = tmp_path / "project"
    work.mkdir()
    (work / "trial.py").write_text(QUADRATIC)
    (work / "study.yaml").write_text(
        "name: quad\nworkdir: .\nrun: python3 trial.py\n"
        "hpo:\n  metric: loss\n  trials: 6\n  parallel: 2\n"
        "  params:\n    X: {type: float, low: -4, high: 4}\n    Y: {type: float, low: -4, high: 4}\n")
    (work / "bad.yaml").write_text("run: python3 trial.py\nhpo: {metric: loss, trials: 4, parallel: 2, params: "
                                   "{X: {type: float, low: 1, high: 0}}}\n")
    await cluster.wait_controller()
    bad = cluster.cli("submit", "-f", "bad.yaml", cwd=work)
    assert bad.returncode == 2 and "hpo.params.X" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert "no studies" in cluster.cli("study", "ls", cwd=work).stdout  # nothing was submitted
    sub = cluster.cli("submit", "-f", "study.yaml", cwd=work)
    assert sub.returncode == 0, sub.stderr
    study_id = sub.stdout.strip()
    assert study_id.startswith("s-")
    await wait_study(cluster, study_id, timeout=60)
    shown = cluster.cli("study", "show", study_id, env={"COLUMNS": "200"})
    assert shown.returncode == 0 and "COMPLETED" in shown.stdout and "best: trial" in shown.stdout, shown.stdout
    listed = json.loads(cluster.cli("study", "ls", "--json").stdout)
    assert [s["study"]["id"] for s in listed] == [study_id] and listed[0]["counts"] == {"COMPLETE": 6}
    trials = json.loads(cluster.cli("ls", "--study", study_id, "--json").stdout)
    assert sorted(j["trial"]["number"] for j in trials) == list(range(6))
    assert cluster.cli("study", "show", "s-nope").returncode == 1
