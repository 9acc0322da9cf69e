"""Outputs and share links through the web server, against a real stack (nats-server, controller, agent and
`python -m incl.web` as processes): files and folders downloaded byte-identical and streamed, share links that
open with no account, fail once revoked or expired, refuse a tampered token and serve nothing but their artifact."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import tarfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from webstack import WebStack, web_stack

from incl.artifacts import BlobCache, open_store, pull_tree
from incl.proto.shares import ShareTarget

PY = "python3"
pytestmark = pytest.mark.timeout(90)

MiB = 2**20
WRITE = """\
import os, pathlib
out = pathlib.Path(os.environ["INCL_OUTPUT_DIR"])
(out / "ckpt" / "best").mkdir(parents=True)
for i in range(3):
    (out / "ckpt" / f"shard-{i}.bin").write_bytes(os.urandom(8 * 2**20))
(out / "ckpt" / "best" / "model.pt").write_bytes(os.urandom(300_000))
(out / "ckpt" / "notes ü.txt").write_text("hello ü\\n")
(out / "secret.txt").write_text("not shared\\n")
(out / "metrics.json").write_text('{"loss": 0.1}\\n')
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebStack]:
    with web_stack(tmp_path_factory.mktemp("web")) as s:
        yield s


@pytest.fixture(scope="module")
def job(stack: WebStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A finished job with outputs, and its files as the store holds them (pulled as `incl download` does)."""
    return asyncio.run(finished_job(stack, tmp_path_factory))


async def finished_job(stack: WebStack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    script = tmp_path_factory.mktemp("work") / "write.py"
    script.write_text(WRITE)
    done = await stack.cluster.submit(f"{PY} {script}")
    done = await stack.cluster.wait_done(done.id, 60)
    assert done.state == "SUCCEEDED", stack.dump()
    dest = tmp_path_factory.mktemp("pulled")
    async with stack.cluster.client() as client:
        url = await client.store_url()
    tree = next(a.outputs for a in reversed(done.attempts) if a.outputs)
    async with open_store(url) as store:
        await pull_tree(store, tree.digest, dest, blob_cache=BlobCache(dest.parent / "blobs"))
    files = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    return {"id": done.id, "files": files}


@pytest.fixture
async def http(stack: WebStack) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(stack.url) as session:
        yield session


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


async def body(http: aiohttp.ClientSession, path: str, status: int = 200) -> tuple[bytes, aiohttp.ClientResponse]:
    async with http.get(path) as resp:
        data = await resp.read()
        assert resp.status == status, (path, resp.status, data[:300])
        return data, resp


async def test_outputs_are_listed_and_each_file_downloads_byte_identical(job: dict[str, Any],
                                                                         http: aiohttp.ClientSession) -> None:
    listed, _ = await body(http, f"/api/jobs/{job['id']}/outputs")
    tree = json.loads(listed)
    files = {f["path"]: f["size"] for f in tree["files"] if f["kind"] == "file"}
    assert files == {p: len(d) for p, d in job["files"].items()}
    assert {"path": "ckpt/best", "size": 0, "kind": "dir"} in tree["files"] and tree["attempt"] == 1
    for path, data in job["files"].items():
        got, resp = await body(http, f"/api/jobs/{job['id']}/outputs/{path}")
        assert got == data and resp.content_length == len(data)
        name = path.rsplit("/", 1)[-1]
        assert resp.headers["Content-Disposition"].startswith("attachment; filename=")
        assert "UTF-8''" + quote(name, safe="") in resp.headers["Content-Disposition"]
    async with http.head(f"/api/jobs/{job['id']}/outputs/ckpt") as resp:
        assert resp.status == 200 and resp.content_length > 24 * MiB and not await resp.read()
    for bad in ["nothere.txt", "ckpt/shard", "..%2Fsecret.txt"]:
        assert (await body(http, f"/api/jobs/{job['id']}/outputs/{bad}", 404))[0]
    assert (await body(http, "/api/jobs/j-nothere/outputs", 404))[0]


async def test_a_cut_download_resumes_with_a_range_of_the_same_bytes(job: dict[str, Any],
                                                                  http: aiohttp.ClientSession) -> None:
    """A file answers Range requests (a browser or `curl -C -` resuming a cut download), the ETag is its digest, and
    a resume against other bytes (If-Range) or past the end gets the whole file or a 416, never wrong bytes."""
    for path in ["ckpt/shard-1.bin", "ckpt/best/model.pt", "metrics.json"]:  # a large blob, a small one, a tiny one
        data = job["files"][path]
        url = f"/api/jobs/{job['id']}/outputs/{path}"
        async with http.get(url) as resp:
            assert resp.headers["Accept-Ranges"] == "bytes"
            etag = resp.headers["ETag"]
            assert etag == f'"{hashlib.sha256(data).hexdigest()}"' and await resp.read() == data
        size = len(data)
        for asked, part in [("bytes=3-9", data[3:10]), (f"bytes={size // 2}-", data[size // 2:]),
                            ("bytes=-5", data[-5:]), (f"bytes=0-{size * 2}", data)]:
            async with http.get(url, headers={"Range": asked, "If-Range": etag}) as resp:
                got = await resp.read()
                assert resp.status == 206 and got == part, (path, asked, resp.status)
                first = size - len(part) if asked.startswith("bytes=-") else int(asked[6:].split("-")[0])
                assert resp.headers["Content-Range"] == f"bytes {first}-{first + len(part) - 1}/{size}"
        async with http.get(url, headers={"Range": "bytes=3-9", "If-Range": '"other"'}) as resp:
            assert resp.status == 200 and await resp.read() == data  # changed since: the whole file again
        async with http.get(url, headers={"Range": "bytes=0-1,5-6"}) as resp:
            assert resp.status == 200 and await resp.read() == data  # several ranges: served whole
        async with http.get(url, headers={"Range": f"bytes={size}-"}) as resp:
            assert resp.status == 416 and resp.headers["Content-Range"] == f"bytes */{size}"


async def test_a_folder_is_a_streamed_tar_of_every_file_and_the_server_never_holds_it(
        stack: WebStack, job: dict[str, Any], http: aiohttp.ClientSession) -> None:
    assert stack.web.proc is not None
    before = peak_rss(stack.web.proc.pid)
    chunks, size = 0, 0
    data = io.BytesIO()
    async with http.get(f"/api/jobs/{job['id']}/outputs/ckpt") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "application/x-tar"
        assert resp.headers["Content-Disposition"].startswith('attachment; filename="ckpt.tar"')
        async for chunk in resp.content.iter_chunked(256 * 1024):
            chunks += 1
            size += len(chunk)
            data.write(chunk)
            if chunks % 8 == 0:
                await asyncio.sleep(0.01)  # a slow reader: the server must wait, not buffer
        assert size == resp.content_length
    grew = peak_rss(stack.web.proc.pid) - before
    with tarfile.open(fileobj=io.BytesIO(data.getvalue())) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    want = {p: d for p, d in job["files"].items() if p.startswith("ckpt/")}
    assert got == want and sum(map(len, want.values())) > 24 * MiB
    assert grew < 10 * MiB, f"the server's peak memory grew by {grew / MiB:.1f} MiB for a 24 MiB folder"
    whole, _ = await body(http, f"/api/jobs/{job['id']}/outputs.tar")
    with tarfile.open(fileobj=io.BytesIO(whole)) as tar:
        names = {m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest()  # type: ignore[union-attr]
                 for m in tar.getmembers() if m.isfile()}
    assert names == {f"{job['id']}/{p}": hashlib.sha256(d).hexdigest() for p, d in job["files"].items()}


async def test_a_share_link_opens_without_an_account_and_serves_only_its_file(
        stack: WebStack, job: dict[str, Any], http: aiohttp.ClientSession) -> None:
    async with http.post("/api/shares", json={"job": job["id"], "path": "ckpt/best/model.pt"},
                         headers={"X-INCL": "1"}) as resp:
        made = await resp.json()
        assert resp.status == 200, made
    share, url = made["share"], made["url"]
    assert share["kind"] == "output" and url.startswith(stack.url + "/s/sh-")
    assert share["expires_at"] - share["created_at"] == pytest.approx(7 * 86400)
    token = url.rsplit("/", 1)[1]
    async with aiohttp.ClientSession() as stranger:  # no header, no cookie, nothing but the link
        async with stranger.get(url) as resp:
            page = await resp.text()
            assert resp.status == 200 and "model.pt" in page and 'href="/s/' in page
        async with stranger.get(url + "/download") as resp:
            assert await resp.read() == job["files"]["ckpt/best/model.pt"]
        async with stranger.get(url + "/download", headers={"Range": "bytes=1000-"}) as resp:  # resumed too
            assert resp.status == 206 and await resp.read() == job["files"]["ckpt/best/model.pt"][1000:]
        for other in ["secret.txt", "../secret.txt", "..%2F..%2Fsecret.txt", "x"]:
            async with stranger.get(f"{url}/files/{other}") as resp:
                assert resp.status == 404 and b"not shared" not in await resp.read()
        share_id, signature = token.split(".")
        flipped = signature[:-1] + ("A" if signature[-1] != "A" else "B")
        async with stack.cluster.client() as client:
            other_id = (await client.create_share(ShareTarget(job_id=job["id"], path="secret.txt"))).share.id
        for bad in [f"{share_id}.{flipped}", f"{other_id}.{signature}", share_id, f"{share_id}.", "nothing"]:
            async with stranger.get(f"{stack.url}/s/{bad}/download") as resp:
                assert resp.status == 404 and b"not shared" not in await resp.read(), bad


async def test_a_folder_share_fails_after_revocation_and_a_short_one_after_expiry(
        stack: WebStack, job: dict[str, Any], http: aiohttp.ClientSession) -> None:
    async with stack.cluster.client() as client:
        folder = await client.create_share(ShareTarget(job_id=job["id"], path="ckpt/best"))
        short = await client.create_share(ShareTarget(job_id=job["id"], path="metrics.json"), expires_in=2)
    assert folder.share.kind == "folder" and folder.share.files == 1
    async with aiohttp.ClientSession(stack.url) as stranger:
        data, _ = await body(stranger, f"/s/{folder.token}/download")
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            assert {m.name for m in tar.getmembers()} == {"best", "best/model.pt"}
        assert (await body(stranger, f"/s/{folder.token}/files/model.pt"))[0] == job["files"]["ckpt/best/model.pt"]
        assert (await body(stranger, f"/s/{short.token}/download"))[0] == job["files"]["metrics.json"]
        async with http.post(f"/api/shares/{folder.share.id}/revoke") as resp:
            assert resp.status == 403  # no X-INCL: a cross-site form could not revoke (or make) a share
        async with http.post(f"/api/shares/{folder.share.id}/revoke", headers={"X-INCL": "1"}) as resp:
            assert resp.status == 200 and (await resp.json())["share"]["revoked"]
        for path in ["", "/download", "/files/model.pt"]:
            page, _ = await body(stranger, f"/s/{folder.token}{path}", 410)
            assert b"revoked" in page and b"PK" not in page
        await asyncio.sleep(max(0.0, short.share.expires_at - time.time()) + 0.2)
        page, _ = await body(stranger, f"/s/{short.token}/download", 410)
        assert b"expired" in page and job["files"]["metrics.json"] not in page
    async with stack.cluster.client() as client:
        listed = {s.id: s for s in await client.shares()}
        trail = await client.audit(since=folder.share.created_at - 1)  # making and revoking links is on record
    assert listed[folder.share.id].revoked and not listed[short.share.id].revoked
    made = {(e.verb, e.target, e.detail.get("what")) for e in trail if e.outcome == "ok"}
    assert {("shares.create", folder.share.id, f"{job['id']}:ckpt/best"), ("shares.revoke", folder.share.id, None),
            ("shares.create", short.share.id, f"{job['id']}:metrics.json")} <= made, trail


async def test_share_requests_are_checked_and_cross_site_ones_refused(stack: WebStack, job: dict[str, Any],
                                                                      http: aiohttp.ClientSession) -> None:
    for sent, status in [({"job": job["id"], "path": "nothere"}, 404), ({"job": "j-nothere"}, 404),
                         ({"job": job["id"], "expires": "forever"}, 400), ({"job": job["id"], "expires": "900d"}, 400),
                         ({"path": "x"}, 400), ({"job": job["id"], "model": "m", "version": 1}, 400)]:
        async with http.post("/api/shares", json=sent, headers={"X-INCL": "1"}) as resp:
            assert resp.status == status, (sent, await resp.text())
    for headers in [{}, {"X-INCL": "1", "Origin": "https://evil.example"},
                    {"X-INCL": "1", "Sec-Fetch-Site": "cross-site"}]:
        async with http.post("/api/shares", json={"job": job["id"]}, headers=headers) as resp:
            assert resp.status == 403
    async with http.post("/api/shares", json={"job": job["id"], "expires": "24h"}, headers={"X-INCL": "1"}) as resp:
        share = (await resp.json())["share"]
    assert share["kind"] == "folder" and share["expires_at"] - share["created_at"] == pytest.approx(86400)
    assert share["files"] == len(job["files"])


def test_incl_share_prints_a_link_lists_it_and_revokes_it_and_shares_a_model_version(
        stack: WebStack, job: dict[str, Any]) -> None:
    from click.testing import CliRunner

    from incl.cli.share import share

    def incl_share(*args: str) -> Any:
        result = CliRunner().invoke(share, list(args), obj={"nats_url": stack.cluster.nats.url})
        assert result.exit_code == 0, (result.output, result.stderr)
        return result

    made = json.loads(incl_share(f"{job['id']}:ckpt/best/model.pt", "--expires", "24h", "--json",
                                 "--web-url", stack.url + "/").output)
    assert made["url"].startswith(f"{stack.url}/s/sh-") and made["share"]["kind"] == "output"
    printed = incl_share(job["id"], "--web-url", stack.url)
    assert printed.stdout.strip().startswith(f"{stack.url}/s/sh-") and "folder" in printed.stderr

    async def fetch(url: str) -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as s, s.get(url) as resp:
            return resp.status, await resp.read()

    assert asyncio.run(fetch(made["url"] + "/download")) == (200, job["files"]["ckpt/best/model.pt"])
    listed = json.loads(incl_share("ls", "--json").output)
    assert made["share"]["id"] in [s["id"] for s in listed]
    assert made["share"]["id"] in incl_share("ls").output
    assert "no longer opens" in incl_share("--revoke", made["share"]["id"]).output
    assert asyncio.run(fetch(made["url"] + "/download"))[0] == 410

    async def register() -> None:
        async with stack.cluster.client() as client:
            await client.register_model("sharenet", job["id"], paths=["ckpt/best"], alias="production")

    asyncio.run(register())
    model = json.loads(incl_share("model", "sharenet@production", "--json", "--web-url", stack.url).output)
    assert model["share"]["kind"] == "model" and model["share"]["target"]["version"] == 1
    status, data = asyncio.run(fetch(model["url"] + "/download"))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert status == 200 and got == {"sharenet-v1/ckpt/best/model.pt": job["files"]["ckpt/best/model.pt"]}
    bad = CliRunner().invoke(share, ["j-nothere"], obj={"nats_url": stack.cluster.nats.url},
                             env={"INCL_WEB_URL": stack.url})
    assert bad.exit_code != 0 and "j-nothere" in bad.stderr


async def test_a_corrupt_stored_file_cuts_its_download_short_instead_of_sending_wrong_bytes(
        stack: WebStack, http: aiohttp.ClientSession, tmp_path: Path) -> None:
    (tmp_path / "w.py").write_text("import os, pathlib\n"
                                   "(pathlib.Path(os.environ['INCL_OUTPUT_DIR']) / 'big.bin')"
                                   ".write_bytes(os.urandom(3 * 2**20))\n")
    done = await stack.cluster.wait_done((await stack.cluster.submit(f"{PY} {tmp_path / 'w.py'}")).id, 60)
    listed, _ = await body(http, f"/api/jobs/{done.id}/outputs")
    async with stack.cluster.client() as client:
        root = Path((await client.store_url()).removeprefix("file://"))
    tree = next(a.outputs for a in done.attempts if a.outputs)
    assert tree is not None and json.loads(listed)["files"][0]["size"] == 3 * MiB
    from incl.artifacts.manifest import decode
    from incl.artifacts.refs import blob_key, manifest_key

    [entry] = decode((root / manifest_key(tree.digest)).read_bytes(), tree.digest).files
    blob = root / blob_key(entry.digest)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # the last chunk: most of the file is sent before the check fails
    blob.write_bytes(bytes(data))
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(f"/api/jobs/{done.id}/outputs/big.bin") as resp:
            assert resp.status == 200 and resp.content_length == 3 * MiB
            await resp.read()
