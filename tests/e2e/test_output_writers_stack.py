"""Issue 15 end to end, with auth on: a controller, agents a1 and a2 and the web server with their own credentials,
and a third agent's credentials (a3's, no daemon) in the hands of an attacker. What a3 writes under its own id on a
job it was not assigned is accepted by the NATS server, and shown by no reader: `incl logs`, the web API's log and
metrics endpoints, an HPO study's objective. A two-node job's ranks, on a1 and a2, are all shown."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from authstack import AuthNats, make_people, start_with_creds
from conftest import Cluster, Daemon, free_port, wait_for, wait_listening

from incl.bus.connection import connect
from incl.cli.files import upload_workdir
from incl.proto import subjects
from incl.proto.codec import encode
from incl.proto.messages import Job, JobState, LogBatch, LogLine, MetricBatch, MetricPoint
from incl.proto.spec import load_spec
from incl.proto.studies import STUDY_ENDED

pytestmark = pytest.mark.slow

# One trial: a log line and a metric, then it waits for the test's go-ahead (a file), so the forgeries land while
# it runs and before the controller reads its objective.
TRIAL = (
    "import incl, os, time\n"
    "print('real-line', flush=True)\n"
    "incl.log({'loss': 1.0}, step=0)\n"
    "while not os.path.exists(os.environ['GO']):\n"
    "    time.sleep(0.05)\n"
)


@pytest.fixture
def auth_nats(tmp_path: Path) -> Iterator[AuthNats]:
    home = tmp_path / "home"
    make_people(home, {"alice": (["vision"], [], True)}, agents=("a1", "a2", "a3"))
    server = AuthNats(home, tmp_path).start()
    yield server
    server.kill()


@pytest.fixture
async def stack(auth_nats: AuthNats, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                ) -> AsyncIterator[tuple[Cluster, str]]:
    monkeypatch.setenv("INCL_HOME", str(auth_nats.home))
    monkeypatch.setenv("INCL_CREDS", str(auth_nats.creds("user", "alice")))
    cluster = Cluster(tmp_path, auth_nats)  # type: ignore[arg-type]  # an AuthNats serves as its NatsServer
    start_with_creds(cluster, auth_nats)
    cluster.start_agent("a2", creds=str(auth_nats.creds("agent", "a2")))
    port = free_port()
    cfg = tmp_path / "web.yaml"
    cfg.write_text(yaml.safe_dump({"nats_url": auth_nats.url, "port": port,
                                   "creds": str(auth_nats.creds("user", "alice"))}))
    web = Daemon("web", [sys.executable, "-m", "incl.web", "--config", str(cfg)], tmp_path / "web.log",
                 cluster.env).start()
    try:
        wait_listening(web, port, timeout=30.0)
        await cluster.wait_agents(2)
        yield cluster, f"http://127.0.0.1:{port}"
    finally:
        web.stop()
        cluster.close()


async def forge(server: AuthNats, job: Job) -> None:
    """a3 writes a log line and a metric point on the job's current attempt, under its own id: accepted."""
    att = job.attempts[-1]
    log = LogBatch(job_id=job.id, attempt=att.number, seq=0, lines=[LogLine(ts=1.0, stream=1, data=b"forged-line")])
    metric = MetricBatch(job_id=job.id, attempt=att.number, seq=0,
                         points=[MetricPoint(ts=1.0, step=0, values={"loss": -100.0})])
    async with await connect(server.url, "a3", connect_timeout=2, reconnect_wait=0.1, request_timeout=5,
                             max_reconnect_attempts=0, quiet=True, creds=server.creds("agent", "a3")) as a3:
        await a3.publish_durable(subjects.logs(job, att.output_key, "a3"), encode(log))
        await a3.publish_durable(subjects.metrics(job, att.output_key, "a3"), encode(metric))


async def web_text(web: str, path: str) -> str:
    async with aiohttp.ClientSession(web) as http, http.get(path) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.text()


async def test_another_agents_batches_are_shown_nowhere_and_every_rank_of_a_gang_is(
        stack: tuple[Cluster, str], auth_nats: AuthNats, tmp_path: Path) -> None:
    cluster, web = stack
    go = tmp_path / "go"
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "trial.py").write_text(TRIAL)
    spec = load_spec({"run": "python3 trial.py", "workdir": str(tmp_path / "work"), "env": {"GO": str(go)},
                      "hpo": {"metric": "loss", "trials": 1, "parallel": 1,
                              "params": {"X": {"type": "float", "low": 0, "high": 1}}}})
    await cluster.wait_controller()
    async with cluster.client() as alice:
        code = await upload_workdir(alice, spec.workdir) if spec.workdir else None
        study = await alice.submit_study(spec, code=code)

        async def running() -> Job | None:
            jobs = await alice.jobs(study=study.id)
            return jobs[0] if jobs and jobs[0].state is JobState.RUNNING else None

        trial = await wait_for(running, 60, "the trial to run")
        await wait_for(lambda: _has_line(cluster, trial.id), 30, "the trial's line")
        await forge(auth_nats, trial)
        go.touch()

        async def ended() -> Any:
            reply = await alice.study(study.id)
            return reply if reply.summary.study.state in STUDY_ENDED else None

        done = await wait_for(ended, 60, "the study to end")
    assert [t.value for t in done.trials] == [1.0], cluster.dump()  # HPO: the objective is the trial's own
    shown = cluster.cli("logs", trial.id)
    assert shown.returncode == 0 and "real-line" in shown.stdout, shown.stdout + shown.stderr
    assert "forged-line" not in shown.stdout
    logs = await web_text(web, f"/api/jobs/{trial.id}/logs")
    assert "real-line" in logs and "forged-line" not in logs
    for query in ("", "?from=-10&to=10"):  # the summary of an ended run, and a range read point by point
        chart = await web_text(web, f"/api/jobs/{trial.id}/metrics{query}")
        assert "-100" not in chart and "loss" in chart, chart

    gang = await cluster.submit("echo rank-$NODE_RANK-line", user="alice", resources={"nodes": 2, "cpus": 1})
    ended_gang = await cluster.wait_done(gang.id, timeout=60)
    assert ended_gang.state is JobState.SUCCEEDED, cluster.dump()
    assert ended_gang.current is not None and sorted(n.agent_id for n in ended_gang.current.nodes) == ["a1", "a2"]
    await forge(auth_nats, ended_gang)
    shown = cluster.cli("logs", gang.id)
    assert shown.returncode == 0, shown.stderr
    logs = await web_text(web, f"/api/jobs/{gang.id}/logs")
    for text in (shown.stdout, logs):
        assert "rank-0-line" in text and "rank-1-line" in text and "forged-line" not in text, text


async def _has_line(cluster: Cluster, job_id: str) -> bool:
    return b"real-line" in await cluster.log_lines(job_id)
