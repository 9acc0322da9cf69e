"""Outputs and share links in a real browser (Debian's chromium through Playwright) against a real stack: a file
and a folder downloaded from the Job page are byte-identical to what the job wrote; a share link made on the page
opens in a fresh browser context (no session, nothing but the link) and stops opening once revoked, and a short
one once it expires. Screenshots go to the test's temporary directory (`screenshots*/`)."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_web_browser import on_own_loop
from webstack import WebStack, web_stack

from incl.proto.shares import ShareTarget

pytestmark = pytest.mark.timeout(120)

WRITE = """\
import os, pathlib
out = pathlib.Path(os.environ["INCL_OUTPUT_DIR"])
(out / "ckpt").mkdir()
(out / "ckpt" / "model.pt").write_bytes(bytes(range(256)) * 4096 + b"tail" * 3000)
(out / "ckpt" / "config.json").write_text('{"lr": 0.1}\\n')
(out / "report ü.txt").write_text("accuracy 0.93\\n")
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebStack]:
    with web_stack(tmp_path_factory.mktemp("webshare")) as s:
        yield s


@pytest.fixture(scope="module")
def job(stack: WebStack, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A finished job with outputs, and a copy of them as the job wrote them (the same script, run here)."""
    work = tmp_path_factory.mktemp("work")
    (work / "write.py").write_text(WRITE)
    job_id = on_own_loop(lambda: stack.cluster.submit(f"python3 {work / 'write.py'}")).id
    done = on_own_loop(lambda: stack.cluster.wait_done(job_id, 60))
    assert done.state == "SUCCEEDED", stack.dump()
    mine = work / "mine"
    mine.mkdir()
    subprocess.run([sys.executable, str(work / "write.py")], env={"INCL_OUTPUT_DIR": str(mine)}, check=True)
    return job_id, mine


def context(browser: Any, **kw: Any) -> Any:
    return browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True, **kw)


def downloaded(page: Any, locator: Any, tmp: Path) -> bytes:
    with page.expect_download() as info:
        locator.click()
    path = tmp / info.value.suggested_filename
    info.value.save_as(path)
    return path.read_bytes()


def test_files_and_a_folder_downloaded_from_the_job_page_are_byte_identical(
        stack: WebStack, browser: Any, job: tuple[str, Path], shots: Path, tmp_path: Path) -> None:
    job_id, mine = job
    ctx = context(browser, bypass_csp=True)  # Playwright's waits evaluate script text (see test_web_browser)
    page = ctx.new_page()
    page.set_default_timeout(20000)
    page.goto(f"{stack.url}/jobs/{job_id}")
    page.wait_for_selector('#outputs a[data-path="ckpt/model.pt"]')
    section = page.locator("section", has=page.locator("#outputs"))
    section.scroll_into_view_if_needed()
    section.screenshot(path=str(shots / "outputs.png"))
    for path in ["ckpt/model.pt", "report ü.txt"]:
        got = downloaded(page, page.locator(f'#outputs a[data-path="{path}"]'), tmp_path)
        assert got == (mine / path).read_bytes(), path
    folder = downloaded(page, page.locator("#outputs tr", has=page.locator('a[data-path="ckpt"]'))
                        .get_by_text("download folder"), tmp_path)
    with tarfile.open(fileobj=io.BytesIO(folder)) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert got == {f"ckpt/{p.name}": p.read_bytes() for p in (mine / "ckpt").iterdir()}
    ctx.close()


def test_a_share_link_opens_in_a_fresh_context_and_fails_after_revocation_and_after_expiry(
        stack: WebStack, browser: Any, job: tuple[str, Path], shots: Path, tmp_path: Path) -> None:
    job_id, mine = job
    owner = context(browser, bypass_csp=True)
    page = owner.new_page()
    page.set_default_timeout(20000)
    page.goto(f"{stack.url}/jobs/{job_id}")
    page.locator('#outputs button[data-share="ckpt"]').click()
    page.wait_for_selector("#share-url")
    url = page.locator("#share-url").input_value()
    assert url.startswith(f"{stack.url}/s/sh-")
    page.locator("section", has=page.locator("#outputs")).screenshot(path=str(shots / "outputs-shared.png"))

    stranger = context(browser)  # fresh: no session, the pages' own security policy in force
    visit = stranger.new_page()
    visit.set_default_timeout(20000)
    resp = visit.goto(url)
    assert resp is not None and resp.status == 200
    assert "config.json" in visit.content() and "model.pt" in visit.content()
    visit.screenshot(path=str(shots / "share.png"), full_page=True)
    archive = downloaded(visit, visit.locator("#download"), tmp_path)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert got == {f"ckpt/{p.name}": p.read_bytes() for p in (mine / "ckpt").iterdir()}
    one = downloaded(visit, visit.get_by_role("link", name="model.pt"), tmp_path)
    assert one == (mine / "ckpt" / "model.pt").read_bytes()

    page.locator("#share-revoke").click()
    page.wait_for_selector("#share-note >> text=revoked")
    resp = visit.goto(url)
    assert resp is not None and resp.status == 410 and "revoked" in visit.content()
    visit.screenshot(path=str(shots / "share-revoked.png"))
    resp = visit.goto(url + "/download")  # a page, not a download (Playwright's goto would raise on one)
    assert resp is not None and resp.status == 410

    short = on_own_loop(lambda: _short_share(stack, job_id))
    resp = visit.goto(f"{stack.url}/s/{short.token}")
    assert resp is not None and resp.status == 200 and "report ü.txt" in visit.content()
    time.sleep(max(0.0, short.share.expires_at - time.time()) + 0.3)
    resp = visit.goto(f"{stack.url}/s/{short.token}")
    assert resp is not None and resp.status == 410 and "expired" in visit.content()
    stranger.close()
    owner.close()


async def _short_share(stack: WebStack, job_id: str) -> Any:
    async with stack.cluster.client() as client:
        return await client.create_share(ShareTarget(job_id=job_id, path="report ü.txt"), expires_in=2)
