"""Garbage collection of the artifact store: the pure plan, and real collections of file:// and S3 (moto) stores."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_for
from motoserver import MotoServer

from incl.artifacts import BlobCache, open_store, pull_tree, push_tree
from incl.artifacts import gc as gcplan
from incl.artifacts.config import GcConfig, TreeLimits
from incl.artifacts.gcroots import Roots, kept_roots
from incl.artifacts.gcrun import collect
from incl.artifacts.store import ArtifactStore, ObjectInfo
from incl.proto.messages import Attempt, Job, JobState, TreeRef
from incl.proto.shares import Share, SharedTree, ShareTarget
from incl.proto.spec import load_spec

DAY = 24 * 3600.0
GRACE = 60.0
BUCKET = "incl-gc"


def obj(key: str, mtime: float, size: int = 10) -> ObjectInfo:
    return ObjectInfo(key, size, "etag", mtime)


def test_plan_marks_then_deletes_only_after_the_grace_period() -> None:
    listing = [obj("blobs/aa/aa1", 0), obj("manifests/m1", 0), obj("refs/jobs/old/checkpoints", 0)]
    first = gcplan.plan(listing, set(), {}, now=1000, grace=GRACE)
    assert first.delete == [] and set(first.candidates) == {o.key for o in listing}
    early = gcplan.plan(listing, set(), first.candidates, now=1000 + GRACE - 1, grace=GRACE)
    assert early.delete == []
    late = gcplan.plan(listing, set(), first.candidates, now=1000 + GRACE, grace=GRACE)
    assert [o.key for o in late.delete] == ["refs/jobs/old/checkpoints", "manifests/m1", "blobs/aa/aa1"]
    assert late.candidates == {} and late.bytes == 30


def test_plan_never_deletes_what_is_live_young_or_written_again_since_marked() -> None:
    previous = {"blobs/aa/live": 0.0, "blobs/aa/again": 0.0, "blobs/aa/gone": 0.0}
    listing = [obj("blobs/aa/live", 0), obj("blobs/aa/again", 500), obj("blobs/aa/gone", 0),
               obj("blobs/aa/young", 990)]
    got = gcplan.plan(listing, {"blobs/aa/live"}, previous, now=1000, grace=GRACE)
    assert [o.key for o in got.delete] == ["blobs/aa/gone"]
    assert got.candidates == {"blobs/aa/again": 1000}  # a push uploaded it again: the clock starts over
    assert (got.live, got.young) == (1, 1)


def test_roots_keep_running_queued_and_recent_jobs_and_drop_old_ones() -> None:
    now = 100 * DAY
    jobs = [job("running", JobState.RUNNING, None, "c1"), job("queued", JobState.QUEUED, None, "c2"),
            job("recent", JobState.SUCCEEDED, now - 29 * DAY, "c3", outputs="o3"),
            job("old", JobState.FAILED, now - 31 * DAY, "c4", outputs="o4")]
    roots = kept_roots(jobs, [], now, 30 * DAY)
    assert roots.jobs == {"running", "queued", "recent"}
    assert roots.trees == {"c1", "c2", "c3", "o3"}


def job(job_id: str, state: JobState, ended: float | None, code: str, outputs: str | None = None) -> Job:
    attempt = Attempt(number=1, agent_id="a", state=state, assigned_at=0.0, ended_at=ended,
                      outputs=TreeRef(digest=outputs) if outputs else None)
    return Job(id=job_id, spec=load_spec({"run": "true"}), user="u", state=state, submitted_at=0.0,
               updated_at=ended or 0.0, attempts=[attempt], code=TreeRef(digest=code))


def write(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with MotoServer(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture(params=["file", "s3"])
async def store_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "file":
        return f"file://{tmp_path / 'store'}"
    moto: MotoServer = request.getfixturevalue("moto")
    moto.reset()
    for key, value in moto.env().items():
        monkeypatch.setenv(key, value)
    async with open_store(f"s3://{BUCKET}") as store:
        await (await store.client()).create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
    return f"s3://{BUCKET}/team"


async def everything(store: ArtifactStore) -> dict[str, int]:
    return {o.key: o.size for area in gcplan.AREAS for o in await store.list(area)}


async def test_old_jobs_trees_go_after_retention_and_grace_and_the_bytes_reported_are_the_bytes_gone(
        store_url: str, tmp_path: Path) -> None:
    """Running, queued and recent jobs keep their code, outputs and checkpoints (a blob shared with an old job
    included); an old job's go, with the collected bytes reported exactly; a model's ref keeps its tree."""
    shared = b"shared weights" * 100
    trees = {name: write(tmp_path / name, {"common.bin": shared, f"{name}.txt": name.encode() * 50})
             for name in ("running", "queued", "recent", "old", "old-out", "model")}
    config = GcConfig(grace=GRACE, retention=30 * DAY)
    async with open_store(store_url) as store:
        pushed = {n: await push_tree(store, p) for n, p in trees.items() if n != "old-out"}
        await push_tree(store, trees["old-out"], ref="jobs/old/outputs/1")
        await push_tree(store, trees["running"], ref="jobs/running/checkpoints")
        await push_tree(store, trees["model"], ref="models/resnet/3")
        start = time.time()
        records = [job("running", JobState.RUNNING, None, pushed["running"].digest),
                   job("queued", JobState.QUEUED, None, pushed["queued"].digest),
                   job("recent", JobState.SUCCEEDED, start - DAY, pushed["recent"].digest),
                   job("old", JobState.SUCCEEDED, start - 31 * DAY, pushed["old"].digest)]

        async def roots(now: float) -> Roots:
            return kept_roots(records, [], now, config.retention)

        before = await everything(store)
        dry = await collect(store, roots, config=config, now=start + 2 * GRACE, dry_run=True)
        assert dry.deleted == {} and dry.candidates == 5  # old's manifest and blob, old-out's ref, manifest, blob
        assert await everything(store) == before  # a dry run writes nothing, not even the candidates
        marked = await collect(store, roots, config=config, now=start + 2 * GRACE)
        assert marked.deleted == {} and marked.candidates == 5
        swept = await collect(store, roots, config=config, now=start + 3 * GRACE, keys=True)
        after = await everything(store)
        gone = before.keys() - after.keys()
        assert set(swept.keys) == gone and len(gone) == 5
        assert swept.deleted_bytes == sum(before[k] for k in gone)
        assert swept.deleted == {"refs": 1, "manifests": 2, "blobs": 2}
        for name in ("running", "queued", "recent", "model"):
            out = tmp_path / "pulled" / name
            await pull_tree(store, pushed[name].digest, out, blob_cache=BlobCache(tmp_path / "cache"))
            assert (out / "common.bin").read_bytes() == shared
            assert (out / f"{name}.txt").read_bytes() == name.encode() * 50
        again = await collect(store, roots, config=config, now=start + 4 * GRACE)
        assert (again.deleted, again.candidates) == ({}, 0)


async def test_collection_during_concurrent_pushes_loses_nothing_they_need(tmp_path: Path) -> None:
    """A collection loop (grace 0.5 s) runs while 30 pushes go up and are recorded as jobs only after two
    collections and more than the grace period (a slow submit), and collects an old job's tree meanwhile: every
    pushed tree pulls back whole, though most of its content was already in the store (shared with a live job)
    when its push began."""
    config = GcConfig(grace=0.5, retention=30 * DAY)
    base = write(tmp_path / "base", {f"lib/{i}.py": f"lib {i}\n".encode() * 100 for i in range(20)})
    records: list[Job] = []
    done = asyncio.Event()
    runs = 0
    async with open_store(f"file://{tmp_path / 'store'}") as store:
        records.append(job("base", JobState.RUNNING, None, (await push_tree(store, base)).digest))
        old = await push_tree(store, write(tmp_path / "old", {"old.bin": b"old" * 1000}))
        records.append(job("old", JobState.SUCCEEDED, time.time() - 31 * DAY, old.digest))

        async def roots(now: float) -> Roots:
            return kept_roots(list(records), [], now, config.retention)

        async def gc_loop() -> None:
            nonlocal runs
            while not done.is_set():
                await collect(store, roots, config=config)
                runs += 1

        async def submit(n: int) -> None:
            src = write(tmp_path / f"w{n}", {**{f"lib/{i}.py": f"lib {i}\n".encode() * 100 for i in range(20)},
                                             "main.py": f"job {n}\n".encode()})
            pushed = await push_tree(store, src)
            pushed_at, runs_then = time.time(), runs
            await wait_for(lambda: runs >= runs_then + 2 and time.time() > pushed_at + 1.2 * config.grace)
            records.append(job(f"j{n}", JobState.QUEUED, None, pushed.digest))

        loop = asyncio.create_task(gc_loop())
        for batch in range(5):
            await asyncio.gather(*(submit(batch * 6 + i) for i in range(6)))

        async def old_gone() -> bool:
            return not await store.exists(f"manifests/{old.digest}")

        await wait_for(old_gone, timeout=10)
        done.set()
        await loop
        assert runs >= 2
        for j in records[2:]:
            out = tmp_path / "pulled" / j.id
            await pull_tree(store, j.code.digest, out, blob_cache=BlobCache(tmp_path / f"cache-{j.id}"))  # type: ignore[union-attr]
            assert (out / "lib" / "7.py").read_bytes() == b"lib 7\n" * 100


def test_an_active_share_keeps_what_it_opens_past_its_jobs_retention() -> None:
    now = 100 * DAY
    old = job("old", JobState.SUCCEEDED, now - 90 * DAY, "c1", outputs="o1")

    def share(share_id: str, digest: str, expires_at: float, revoked: bool = False) -> Share:
        target = ShareTarget(job_id="old")
        return Share(id=share_id, kind="folder", target=target, trees=[SharedTree(folder="", digest=digest)],
                     created_by="u", created_at=now - DAY, expires_at=expires_at, revoked=revoked)

    shares = [share("sh-1", "o1", now + DAY), share("sh-2", "gone-expired", now - 1),
              share("sh-3", "gone-revoked", now + DAY, revoked=True)]
    roots = kept_roots([old], [], now, 30 * DAY, shares)
    assert roots.jobs == set() and roots.trees == {"o1"}  # the job is past retention; its shared outputs stay


@pytest.mark.parametrize("reuse", ["same tree", "shared blob"])
async def test_a_push_that_reuses_a_doomed_object_while_a_sweep_runs_keeps_its_tree_whole(
        store_url: str, tmp_path: Path, reuse: str) -> None:
    """The documented race, made deterministic: a tree nothing has referenced for longer than the grace period is
    marked; while the sweep that deletes it runs (after its listing, before its deletes), a push finds that tree's
    manifest or a blob of it already in the store and relies on it; the job naming the new tree is recorded after
    the sweep read its roots. The new tree must still pull back whole."""
    config = GcConfig(grace=GRACE, retention=30 * DAY)
    limits = TreeLimits(blind_put_max=0)  # ask the store about every blob: reuse what it holds, upload the rest
    old = write(tmp_path / "old", {"weights.bin": b"old weights" * 100})
    new = old if reuse == "same tree" else write(tmp_path / "new", {"weights.bin": b"old weights" * 100,
                                                                    "main.py": b"print('new')\n"})
    records: list[Job] = []
    pushed: list[str] = []
    async with open_store(store_url) as store:
        await push_tree(store, old, limits=limits)
        start = time.time()
        await asyncio.sleep(1.1)  # S3 dates objects to the second: the racing push's writes must be datable apart

        async def roots(now: float) -> Roots:
            return kept_roots(list(records), [], now, config.retention)

        async def roots_while_a_push_runs(now: float) -> Roots:
            pushed.append((await push_tree(store, new, limits=limits)).digest)  # its job is not recorded yet
            return await roots(now)

        marked = await collect(store, roots, config=config, now=start + 2 * GRACE)
        assert marked.candidates == 2  # the old tree's manifest and blob
        await collect(store, roots_while_a_push_runs, config=config, now=start + 3 * GRACE)
        records.append(job("j", JobState.QUEUED, None, pushed[0]))
        out = tmp_path / "pulled"
        await pull_tree(store, pushed[0], out, blob_cache=BlobCache(tmp_path / "cache"))
        assert (out / "weights.bin").read_bytes() == b"old weights" * 100
        await collect(store, roots, config=config, now=start + 4 * GRACE)  # the next run keeps it: a job names it
        await pull_tree(store, pushed[0], tmp_path / "again", blob_cache=BlobCache(tmp_path / "cache2"))


async def test_the_sweep_keeps_an_object_written_again_after_its_listing(store_url: str) -> None:
    """delete_unchanged: an object as listed goes; one written again since the listing (a push that uploaded a
    candidate anew) stays, and one gone already is no error."""
    async with open_store(store_url) as store:
        await store.put_bytes("blobs/aa/same", b"x")
        await store.put_bytes("blobs/aa/again", b"y")
        listed = {o.key: o for o in await store.list("blobs/")}
        await asyncio.sleep(1.1)  # S3 dates objects to the second
        await store.put_bytes("blobs/aa/again", b"y")  # the same bytes: only its date says it was written again
        assert await store.delete_unchanged(listed["blobs/aa/same"])
        assert not await store.delete_unchanged(listed["blobs/aa/again"])
        assert not await store.delete_unchanged(listed["blobs/aa/same"])
        assert [o.key for o in await store.list("blobs/")] == ["blobs/aa/again"]
        assert await store.get_bytes("blobs/aa/again") == b"y"


async def test_a_push_uploads_a_marked_blob_again_when_a_sweep_deleted_it_before_the_manifest_went_up(
        store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """S3 has no conditional delete: a sweep's DELETE can land just after a push uploaded a marked blob again. The
    push looks for what it uploaded of the marked objects once its manifest is written, and uploads it again."""
    config = GcConfig(grace=GRACE, retention=30 * DAY)
    limits = TreeLimits(blind_put_max=0)
    data = b"old weights" * 100
    old = write(tmp_path / "old", {"weights.bin": data})
    new = write(tmp_path / "new", {"weights.bin": data, "main.py": b"print('new')\n"})
    async with open_store(store_url) as store:
        await push_tree(store, old, limits=limits)

        async def no_roots(now: float) -> Roots:
            return Roots(set(), set())

        await collect(store, no_roots, config=config, now=time.time() + 2 * GRACE)
        blob = next(o.key for o in await store.list("blobs/"))
        put_bytes = store.put_bytes

        async def sweep_lands_first(key: str, data: bytes) -> None:
            if key.startswith("manifests/"):
                await store.delete(blob)
            await put_bytes(key, data)

        monkeypatch.setattr(store, "put_bytes", sweep_lands_first)
        pushed = await push_tree(store, new, limits=limits)
        monkeypatch.undo()
        out = tmp_path / "pulled"
        await pull_tree(store, pushed.digest, out, blob_cache=BlobCache(tmp_path / "cache"))
        assert (out / "weights.bin").read_bytes() == data
