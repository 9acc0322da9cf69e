"""The API of the Compare, Study and Cluster pages against a real stack (nats-server, controller, a CPU agent and
one whose recorded GPU goes idle, `python -m incl.web`): side by side with differences marked, a tiny HPO study
read back whole, the cluster with its GPU readings, idle alert and quota, and each error naming what it lacks."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from conftest import wait_for
from webpages import IDLE, PY, RUN, start_gpu_agent, submit_study
from webstack import WebStack, web_stack

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebStack]:
    tmp = tmp_path_factory.mktemp("webpages")
    with web_stack(tmp) as s:
        start_gpu_agent(s.cluster, tmp)
        yield s


@pytest.fixture
async def http(stack: WebStack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(stack.url) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, path: str, status: int = 200) -> Any:
    async with http.get(path) as resp:
        body = await resp.json()
        assert resp.status == status, body
        return body


async def test_compare_shows_two_runs_side_by_side_with_their_differences_marked(
        stack: WebStack, http: aiohttp.ClientSession) -> None:
    slow = await stack.cluster.submit(f"{PY} -c \"{RUN}\"", name="lr-small", env={"LR": "0.01", "MODE": "fast"})
    fast = await stack.cluster.submit(f"{PY} -c \"{RUN}\"", name="lr-big", env={"LR": "0.1", "MODE": "fast"})
    for job in (slow, fast):
        assert (await stack.cluster.wait_done(job.id)).state == "SUCCEEDED"
    body = await get_json(http, f"/api/compare?jobs={slow.id},{fast.id}")
    assert [j["id"] for j in body["jobs"]] == [slow.id, fast.id]
    rows = {(r["kind"], r["key"]): r for r in body["rows"]}
    assert rows["env", "LR"] == {"kind": "env", "key": "LR", "values": ["0.01", "0.1"], "differs": True}
    assert rows["env", "MODE"]["values"] == ["fast", "fast"] and not rows["env", "MODE"]["differs"]
    assert rows["job", "name"]["values"] == ["lr-small", "lr-big"] and not rows["job", "run"]["differs"]
    # The final metric is the last value logged (step 49), shown to six digits, with its step and point count.
    last = [1.0 / (1 + 49 * lr) for lr in (0.01, 0.1)]
    assert [f["loss"] for f in body["final"]] == [{"value": v, "step": 49.0, "points": 50} for v in last]
    assert rows["metric", "loss"]["values"] == [f"{v:.6g}" for v in last] and rows["metric", "loss"]["differs"]
    assert {k for k, _ in rows} == {"job", "env", "metric"}  # no HPO params: neither is a trial
    # The same job twice is one column; an unknown job is named; none, or more than ten, names `jobs`.
    assert len((await get_json(http, f"/api/compare?jobs={slow.id},{slow.id}"))["jobs"]) == 1
    assert await get_json(http, f"/api/compare?jobs={slow.id},j-nothere", 404) == {"error": "no job j-nothere"}
    for query in ["", "?jobs=", "?jobs=,,", "?jobs=" + ",".join(f"j-{i}" for i in range(11))]:
        bad = await get_json(http, f"/api/compare{query}", 400)
        assert bad["parameter"] == "jobs" and "jobs" in bad["error"], bad


async def test_a_finished_study_reads_back_with_trials_curve_and_importances(
        stack: WebStack, http: aiohttp.ClientSession) -> None:
    study = await submit_study(stack.cluster)

    async def ended() -> Any:
        body = await get_json(http, f"/api/studies/{study.id}")
        return body if body["summary"]["study"]["state"] == "COMPLETED" else None

    body = await wait_for(ended, 75, "the study to complete", interval=0.5)
    trials = body["trials"]
    assert len(trials) == 5 and {t["state"] for t in trials} == {"COMPLETE"}
    assert all(set(t["params"]) == {"LR", "LAYERS", "OPT"} and t["job_id"].startswith("j-") for t in trials)
    summary = body["summary"]
    best = min(trials, key=lambda t: t["value"])
    assert summary["best_trial"] == best["number"] and summary["best_value"] == best["value"]
    assert summary["counts"] == {"COMPLETE": 5} and summary["study"]["spec"]["hpo"]["metric"] == "loss"
    assert len(body["best_so_far"]) == 5 and body["best_so_far"] == sorted(body["best_so_far"], reverse=True)
    assert set(body["importances"]) <= {"LR", "LAYERS", "OPT"} and body["importances"]
    listed = await get_json(http, "/api/studies")
    assert listed["studies"][0]["study"]["id"] == study.id and listed["studies"][0]["counts"] == {"COMPLETE": 5}
    assert await get_json(http, "/api/studies/s-nothere", 404) == {"error": "no study s-nothere"}
    # The jobs list links a trial's job to its study, and two trials compare by their HPO params.
    page = await get_json(http, f"/api/jobs?q={study.id}")
    assert page["total"] == 5 and {r["study"] for r in page["jobs"]} == {study.id}
    a, b = trials[0]["job_id"], trials[1]["job_id"]
    rows = {(r["kind"], r["key"]): r for r in (await get_json(http, f"/api/compare?jobs={a},{b}"))["rows"]}
    assert rows["param", "LR"]["differs"] and rows["param", "LR"]["values"][0] == str(trials[0]["params"]["LR"])
    assert rows["job", "study"]["values"] == [f"{study.id} #{t['number']}" for t in trials[:2]]


async def test_cluster_lists_agents_gpu_readings_the_idle_job_and_quota(stack: WebStack,
                                                                       http: aiohttp.ClientSession) -> None:
    await stack.cluster.wait_agents(2)  # the GPU agent registered (the fixture only started it)
    job = await stack.cluster.submit("sleep 60", name="napper", resources={"gpus": 1}, gpu_idle=IDLE)
    await stack.cluster.wait_state(job.id, {"RUNNING"})

    async def idle() -> Any:
        body = await get_json(http, "/api/cluster")
        return body if body["idle"] else None

    body = await wait_for(idle, 30, "the job's GPUs to be reported idle", interval=0.3)
    [alert] = body["idle"]
    assert alert["job_id"] == job.id and alert["name"] == "napper" and alert["user"] == "tester"
    assert alert["agent_id"] == "gpu1" and alert["since"] <= body["now"]
    agents = {a["id"]: a for a in body["agents"]}
    assert set(agents) == {"a1", "gpu1"} and {a["state"] for a in agents.values()} == {"alive"}
    gpu = agents["gpu1"]
    assert gpu["gpus"] == 1 and gpu["used_gpus"] == 1 and gpu["jobs"] == [job.id] and gpu["provider"] == "local"
    [stats] = gpu["gpu_stats"]
    assert stats["model"] == "Fake A100" and stats["jobs"] == [job.id] and stats["util"] is not None
    assert agents["a1"]["cpus"] == 8 and agents["a1"]["gpu_stats"] == []
    assert {"kind": "user", "name": "tester", "used": 1, "limit": None} in body["quota"]
    async with stack.cluster.client() as c:
        await c.cancel(job.id)
    await stack.cluster.wait_done(job.id)


def test_the_pages_are_served_under_the_script_only_from_self_policy(stack: WebStack) -> None:
    for path in ["/compare?jobs=j-a,j-b", "/studies", "/studies/s-anything", "/cluster", "/static/js/parallel.js"]:
        with urllib.request.urlopen(stack.url + path) as resp:
            assert resp.status == 200
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
