"""HPO studies under faults, with real processes killed -9: the controller (twice, at different moments), NATS
(restarted on its store), and an agent running a trial. Each time the study reaches exactly `trials` trials, no
trial runs twice (one job per trial number; each job one run unless its agent was lost), none stays RUNNING for
ever, and the journal replays to the same study from a fresh connection."""

from __future__ import annotations

import asyncio
from pathlib import Path

import optuna
import pytest
from conftest import Cluster, wait_for
from test_hpo import study_spec, submit_study, wait_study

from incl.hpo import storage
from incl.proto.messages import TERMINAL, Job, JobState
from incl.proto.studies import GetStudyReply, StudyState, TrialState

pytestmark = pytest.mark.slow

# Each run of a trial appends a line to a file of its own: a trial run twice shows two lines.
SLOW = (
    "import incl, os, time\n"
    "with open(os.path.join(os.environ['RUNS'], os.environ['INCL_STUDY_ID'] + '-' + "
    "os.environ['INCL_TRIAL_NUMBER']), 'a') as f:\n"
    "    f.write(os.environ['INCL_JOB_ID'] + ' ' + os.environ['INCL_ATTEMPT'] + '\\n')\n"
    "time.sleep(float(os.environ.get('SLEEP', '0.6')))\n"
    "incl.log({'loss': (float(os.environ['X']) - 1) ** 2})\n"
)


def spec(runs: Path, trials: int, parallel: int, sleep: float = 0.6, **extra: object) -> dict[str, object]:
    return {**study_spec("python3 trial.py", trials=trials, parallel=parallel, sampler="tpe", seed=3,
                         params={"X": {"type": "float", "low": -3, "high": 3}}),
            "env": {"RUNS": str(runs), "SLEEP": str(sleep)}, **extra}


async def trial_jobs(cluster: Cluster, study_id: str) -> list[Job]:
    async with cluster.client() as c:
        return list(await c.jobs(study=study_id))


def check_exactly_once(done: GetStudyReply, runs: Path, trials: int, jobs: list[Job]) -> None:
    assert done.summary.study.state is StudyState.COMPLETED, done.summary.study
    numbers = [t.number for t in done.trials]
    assert numbers == list(range(trials)), numbers
    assert all(t.state is not TrialState.RUNNING for t in done.trials)
    assert all(t.state is TrialState.COMPLETE for t in done.trials), [(t.number, t.state, t.reason)
                                                                        for t in done.trials]
    by_trial: dict[int, list[Job]] = {}
    for job in jobs:
        assert job.trial is not None
        by_trial.setdefault(job.trial.number, []).append(job)
    assert sorted(by_trial) == numbers and all(len(js) == 1 for js in by_trial.values()), "a trial got two jobs"
    for n in numbers:
        lines = (runs / f"{done.summary.study.id}-{n}").read_text().splitlines()
        (job,) = by_trial[n]
        # one run per attempt of the one job; an attempt never ran twice
        assert len(lines) == len(set(lines)) and {line.split()[0] for line in lines} == {job.id}, lines


def replay(url: str, study_id: str) -> list[tuple[int, str, dict[str, object], float | None]]:
    loaded = optuna.load_study(study_name=study_id, storage=storage(url, study_id))
    return [(t.number, t.state.name, t.params, t.value) for t in loaded.trials]


async def test_controller_killed_twice_mid_study_runs_each_trial_exactly_once(cluster: Cluster,
                                                                            tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    cluster.start_controller()
    cluster.start_agent("a1", cpus=4)
    await cluster.wait_agents(1)
    created = await submit_study(cluster, spec(runs, trials=14, parallel=3), tmp_path, SLOW)
    for started in (3, 8):  # once early, once with trials finished and others in flight
        await wait_for(lambda n=started: _started(runs, created.id, n), timeout=60,
                       what=f"{started} trials to have started")
        assert cluster.controller is not None
        cluster.controller.kill()
        await asyncio.sleep(0.3)
        cluster.start_controller()
    done = await wait_study(cluster, created.id, timeout=120)
    check_exactly_once(done, runs, 14, await trial_jobs(cluster, created.id))
    assert replay(cluster.nats.url, created.id) == replay(cluster.nats.url, created.id)
    assert [t[0] for t in replay(cluster.nats.url, created.id)] == list(range(14))


def _started(runs: Path, study_id: str, n: int) -> bool:
    return len(list(runs.glob(f"{study_id}-*"))) >= n


async def test_nats_killed_and_restarted_on_its_store_mid_study_loses_nothing(cluster: Cluster,
                                                                            tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    cluster.start_controller()
    cluster.start_agent("a1", cpus=4)
    await cluster.wait_agents(1)
    created = await submit_study(cluster, spec(runs, trials=10, parallel=3), tmp_path, SLOW)
    await wait_for(lambda: _started(runs, created.id, 4), timeout=60, what="4 trials to have started")
    cluster.nats.kill()
    await asyncio.sleep(0.5)
    cluster.nats.start()
    done = await wait_study(cluster, created.id, timeout=150)
    jobs = await trial_jobs(cluster, created.id)
    check_exactly_once(done, runs, 10, jobs)
    before = replay(cluster.nats.url, created.id)
    assert [t[0] for t in before] == list(range(10)) and all(t[1] == "COMPLETE" for t in before)


async def test_an_agent_killed_mid_trial_resumes_that_trial_as_the_same_trial(cluster: Cluster,
                                                                            tmp_path: Path) -> None:
    """The trial's job is LOST with its agent and retried (as the same job, the same trial number) on a spare;
    the study still runs exactly `trials` trials."""
    runs = tmp_path / "runs"
    runs.mkdir()
    cluster.start_controller()
    cluster.start_agent("a1", cpus=2)
    await cluster.wait_agents(1)
    created = await submit_study(cluster, spec(runs, trials=4, parallel=2, sleep=3.0,
                                               retry={"max_attempts": 3}), tmp_path, SLOW)
    await wait_for(lambda: _started(runs, created.id, 2), timeout=60, what="2 trials running on a1")
    cluster.agents["a1"].kill()
    cluster.start_agent("a2", cpus=2)
    done = await wait_study(cluster, created.id, timeout=150)
    jobs = await trial_jobs(cluster, created.id)
    check_exactly_once(done, runs, 4, jobs)
    lost = [j for j in jobs if [a.state for a in j.attempts][:1] == [JobState.LOST]]
    assert lost, [[a.state for a in j.attempts] for j in jobs]
    for job in lost:
        assert job.state is JobState.SUCCEEDED and job.attempts[-1].agent_id == "a2"
        assert job.trial is not None
        number = job.trial.number
        # attempt 1 started on a1 and died there; attempt 2 is the same trial, the same job
        lines = (runs / f"{created.id}-{number}").read_text().splitlines()
        assert [line.split()[1] for line in lines] == ["1", "2"], lines


async def test_an_agent_killed_mid_trial_without_retry_ends_the_trial_fail_never_running(
        cluster: Cluster, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    cluster.start_controller()
    cluster.start_agent("a1", cpus=2)
    await cluster.wait_agents(1)
    created = await submit_study(cluster, spec(runs, trials=3, parallel=1, sleep=3.0,
                                               retry={"max_attempts": 1}), tmp_path, SLOW)
    await wait_for(lambda: _started(runs, created.id, 1), timeout=60, what="a trial running on a1")
    cluster.agents["a1"].kill()
    cluster.start_agent("a2", cpus=2)
    done = await wait_study(cluster, created.id, timeout=150)
    assert [t.number for t in done.trials] == [0, 1, 2]
    first = done.trials[0]
    assert first.state is TrialState.FAIL and "no attempts left" in (first.reason or ""), first
    assert all(t.state is TrialState.COMPLETE for t in done.trials[1:])
    assert all(j.state in TERMINAL for j in await trial_jobs(cluster, created.id))
