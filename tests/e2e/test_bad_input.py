"""Bad input gets a clear error and loses nothing: garbage on the bus, invalid specs at submit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from conftest import Cluster

from incl.proto import subjects
from incl.proto.audit import Outcome
from incl.proto.messages import Assign, JobState
from incl.proto.spec import load_spec

NO_SUCH_JOB = Assign(job_id="j-nosuchjob", attempt=1, spec=load_spec({"run": "true"}), owner="tester")

PY = sys.executable

GARBAGE = [
    b"",
    b"\x00\xff\xfe garbage",
    b"\xc1",  # never-used msgpack byte
    msgpack.packb({"type": "SubmitRequest"}),  # right tag, missing fields
    msgpack.packb({"type": "NoSuchMessage", "x": 1}),
    msgpack.packb([1, 2, 3]),
    msgpack.packb({"type": "PingRequest", "meta": {"request_id": "r", "sender": "s", "version": 999}}),
    b"\x92" * 10_000,  # deeply nested arrays
]

USER_VERBS = (subjects.SUBMIT, subjects.LIST_JOBS, subjects.GET_JOB, subjects.CANCEL, subjects.LIST_AGENTS,
              subjects.PING, subjects.STATUS, subjects.QUOTA, subjects.DEAD_LETTERS, subjects.SUBMIT_STUDY,
              subjects.LIST_STUDIES, subjects.GET_STUDY, subjects.STOP_STUDY, subjects.REGISTER_MODEL,
              subjects.LIST_MODELS, subjects.GET_MODEL, subjects.LIST_VERSIONS, subjects.ALIAS_MODEL, subjects.AUDIT,
              subjects.USERS_ADDED, subjects.USERS_REMOVED, subjects.USERS_ROTATED, subjects.CREATE_SHARE,
              subjects.LIST_SHARES, subjects.REVOKE_SHARE, subjects.RESOLVE_SHARE)
AGENT_VERBS = (subjects.REGISTER, subjects.HEARTBEAT, subjects.ASSIGNMENT)
API = [*(subjects.user_api("tester", verb) for verb in USER_VERBS),
       *(subjects.agent_api("a1", verb) for verb in AGENT_VERBS)]


# What is under test is the daemons (separate processes). In 1 of 4 full-suite runs, a nats-py connection of this
# test's own garbage-sending client was garbage-collected with its socket still open (`_init_request_sub`), which
# pytest's unraisable-exception check turns into a failure of the test process itself.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_garbage_on_every_subject_is_dropped_and_both_daemons_keep_serving(cluster: Cluster) -> None:
    cluster.start_controller()
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    async with cluster.client() as client:
        bus = client.bus
        for subject in API:
            for payload in GARBAGE:
                decoded = msgpack.unpackb(await bus.request_raw(subject, payload, timeout=5))
                assert decoded["type"] == "ErrorReply"
                assert decoded["code"] in ("decode_error", "version_mismatch"), decoded
        for payload in GARBAGE:
            await bus.publish_durable(subjects.assign("a1"), payload)
            await bus.publish_durable(subjects.events("a1"), payload)
            await bus.publish_durable(subjects.logs(NO_SUCH_JOB, "k", "a1"), payload)
            await bus.publish_durable(subjects.metrics(NO_SUCH_JOB, "k", "a1"), payload)
            await bus.publish(subjects.agent_api("a1", subjects.HEARTBEAT), payload)  # no reply subject at all
        # Garbage on a verb that changes something is in the audit trail, as an error of the caller the subject names.
        recorded = await client.audit(user="tester", verb=subjects.SUBMIT, limit=100)
        assert len(recorded) == len(GARBAGE) and {e.outcome for e in recorded} == {Outcome.ERROR}, recorded
    job = await cluster.submit("echo still alive")
    done = await cluster.wait_done(job.id)
    assert done.state is JobState.SUCCEEDED
    assert await cluster.log_lines(job.id) == [b"still alive"]
    assert cluster.controller.running and cluster.agents["a1"].running
    assert "message_dropped" in cluster.controller.output()
    assert "message_dropped" in cluster.agents["a1"].output()


def run_cli(cluster: Cluster, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-m", "incl.cli", "--nats", cluster.nats.url, *args], capture_output=True,
                          text=True, timeout=30, cwd=cwd)


async def test_invalid_specs_are_refused_with_the_field_and_nothing_is_queued(cluster: Cluster,
                                                                              tmp_path: Path) -> None:
    cluster.start_controller()
    cluster.start_agent("a1", cpus=2)
    await cluster.wait_agents(1)
    cases = {
        "resorces:\n  gpus: 1\nrun: x\n": ("resorces", "did you mean 'resources'"),
        "run: x\nresources:\n  gpu: 1\n": ("resources.gpu", "did you mean 'gpus'"),
        "run: x\nresources:\n  cpus: lots\n": ("resources.cpus", "expected `float`"),
        "run: x\nresources:\n  memory: 12 parsecs\n": ("resources.memory", "is not a size"),
        "name: no-run\n": ("run", "is required"),
        "run: x\nhpo:\n  trials: 3\n": ("hpo.metric", "must name a metric"),
        "run: x\nhpo: {metric: m, trials: 2, parallel: 3, params: {X: [1, 2]}}\n": ("hpo.parallel", "more than"),
        "run: x\ndata:\n  - source: bucket/x\n    target: d\n": ("data[0].source", "s3://"),
        "run: x\ncheckpoint:\n  sync_every: soon\n": ("checkpoint.sync_every", "not a duration"),
        "run: [1, 2\n": ("", "not valid YAML"),
        "- just\n- a list\n": ("", "mapping"),
    }
    for i, (text, (field, reason)) in enumerate(cases.items()):
        spec = tmp_path / f"bad{i}.yaml"
        spec.write_text(text)
        out = run_cli(cluster, "submit", "-f", str(spec))
        assert out.returncode == 2, (text, out.stdout, out.stderr)
        assert f"{field}:" in out.stderr and reason in out.stderr, (text, out.stderr)
    # Refused by the controller: no agent or provider could ever fit it.
    project = tmp_path / "project"  # the default workdir; not tmp_path, which holds the CLI's own $INCL_HOME
    project.mkdir()
    out = run_cli(cluster, "submit", "--cpus", "512", "--", "true", cwd=project)
    assert out.returncode == 1 and "can ever fit" in out.stderr, out.stderr
    listed = json.loads(run_cli(cluster, "ls", "--json").stdout)
    assert listed == []


async def test_cli_without_a_controller_says_how_to_start_one(cluster: Cluster) -> None:
    out = run_cli(cluster, "ls")  # NATS is up, no controller
    assert out.returncode == 3 and "incl up" in out.stderr
    out = subprocess.run([PY, "-m", "incl.cli", "--nats", "nats://127.0.0.1:1", "ls"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 3 and "cannot reach NATS" in out.stderr and "Traceback" not in out.stderr
    out = run_cli(cluster, "show", "j-nosuch")
    assert out.returncode == 3  # still no controller
    cluster.start_controller()
    await cluster.wait_controller()
    out = run_cli(cluster, "show", "j-nosuch")
    assert out.returncode == 1 and "no job with id 'j-nosuch'" in out.stderr
