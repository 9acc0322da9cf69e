"""Instance caches under a size: least recently used first, never what a running attempt pins (cachetrim.py),
through the agent's JobFiles against a real S3 API (moto)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from motoserver import MotoServer

from incl.agent.workspace import JobFiles, Workspace
from incl.artifacts import open_store, push_tree
from incl.artifacts.cachetrim import Entry, plan, scan
from incl.artifacts.config import StoreConfig
from incl.proto.messages import TreeRef
from incl.proto.spec import DataMount

BUCKET = "incl-cache"
KB = 1000


def test_plan_evicts_least_recently_used_first_and_skips_pinned() -> None:
    entries = [Entry("a", 10, 1.0), Entry("b", 10, 2.0), Entry("c", 10, 3.0), Entry("d", 10, 4.0)]
    assert plan(entries, set(), total=40, max_bytes=25) == entries[:2]
    assert plan(entries, {"a", "b"}, total=40, max_bytes=25) == entries[2:]
    assert plan(entries, {"a", "b", "c", "d"}, total=40, max_bytes=0) == []
    assert plan(entries, set(), total=40, max_bytes=40) == []


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with MotoServer(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
async def store_url(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> str:
    moto.reset()
    for key, value in moto.env().items():
        monkeypatch.setenv(key, value)
    async with open_store(f"s3://{BUCKET}") as store:
        await (await store.client()).create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
    return f"s3://{BUCKET}"


async def test_caches_stay_under_the_limit_and_never_evict_what_a_running_job_uses(store_url: str,
                                                                                     tmp_path: Path) -> None:
    """A running job's code blob and data view (300 KB) stay while five later jobs' code (100 KB each) passes
    through a 450 KB cache, which never ends a fetch over its limit; once the job is gone, its entries can go."""
    rng = random.Random(5)
    limit = 450 * KB
    work = tmp_path / "agent"
    cache = work / "cache"
    async with open_store(store_url) as store:
        trees = []
        for n in range(6):
            src = tmp_path / f"src{n}"
            src.mkdir()
            (src / "weights.bin").write_bytes(rng.randbytes(100 * KB))
            trees.append((await push_tree(store, src)).digest)
        await store.put_bytes("data/train.bin", rng.randbytes(200 * KB))

        running = Workspace(work, "running", 1).create()
        files = JobFiles(store, running, StoreConfig(), limit)
        await files.fetch_code(TreeRef(digest=trees[0]))
        view = await files.fetch_data(DataMount(source=f"{store_url}/data", target="data"))
        pinned_blob = next(p for p in (cache / "blobs").rglob("*") if p.is_file())

        for n in range(1, 6):
            ws = Workspace(work, f"done{n}", 1).create()
            await JobFiles(store, ws, StoreConfig(), limit).fetch_code(TreeRef(digest=trees[n]))
            assert (ws.code / "weights.bin").stat().st_size == 100 * KB
            ws.remove()
            assert scan(cache)[1] <= limit
            assert pinned_blob.exists() and (view / "train.bin").stat().st_size == 200 * KB
        held = {p.name for p in (cache / "blobs").rglob("*") if p.is_file()}
        assert len(held) == 2  # the running job's, and the most recently used one

        running.remove()
        ws = Workspace(work, "next", 1).create()
        await JobFiles(store, ws, StoreConfig(), 150 * KB).fetch_code(TreeRef(digest=trees[1]))
        assert scan(cache)[1] <= 150 * KB
        assert not view.exists() and not pinned_blob.exists()
        assert not any(p.is_file() for p in (cache / "data" / "objects").rglob("*"))  # no view links them
