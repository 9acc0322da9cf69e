"""`incl gc` end to end: the real CLI and daemons, a file:// store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Cluster

from incl.artifacts.store import open_store
from incl.proto.shares import ShareTarget

pytestmark = pytest.mark.slow


def project(root: Path, text: str) -> Path:
    root.mkdir(parents=True)
    (root / "main.sh").write_text('cat note.txt; echo kept > "$INCL_OUTPUT_DIR/out.txt"; [ -z "$WAIT" ] || '
                                  'while [ ! -e "$WAIT" ]; do sleep 0.05; done\n')
    (root / "note.txt").write_text(text)
    (root / "weights.bin").write_bytes(os.urandom(200_000))
    return root


async def test_gc_collects_an_ended_jobs_trees_keeps_a_running_ones_and_jobs_still_run(cluster: Cluster,
                                                                                       tmp_path: Path) -> None:
    """With no retention and no grace, `incl gc` deletes a finished job's code and outputs and reports their
    bytes, keeps a running job's code, and a job submitted afterwards runs."""
    cluster.start_controller()
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    done = await cluster.submit("sh main.sh", workdir=str(project(tmp_path / "p1", "first\n")))
    assert (await cluster.wait_done(done.id)).state == "SUCCEEDED"
    release = tmp_path / "release"
    running = await cluster.submit("sh main.sh", workdir=str(project(tmp_path / "p2", "second\n")),
                                   env={"WAIT": str(release)})
    await cluster.wait_state(running.id, {"RUNNING"})

    store_dir = tmp_path / "store"
    before = {p: p.stat().st_size for p in store_dir.rglob("*") if p.is_file()}
    dry = cluster.cli("gc", "--dry-run", "--grace", "0s", "--retention", "0s", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["deleted_bytes"] > 200_000
    assert {p for p in store_dir.rglob("*") if p.is_file()} == before.keys()  # a dry run deletes nothing
    out = cluster.cli("gc", "--grace", "0s", "--retention", "0s", "--json", "--keys")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    gone = {p for p in before if not p.exists()}
    assert {str(p.relative_to(store_dir)) for p in gone} == set(report["keys"])
    assert report["deleted_bytes"] == sum(before[p] for p in gone)
    done = await cluster.job(done.id)
    assert done.code is not None and not (store_dir / "manifests" / done.code.digest).exists()
    assert not any(p.is_file() for p in (store_dir / "refs" / "jobs" / done.id).rglob("*"))  # its outputs' ref
    async with open_store(f"file://{store_dir}") as store:
        assert running.code is not None and await store.exists(f"manifests/{running.code.digest}")

    release.touch()
    assert (await cluster.wait_done(running.id)).state == "SUCCEEDED"
    after = await cluster.submit("sh main.sh", workdir=str(project(tmp_path / "p3", "third\n")))
    assert (await cluster.wait_done(after.id)).state == "SUCCEEDED"
    assert b"third" in b"".join(await cluster.log_lines(after.id))


async def test_gc_keeps_what_a_live_share_link_opens_and_collects_it_once_revoked(cluster: Cluster,
                                                                                  tmp_path: Path) -> None:
    """A link to an old job's outputs still opens after a collection with no retention; revoked, its files go."""
    cluster.start_controller()
    cluster.start_agent("a1")
    await cluster.wait_agents(1)
    job = await cluster.submit("sh main.sh", workdir=str(project(tmp_path / "p1", "shared\n")))
    assert (await cluster.wait_done(job.id)).state == "SUCCEEDED"
    async with cluster.client() as client:
        made = await client.create_share(ShareTarget(job_id=job.id, path="out.txt"))
        outputs = (await client.job(job.id)).attempts[-1].outputs
        assert outputs is not None
        manifest = tmp_path / "store" / "manifests" / outputs.digest
        out = cluster.cli("gc", "--grace", "0s", "--retention", "0s", "--json")
        assert out.returncode == 0, out.stderr
        assert manifest.exists()  # the link opens what it did
        assert (await client.resolve_share(made.token)).state == "active"
        assert job.code is not None and not (tmp_path / "store" / "manifests" / job.code.digest).exists()

        await client.revoke_share(made.share.id)
        out = cluster.cli("gc", "--grace", "0s", "--retention", "0s", "--json")
        assert out.returncode == 0, out.stderr
        assert not manifest.exists()
