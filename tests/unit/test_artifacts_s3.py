"""Trees through a real S3 API (moto's server): multipart, integrity, and retries through a real flaky hop."""

from __future__ import annotations

import asyncio
import os
import random
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import ClientSession, web
from motoserver import MotoServer

from incl.artifacts import BlobCache, HashCache, StoreConfig, TreeLimits, open_store, pull_tree, push_tree
from incl.artifacts.errors import FileChanged, IntegrityError, NotFound, StoreUnavailable
from incl.artifacts.tree import read_manifest

BUCKET = "incl-test"
SMALL_PARTS = StoreConfig(multipart_threshold=6 << 20, part_size=5 << 20, retry_initial=0.01, retry_max=0.05)
QUICK_RETRIES = StoreConfig(retries=4, retry_initial=0.01, retry_max=0.05)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    with MotoServer(tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture(autouse=True)
async def bucket(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    moto.reset()
    for key, value in moto.env().items():
        monkeypatch.setenv(key, value)
    async with open_store(f"s3://{BUCKET}") as store:
        client = await store.client()  # type: ignore[attr-defined]
        await client.create_bucket(Bucket=BUCKET)


def make_tree(root: Path) -> Path:
    rng = random.Random(3)
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "big.bin").write_bytes(rng.randbytes(13 << 20))  # three parts of 5 MiB
    (root / "pkg" / "model ü.py").write_text("import torch\n")
    (root / "pkg" / "sub" / "empty").write_bytes(b"")
    (root / "run.sh").write_text("#!/bin/sh\n")
    (root / "run.sh").chmod(0o755)
    (root / "link").symlink_to("pkg/model ü.py")
    return root


def listing(root: Path) -> dict[str, tuple[int, bytes | str]]:
    return {p.relative_to(root).as_posix(): (p.lstat().st_mode, os.readlink(p) if p.is_symlink() else
                                             p.read_bytes() if p.is_file() else b"") for p in root.rglob("*")}


async def test_round_trip_through_s3_with_a_multipart_file(tmp_path: Path) -> None:
    """A tree with a 13 MiB file (uploaded in parts), modes, a link and unicode comes back byte for byte."""
    src = make_tree(tmp_path / "work")
    async with open_store(f"s3://{BUCKET}/team/incl", config=SMALL_PARTS) as store:
        pushed = await push_tree(store, src)
        pulled = await pull_tree(store, pushed.digest, tmp_path / "out", blob_cache=BlobCache(tmp_path / "cache"))
        assert listing(tmp_path / "out") == listing(src)
        assert pulled.downloaded_bytes == pushed.uploaded_bytes == pushed.bytes == (13 << 20) + 23
        keys = [o.key for o in await store.list("")]
    assert len(keys) == 5 and all(k.startswith(("blobs/", "manifests/")) for k in keys)


async def test_resubmit_sends_nothing_and_an_edit_sends_one_blob(tmp_path: Path) -> None:
    """Unchanged: no blob and no hashing; one edited file: one blob up, plus the new manifest."""
    src = make_tree(tmp_path / "work")
    cache, limits = HashCache(tmp_path / "h.sqlite"), TreeLimits(racy_window=0)
    async with open_store(f"s3://{BUCKET}/incl", config=SMALL_PARTS) as store:
        first = await push_tree(store, src, hash_cache=cache, limits=limits)
        again = await push_tree(store, src, hash_cache=cache, limits=limits)
        assert (again.digest, again.uploaded_blobs, again.hashed_files) == (first.digest, 0, 0)
        (src / "run.sh").write_text("#!/bin/sh\necho v2\n")
        edited = await push_tree(store, src, hash_cache=cache, limits=limits)
        assert (edited.uploaded_blobs, edited.uploaded_bytes, edited.hashed_files) == (1, 18, 1)
        assert len(await store.list("manifests/")) == 2


async def test_a_file_changed_during_a_multipart_upload_is_refused(tmp_path: Path) -> None:
    """The whole file is hashed as its parts go up: an edit is caught and the upload is aborted."""
    src = make_tree(tmp_path / "work")

    def edit(done: int, total: int) -> None:
        if done == 0:
            with open(src / "big.bin", "r+b") as f:
                f.seek(9 << 20)
                f.write(b"edited")

    async with open_store(f"s3://{BUCKET}/incl", config=SMALL_PARTS) as store:
        with pytest.raises(FileChanged, match=r"big\.bin changed while it was uploaded"):
            await push_tree(store, src, progress=edit)
        client = await store.client()  # type: ignore[attr-defined]
        pending = await client.list_multipart_uploads(Bucket=BUCKET)
        assert pending.get("Uploads", []) == []
        assert await store.list("manifests/") == []


async def test_a_corrupt_object_is_refused_on_download(tmp_path: Path) -> None:
    """An object whose bytes are not its SHA-256 raises IntegrityError and never enters the cache."""
    src = make_tree(tmp_path / "work")
    async with open_store(f"s3://{BUCKET}/incl", config=SMALL_PARTS) as store:
        pushed = await push_tree(store, src)
        _, manifest = await read_manifest(store, pushed.digest)
        victim = next(e for e in manifest.files if e.path == "run.sh")
        await store.put_bytes(f"blobs/{victim.digest[:2]}/{victim.digest}", b"#!/bin/sh\nrm -rf /\n")
        with pytest.raises(IntegrityError, match=victim.digest):
            await pull_tree(store, pushed.digest, tmp_path / "out", blob_cache=BlobCache(tmp_path / "cache"))
        with pytest.raises(NotFound):
            await store.get_bytes("manifests/" + "0" * 64)


class FlakyHop:
    """A real HTTP proxy in front of moto that fails the first `failures` requests: 503 SlowDown, or a
    connection dropped without a reply."""

    SLOWDOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                b"<Message>Please reduce your request rate.</Message></Error>")
    SKIPPED_HEADERS = frozenset({"content-length", "transfer-encoding", "connection", "content-encoding"})

    def __init__(self, upstream: str, failures: int, how: str = "503") -> None:
        self.upstream, self.failures, self.how = upstream, failures, how
        self.requests = 0

    async def __aenter__(self) -> FlakyHop:
        self.session = ClientSession(auto_decompress=False)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()
        await self.session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        body = await request.read()
        if self.failures:
            self.failures -= 1
            if self.how == "drop":
                assert request.transport is not None
                request.transport.close()
            return web.Response(status=503, body=self.SLOWDOWN, content_type="application/xml")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in self.SKIPPED_HEADERS}
        async with self.session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                        data=body) as resp:
            data = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in self.SKIPPED_HEADERS}
            return web.Response(status=resp.status, body=data, headers=out)


@pytest.mark.parametrize("how", ["503", "drop"])
async def test_transient_failures_are_retried(tmp_path: Path, moto: MotoServer, how: str) -> None:
    """Throttling (503 SlowDown) and dropped connections are retried with backoff; the push succeeds."""
    src = make_tree(tmp_path / "work")
    (src / "big.bin").unlink()
    async with FlakyHop(moto.url, failures=3, how=how) as hop:
        config = StoreConfig(endpoint_url=hop.url, retries=5, retry_initial=0.01, retry_max=0.05)
        async with open_store(f"s3://{BUCKET}/incl", config=config) as store:
            pushed = await push_tree(store, src)
            pulled = await pull_tree(store, pushed.digest, tmp_path / "out", blob_cache=BlobCache(tmp_path / "c"))
    assert listing(tmp_path / "out") == listing(src) and pulled.files == 3
    assert hop.requests >= 3 + 5  # the failed ones, then 3 blobs + manifest up, manifest + 3 blobs down


async def test_a_store_that_keeps_failing_gives_a_clear_error(tmp_path: Path, moto: MotoServer) -> None:
    """When every attempt is throttled, the error says what was tried, how often, and the last answer."""
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "a.txt").write_text("a")
    async with FlakyHop(moto.url, failures=1000) as hop:
        config = StoreConfig(endpoint_url=hop.url, retries=4, retry_initial=0.01, retry_max=0.02)
        async with open_store(f"s3://{BUCKET}/incl", config=config) as store:
            with pytest.raises(StoreUnavailable) as err:
                await push_tree(store, tmp_path / "work")
    assert re.fullmatch(f"PUT blobs/[0-9a-f]{{2}}/[0-9a-f]{{64}} to s3://{BUCKET}/incl failed 4 times; "
                        "last error: HTTP 503 SlowDown", str(err.value))
    assert hop.requests == 4


async def test_concurrent_pulls_from_s3_share_one_cache(tmp_path: Path) -> None:
    """Several jobs pulling the same tree into one blob cache at once all get complete, correct trees."""
    src = make_tree(tmp_path / "work")
    async with open_store(f"s3://{BUCKET}/incl", config=SMALL_PARTS) as store:
        digest = (await push_tree(store, src)).digest
        await asyncio.gather(*(pull_tree(store, digest, tmp_path / f"job{n}", blob_cache=BlobCache(tmp_path / "c"))
                               for n in range(3)))
    for n in range(3):
        assert listing(tmp_path / f"job{n}") == listing(src)
    assert list((tmp_path / "c").rglob(".tmp-*")) == []


async def test_an_object_streams_in_chunks_whole_or_a_range() -> None:
    """What the web UI's downloads read: the whole object or a range of it (a packed file), chunk by chunk."""
    data = random.Random(5).randbytes(3 << 20)
    async with open_store(f"s3://{BUCKET}/incl", config=StoreConfig(chunk_size=1 << 20)) as store:
        await store.put_bytes("blobs/x", data)
        whole = [c async for c in store.stream("blobs/x")]
        part = b"".join([c async for c in store.stream("blobs/x", offset=1000, length=70_000)])
        with pytest.raises(NotFound):
            _ = [c async for c in store.stream("blobs/none")]
    assert b"".join(whole) == data and len(whole) >= 3 and part == data[1000:71_000]
