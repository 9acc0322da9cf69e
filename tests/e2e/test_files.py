"""Code, outputs, checkpoints and data through the artifact store, end to end with the real CLI and daemons."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import botocore.session
import pytest
from conftest import Cluster, wait_for
from motoserver import MotoServer

from incl.artifacts.refs import blob_key
from incl.artifacts.store import open_store
from incl.artifacts.tree import read_manifest, resolve_ref

pytestmark = pytest.mark.slow

OUTPUTS_SCRIPT = """\
set -e
cp data.bin "$INCL_OUTPUT_DIR/"
mkdir -p "$INCL_OUTPUT_DIR/sub dir"
printf 'h\\303\\251llo w\\303\\266rld' > "$INCL_OUTPUT_DIR/sub dir/ünï côdé.txt"
: > "$INCL_OUTPUT_DIR/empty"
echo "ran $(cat VERSION)"
"""


def make_project(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "main.sh").write_text(OUTPUTS_SCRIPT)
    (root / "data.bin").write_bytes(os.urandom(300_000))
    (root / "VERSION").write_text("1\n")
    (root / ".gitignore").write_text("*.log\nbuild/\n")
    (root / "debug.log").write_text("not shipped\n")
    (root / "build").mkdir(exist_ok=True)
    (root / "build" / "big.o").write_bytes(b"\0" * 1000)
    (root / "incl.yaml").write_text("name: files\nworkdir: .\nrun: sh main.sh\n")
    return root


def tree_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def submit(cluster: Cluster, project: Path, *extra: str) -> tuple[str, str]:
    out = cluster.cli("submit", "-f", str(project / "incl.yaml"), *extra)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[0], out.stderr


async def test_job_runs_uploaded_code_and_download_returns_its_outputs_byte_identical(
        cluster: Cluster, tmp_path: Path) -> None:
    """The job runs the snapshot (ignored files left out); `incl outputs` lists what it wrote; `incl download`
    returns it byte-identical, unicode and spaces in names and 0-byte files included."""
    cluster.start_controller()
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    project = make_project(tmp_path / "proj")
    job_id, _ = submit(cluster, project, "--env", "X=1", "--", "sh", "-c", "ls -a; sh main.sh")
    job = await cluster.wait_done(job_id)
    assert job.state == "SUCCEEDED", (job.reason, job.current and job.current.tail)
    listing = [line.decode() for line in await cluster.log_lines(job_id)]
    assert "ran 1" in listing and "debug.log" not in listing and "build" not in listing and ".gitignore" in listing

    shown = json.loads(cluster.cli("outputs", job_id, "--json").stdout)
    assert sorted(f["path"] for f in shown) == ["data.bin", "empty", "sub dir/ünï côdé.txt"]
    dest = tmp_path / "got"
    out = cluster.cli("download", job_id, "--to", str(dest))
    assert out.returncode == 0, out.stderr
    assert tree_of(dest) == {"data.bin": (project / "data.bin").read_bytes(), "empty": b"",
                             "sub dir/ünï côdé.txt": "héllo wörld".encode()}
    again = cluster.cli("download", job_id, "--to", str(dest))
    assert again.returncode != 0 and "not empty" in again.stderr


async def test_resubmit_uploads_only_what_changed_and_a_second_job_downloads_nothing(
        cluster: Cluster, tmp_path: Path) -> None:
    """An unchanged tree uploads nothing; one changed file uploads one blob; a second job on the same agent
    builds its code from the instance's blob cache without downloading anything."""
    cluster.start_controller()
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    project = make_project(tmp_path / "proj")
    first, said = submit(cluster, project)
    assert re.search(r"uploaded \d+ new blobs", said), said
    second, said = submit(cluster, project)
    assert "nothing to upload" in said, said
    (project / "VERSION").write_text("2\n")
    third, said = submit(cluster, project)
    assert "uploaded 1 new blob (" in said, said
    for job_id in (first, second, third):
        assert (await cluster.wait_done(job_id)).state == "SUCCEEDED"
    async with cluster.client() as c:
        notes = {j: [line.data.decode() for b in [b async for b in c.log_batches(j, follow=False)]
                     for line in b.lines if line.stream == 3] for j in (first, second, third)}
    assert any("bytes downloaded" in n and " 0 bytes downloaded" not in n for n in notes[first]), notes[first]
    assert any(" 0 bytes downloaded" in n for n in notes[second]), notes[second]
    assert "ran 2" in [line.decode() for line in await cluster.log_lines(third)]


CHECKPOINT_SCRIPT = """\
set -e
if [ "$INCL_ATTEMPT" = 1 ]; then
  head -c 250000 /dev/urandom > "$INCL_CHECKPOINT_DIR/model.ckpt"
  mkdir -p "$INCL_CHECKPOINT_DIR/opt"; echo 41 > "$INCL_CHECKPOINT_DIR/opt/step"
  echo "sum $(sha256sum "$INCL_CHECKPOINT_DIR/model.ckpt" | cut -c1-64)"
  exit 3
fi
echo "sum $(sha256sum "$INCL_CHECKPOINT_DIR/model.ckpt" | cut -c1-64)"
echo "step $(cat "$INCL_CHECKPOINT_DIR/opt/step") resumed=$INCL_RESUMED"
"""


async def test_checkpoint_is_restored_byte_identical_for_the_next_attempt(cluster: Cluster, tmp_path: Path) -> None:
    """Attempt 1 writes a checkpoint and fails; its folder is deleted on the agent; attempt 2 (retry on failure)
    starts with the checkpoint restored from the store, byte-identical, and INCL_RESUMED=1."""
    cluster.start_controller()
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    job = await cluster.submit(CHECKPOINT_SCRIPT, retry={"max_attempts": 2, "on_failure": True},
                               checkpoint={"sync_every": "1h"})
    done = await cluster.wait_done(job.id)
    assert done.state == "SUCCEEDED" and len(done.attempts) == 2, done.reason
    first = [line.decode() for line in await cluster.log_lines(job.id, attempt=1)]
    second = [line.decode() for line in await cluster.log_lines(job.id, attempt=2)]
    assert first[0].startswith("sum ") and second == [first[0], "step 41 resumed=1"]
    assert not (tmp_path / "agents" / "a1" / "jobs" / job.id).exists()


PERIODIC_SCRIPT = """\
step=0
[ -f "$INCL_CHECKPOINT_DIR/step" ] && step=$(cat "$INCL_CHECKPOINT_DIR/step")
echo "start at $step (attempt $INCL_ATTEMPT)"
while [ "$step" -lt 40 ]; do
  step=$((step + 1)); echo "$step" > "$INCL_CHECKPOINT_DIR/step.tmp"
  mv "$INCL_CHECKPOINT_DIR/step.tmp" "$INCL_CHECKPOINT_DIR/step"
  sleep 0.1
done
echo "done at $step"
"""


async def test_periodic_checkpoint_survives_the_agent_being_killed(cluster: Cluster) -> None:
    """The checkpoint dir is synced every `sync_every`; the agent is killed -9 mid-run; the requeued attempt on
    another agent resumes from the last synced step, not from zero."""
    cluster.start_controller()
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    job = await cluster.submit(PERIODIC_SCRIPT, checkpoint={"sync_every": 0.3}, retry={"max_attempts": 2})

    async def synced_past_five() -> bool:
        lines = await cluster.log_lines(job.id)
        return bool(lines) and (await cluster.job(job.id)).state == "RUNNING" and await _ckpt_step(cluster, job.id) >= 5

    await wait_for(synced_past_five, 30, "a synced checkpoint past step 5")
    cluster.agents["a1"].kill()
    cluster.start_agent("a2")
    done = await cluster.wait_done(job.id, timeout=60)
    assert done.state == "SUCCEEDED" and len(done.attempts) == 2, done.reason
    second = [line.decode() for line in await cluster.log_lines(job.id, attempt=2)]
    resumed_at = int(second[0].split()[2])
    assert resumed_at >= 5 and second[-1] == "done at 40", second


async def _ckpt_step(cluster: Cluster, job_id: str) -> int:
    """The step in the checkpoint the store holds now (-1: none yet)."""
    async with open_store(f"file://{cluster.tmp / 'store'}") as store:
        if await resolve_ref(store, f"jobs/{job_id}/checkpoints") is None:
            return -1
        _, manifest = await read_manifest(store, f"jobs/{job_id}/checkpoints")
        entry = next((e for e in manifest.files if e.path == "step"), None)
        return -1 if entry is None else int(await store.get_bytes(blob_key(entry.digest)))


# --- S3 ---------------------------------------------------------------------------------------------------


@pytest.fixture
def moto(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    server = MotoServer(tmp_path / "moto.log").start()
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    yield server
    server.stop()


def s3_client(moto: MotoServer):  # type: ignore[no-untyped-def]
    return botocore.session.get_session().create_client("s3", endpoint_url=moto.url, region_name="us-east-1")


async def test_s3_store_and_s3_data_end_to_end(cluster: Cluster, tmp_path: Path, moto: MotoServer) -> None:
    """With an s3:// store: code goes up, the job reads an s3:// data prefix from the instance cache, outputs come
    back byte-identical; a changed data object is fetched again, unchanged ones are reused."""
    s3 = s3_client(moto)
    s3.create_bucket(Bucket="incl-artifacts")
    s3.create_bucket(Bucket="datasets")
    s3.put_object(Bucket="datasets", Key="mnist/train/a.txt", Body=b"alpha\n")
    s3.put_object(Bucket="datasets", Key="mnist/labels.txt", Body=b"one\n")
    cluster.env.update(moto.env())
    cluster.start_controller(store_url="s3://incl-artifacts/team-a")
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    project = make_project(tmp_path / "proj")
    (project / "incl.yaml").write_text(
        "workdir: .\nrun: sh main.sh && cat data/train/a.txt data/labels.txt && ls -R data\n"
        "data:\n  - source: s3://datasets/mnist\n    target: data\n")
    job_id, _ = submit(cluster, project)
    job = await cluster.wait_done(job_id)
    assert job.state == "SUCCEEDED", (job.reason, job.current and job.current.tail)
    assert [line.decode() for line in await cluster.log_lines(job_id)][:3] == ["ran 1", "alpha", "one"]
    dest = tmp_path / "got"
    assert cluster.cli("download", job_id, "--to", str(dest)).returncode == 0
    assert (dest / "data.bin").read_bytes() == (project / "data.bin").read_bytes()
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="incl-artifacts")["Contents"]]
    assert all(k.startswith("team-a/") for k in keys) and any("/blobs/" in k for k in keys)

    s3.put_object(Bucket="datasets", Key="mnist/train/a.txt", Body=b"beta\n")
    job_id, _ = submit(cluster, project)
    assert (await cluster.wait_done(job_id)).state == "SUCCEEDED"
    assert [line.decode() for line in await cluster.log_lines(job_id)][1:3] == ["beta", "one"]


async def test_bad_workdirs_are_refused_at_submit_with_the_path(cluster: Cluster, tmp_path: Path) -> None:
    """A symlink loop and a symlink out of the workdir are refused before anything is queued, naming the path."""
    cluster.start_controller()
    await cluster.wait_controller()
    loop = make_project(tmp_path / "loop")
    os.symlink("b", loop / "a")
    os.symlink("a", loop / "b")
    out = cluster.cli("submit", "-f", str(loop / "incl.yaml"))
    assert out.returncode != 0 and "a" in out.stderr and "Traceback" not in out.stderr, out.stderr
    escape = make_project(tmp_path / "escape")
    os.symlink("/etc/passwd", escape / "passwd")
    out = cluster.cli("submit", "-f", str(escape / "incl.yaml"))
    assert out.returncode != 0 and "passwd" in out.stderr and "Traceback" not in out.stderr, out.stderr
    async with cluster.client() as c:
        assert await c.jobs() == []



async def test_a_job_that_leaves_nothing_costs_no_store_writes(cluster: Cluster) -> None:
    """No checkpoint and no outputs: nothing is written to the store for the job, and `incl outputs` says so."""
    cluster.start_controller()
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    job = await cluster.submit("echo done")
    assert (await cluster.wait_done(job.id)).state == "SUCCEEDED"
    out = cluster.cli("outputs", job.id)
    assert out.returncode == 0 and "left no files in $INCL_OUTPUT_DIR" in out.stdout, out  # a normal answer
    as_json = cluster.cli("outputs", job.id, "--json")
    assert as_json.returncode == 0 and as_json.stdout.strip() == "[]"
    assert not (cluster.tmp / "store" / "refs" / "jobs" / job.id).exists()
