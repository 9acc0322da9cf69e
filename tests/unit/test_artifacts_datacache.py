"""Data mounts: an s3:// prefix (moto's server) cached once per instance, refetched only where it changed."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
from motoserver import MotoServer
from structlog.testing import capture_logs

from incl.artifacts import open_store
from incl.artifacts.datacache import fetch_prefix
from incl.artifacts.errors import NotFound

BUCKET = "incl-data"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with MotoServer(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


async def put(objects: dict[str, bytes]) -> None:
    async with open_store(f"s3://{BUCKET}") as store:
        for key, data in objects.items():
            await store.put_bytes(key, data)


@pytest.fixture(autouse=True)
async def bucket(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    moto.reset()
    for key, value in moto.env().items():
        monkeypatch.setenv(key, value)
    async with open_store(f"s3://{BUCKET}") as store:
        await (await store.client()).create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
    await put({"imagenet/train/a.bin": b"a" * 1000, "imagenet/train/b.bin": b"b" * 2000,
               "imagenet/labels.csv": b"x,y\n", "imagenet-v2/other.bin": b"not under the prefix"})


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == name]


async def test_prefix_is_fetched_once_and_reused(tmp_path: Path) -> None:
    """The first job downloads the prefix; a later job gets the same folder with nothing downloaded."""
    with capture_logs() as logs:
        first = await fetch_prefix(f"s3://{BUCKET}/imagenet", tmp_path / "cache")
        second = await fetch_prefix(f"s3://{BUCKET}/imagenet/", tmp_path / "cache")
    assert files(first) == {"train/a.bin": b"a" * 1000, "train/b.bin": b"b" * 2000, "labels.csv": b"x,y\n"}
    assert second == first
    assert [e["downloaded"] for e in events(logs, "data_fetched")] == [3]
    assert len(events(logs, "data_cached")) == 1


async def test_a_changed_object_is_fetched_again_and_the_rest_reused(tmp_path: Path) -> None:
    """After one object changes, the next job sees its new bytes; unchanged objects are not downloaded."""
    old = await fetch_prefix(f"s3://{BUCKET}/imagenet", tmp_path / "cache")
    await put({"imagenet/train/a.bin": b"A" * 1500})
    with capture_logs() as logs:
        new = await fetch_prefix(f"s3://{BUCKET}/imagenet", tmp_path / "cache")
    assert files(new)["train/a.bin"] == b"A" * 1500 and files(old)["train/a.bin"] == b"a" * 1000
    [fetched] = events(logs, "data_fetched")
    assert (fetched["downloaded"], fetched["downloaded_bytes"], fetched["reused"]) == (1, 1500, 2)
    assert os.path.samefile(new / "train" / "b.bin", old / "train" / "b.bin")


async def test_two_jobs_filling_the_cache_at_once(tmp_path: Path) -> None:
    """Concurrent fetches of one source take turns: each object is downloaded once, both see all of it."""
    with capture_logs() as logs:
        a, b = await asyncio.gather(*(fetch_prefix(f"s3://{BUCKET}/imagenet", tmp_path / "cache") for _ in "ab"))
    assert a == b and len(files(a)) == 3
    assert [e["downloaded"] for e in events(logs, "data_fetched")] == [3]
    assert len(events(logs, "data_cached")) == 1
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "cache").rglob("*"))


async def test_cached_files_are_read_only(tmp_path: Path) -> None:
    """What a job mounts cannot be written through by accident (the cache is shared by every job)."""
    view = await fetch_prefix(f"s3://{BUCKET}/imagenet", tmp_path / "cache")
    assert all(p.stat().st_mode & 0o222 == 0 for p in view.rglob("*.bin"))


async def test_a_prefix_with_nothing_under_it_is_a_clear_error(tmp_path: Path) -> None:
    """A mistyped data source fails the job's preparation instead of mounting an empty folder."""
    with pytest.raises(NotFound, match=f"s3://{BUCKET}/imagenet-v3/: no objects there"):
        await fetch_prefix(f"s3://{BUCKET}/imagenet-v3", tmp_path / "cache")
