"""The model registry end to end: a real nats-server, controller and agent (one stack for the file), the `incl
model` commands in-process. Register, alias, download byte-identical, lineage, concurrent registrations, every
bad input, and gc keeping a registered version after its job's outputs are collected."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from conftest import Cluster, NatsServer

from incl.bus.client import Client
from incl.cli.models import model
from incl.proto.errors import NotFound
from incl.proto.messages import JobState

PY = sys.executable
pytestmark = pytest.mark.timeout(60)

TRAIN = """\
import os, pathlib, incl
out = pathlib.Path(os.environ["INCL_OUTPUT_DIR"])
(out / "model.pt").write_bytes(pathlib.Path("weights.bin").read_bytes())
(out / "ckpt").mkdir()
(out / "ckpt" / "a.bin").write_bytes(b"a" * 1000)
(out / "ckpt" / "empty").write_bytes(b"")
incl.log({"loss": 0.5, "acc": 0.1}, step=1)
incl.log({"loss": 0.25}, step=2)
incl.log({"acc": 0.9}, step=3)
"""


class Stack:
    def __init__(self, cluster: Cluster, job_id: str, running_id: str, outputs: dict[str, bytes]) -> None:
        self.cluster, self.job_id, self.running_id, self.outputs = cluster, job_id, running_id, outputs
        self.runner = CliRunner()

    def model(self, *args: str) -> Result:
        return self.runner.invoke(model, list(args), obj={"nats_url": self.cluster.nats.url})

    def ok(self, *args: str) -> Result:
        result = self.model(*args)
        assert result.exit_code == 0, (result.output, result.stderr)
        return result

    def refused(self, *args: str) -> str:
        """The one line a bad input gets."""
        result = self.model(*args)
        assert result.exit_code != 0, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        return lines[0]

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json").stdout)

    def client(self) -> Client:
        return self.cluster.client()


def tree_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("INCL_HOME", str(tmp / "home"))
        mp.setenv("INCL_USER", "ann")
        nats = NatsServer(tmp).start()
        cluster = Cluster(tmp, nats)
        cluster.env.update(INCL_HOME=str(tmp / "home"), INCL_USER="ann")
        try:
            cluster.start_controller()
            cluster.start_agent("a1")
            proj = tmp / "proj"
            proj.mkdir()
            (proj / "train.py").write_text(TRAIN)
            weights = os.urandom(200_000)
            (proj / "weights.bin").write_bytes(weights)

            async def jobs() -> tuple[str, str]:
                await cluster.wait_agents(1)
                job = await cluster.submit(f"{PY} train.py", workdir=str(proj), env={"LR": "0.1"}, name="train",
                                           user="bob")
                done = await cluster.wait_done(job.id)
                assert done.state is JobState.SUCCEEDED, (done.reason, done.current and done.current.tail)
                running = await cluster.submit(f"while [ ! -e {tmp}/release ]; do sleep 0.05; done")
                await cluster.wait_state(running.id, {JobState.RUNNING})
                return job.id, running.id

            job_id, running_id = asyncio.run(jobs())
            outputs = {"model.pt": weights, "ckpt/a.bin": b"a" * 1000, "ckpt/empty": b""}
            yield Stack(cluster, job_id, running_id, outputs)
        finally:
            (tmp / "release").touch()
            cluster.close()
            nats.kill()


def test_register_show_alias_and_download_byte_identical(stack: Stack, tmp_path: Path) -> None:
    """v1 is every output, v2 only model.pt; both name the job's own blobs (the store gains none); an alias moves,
    the versions do not; a download is byte for byte what the job wrote."""
    store = stack.cluster.tmp / "store"
    before = {p.name for p in (store / "blobs").rglob("*") if p.is_file()}
    out = stack.ok("register", "resnet", "--job", stack.job_id, "--alias", "production", "--note", "first try")
    assert "registered resnet v1" in out.stdout and "@production -> v1" in out.stdout
    v2 = stack.json("register", "resnet", "--job", stack.job_id, "--path", "model.pt")
    assert v2["version"] == 2 and v2["paths"] == ["model.pt"] and v2["tree"]["files"] == 1
    assert {p.name for p in (store / "blobs").rglob("*") if p.is_file()} == before  # no byte copied

    shown = stack.json("show", "resnet@production")
    v1 = shown["version"]
    lin = v1["lineage"]
    assert (v1["version"], v1["registered_by"], v1["note"]) == (1, "ann", "first try")
    assert (lin["job_id"], lin["job_name"], lin["job_state"], lin["attempt"], lin["user"]) == (
        stack.job_id, "train", "SUCCEEDED", 1, "bob")  # bob ran it, ann registered it
    assert lin["env"] == {"LR": "0.1"} and lin["metrics"] == {"loss": 0.25, "acc": 0.9}
    assert lin["code"]["digest"] and shown["versions"] == [1, 2] and shown["aliases"] == {"production": 1}
    assert sorted(f["path"] for f in shown["files"]) == sorted(stack.outputs)
    text = stack.ok("show", "resnet:v1").stdout
    assert stack.job_id in text and "loss=0.25" in text and "by ann" in text and "LR=0.1" in text

    stack.ok("download", "resnet@production", "--to", str(tmp_path / "v1"))
    assert tree_of(tmp_path / "v1") == stack.outputs
    stack.ok("download", "resnet:v2", "--to", str(tmp_path / "v2"))
    assert tree_of(tmp_path / "v2") == {"model.pt": stack.outputs["model.pt"]}

    assert stack.ok("alias", "resnet", "v2", "production").stdout.strip() == "resnet@production -> v2 (was v1)"
    assert stack.json("show", "resnet@production")["version"]["version"] == 2
    assert stack.json("show", "resnet:v1")["version"] == v1  # a version never changes
    assert stack.json("show", "resnet")["version"]["version"] == 2  # NAME alone: the latest
    listed = {m["name"]: m for m in stack.json("ls")}
    assert listed["resnet"]["versions"] == 2 and listed["resnet"]["aliases"] == {"production": 2}
    assert "resnet" in stack.ok("ls").stdout


def test_concurrent_registrations_of_one_name_get_distinct_numbers(stack: Stack) -> None:
    async def race() -> list[int]:
        async with stack.client() as c:
            versions = await asyncio.gather(*(c.register_model("race", stack.job_id, ["model.pt"]) for _ in range(6)))
            return [v.version for v in versions]

    assert sorted(asyncio.run(race())) == [1, 2, 3, 4, 5, 6]
    assert stack.json("show", "race")["versions"] == [1, 2, 3, 4, 5, 6]


def test_versions_of_a_model_or_of_a_job_come_in_one_request(stack: Stack) -> None:
    """models.versions, what the web UI's Models and Job pages read: a model's records in order, or every model's
    made from one job; none from a job nothing was registered from; NotFound for a model never registered."""
    async def read() -> tuple[list[Any], list[Any], list[Any]]:
        async with stack.client() as c:
            await c.register_model("lineage", stack.job_id, ["model.pt"])
            await c.register_model("lineage", stack.job_id, note="all of it")
            with pytest.raises(NotFound):
                await c.model_versions("nobody")
            return (await c.model_versions("lineage"), await c.model_versions(job_id=stack.job_id),
                    await c.model_versions(job_id=stack.running_id))

    of_model, of_job, of_running = asyncio.run(read())
    assert [(v.name, v.version, v.paths, v.note) for v in of_model] == [
        ("lineage", 1, ["model.pt"], None), ("lineage", 2, [], "all of it")]
    assert {("lineage", 1), ("lineage", 2)} <= {(v.name, v.version) for v in of_job}
    assert all(v.lineage.job_id == stack.job_id for v in of_job) and of_running == []


def test_bad_input_gets_one_line_and_registers_nothing(stack: Stack) -> None:
    before = stack.json("ls")
    assert "no job with id 'j-nope'" in stack.refused("register", "bad1", "--job", "j-nope")
    assert "has not finished" in stack.refused("register", "bad2", "--job", stack.running_id)
    assert "'nope.pt' is not among the outputs" in stack.refused("register", "bad3", "--job", stack.job_id,
                                                                  "--path", "model.pt", "--path", "nope.pt")
    assert "is not a valid model name" in stack.refused("register", "bad name", "--job", stack.job_id)
    assert "is not a valid alias" in stack.refused("register", "bad4", "--job", stack.job_id, "--alias", "a b")
    async def raw() -> str:  # the controller checks the name too, not only the CLI
        async with stack.client() as c:
            try:
                await c.register_model("../etc", stack.job_id)
            except Exception as exc:  # noqa: BLE001 - the error is what is checked
                return str(exc)
            return ""
    assert "is not a valid model name" in asyncio.run(raw())
    assert stack.json("ls") == before  # nothing registered by any of them

    stack.ok("register", "bert", "--job", stack.job_id)
    assert "has no version v7" in stack.refused("alias", "bert", "v7", "production")
    assert "no model named 'nobody'" in stack.refused("alias", "nobody", "v1", "production")
    assert "no model named 'nobody'" in stack.refused("show", "nobody")
    assert "has no version v9" in stack.refused("show", "bert:v9")
    assert "has no alias 'staging'" in stack.refused("download", "bert@staging")
    assert "write it v1" in stack.refused("alias", "bert", "seven", "production")
    assert "a version is written v1" in stack.refused("show", "bert:7")
    assert stack.json("show", "bert")["aliases"] == {}


def test_gc_keeps_a_registered_versions_files_after_the_jobs_outputs_are_collected(stack: Stack,
                                                                                      tmp_path: Path) -> None:
    """Runs last in the file: it collects every ended job's trees. It registers what it checks itself, so that it
    does not depend on the tests before it having run on the same stack."""
    stack.ok("register", "kept", "--job", stack.job_id, "--path", "ckpt/")
    stack.ok("register", "whole", "--job", stack.job_id)
    out = stack.cluster.cli("gc", "--grace", "0s", "--retention", "0s", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["deleted_bytes"] > 0
    job_refs = stack.cluster.tmp / "store" / "refs" / "jobs" / stack.job_id
    assert not any(p.is_file() for p in job_refs.rglob("*"))  # the job's own outputs ref is collected
    stack.ok("download", "kept", "--to", str(tmp_path / "kept"))
    assert tree_of(tmp_path / "kept") == {k: v for k, v in stack.outputs.items() if k.startswith("ckpt/")}
    stack.ok("download", "whole:v1", "--to", str(tmp_path / "v1"))
    assert tree_of(tmp_path / "v1") == stack.outputs
