"""The Models pages against a real stack (nats-server, controller, an agent, `python -m incl.web`), one for the
file: a finished job's outputs registered twice, then the API (`/api/models`, `/api/models/{name}`, the versions
of a job, the 404s) and, in headless Chromium as in test_web_browser, the Models page, a model's versions linked to
their job and the job's page linking back. Screenshots go to the test's temporary directory (`screenshots*/`)."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest
import test_web_browser as wb
from webstack import WebStack, web_stack

from incl.bus.client import Client
from incl.proto.messages import JobState

pytestmark = pytest.mark.timeout(90)

TRAIN = """\
import math, os, pathlib, incl
out = pathlib.Path(os.environ["INCL_OUTPUT_DIR"])
(out / "model.pt").write_bytes(b"w" * 3000)
(out / "ckpt").mkdir()
(out / "ckpt" / "a.bin").write_bytes(b"a" * 100)
incl.log({"loss": 0.5, "grad_norm": 1.0}, step=1)
incl.log({"loss": 0.25, "grad_norm": math.nan}, step=2)
"""
NOTE = "lr 0.1, 90 epochs"
MARKUP = "<b>bold</b> <img src=x onerror=alert(1)>"


class Registered(NamedTuple):
    stack: WebStack
    job_id: str  # the job both versions of resnet were made from
    other_id: str  # a finished job nothing was registered from
    markup_id: str  # a job named with markup: model `markup`, whose note is markup too


@pytest.fixture(scope="module")
def reg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registered]:
    tmp = tmp_path_factory.mktemp("webmodels")
    proj = tmp / "proj"
    proj.mkdir()
    (proj / "train.py").write_text(TRAIN)
    with web_stack(tmp) as s:
        async def setup() -> Registered:
            job = await s.cluster.submit(f"{wb.PY} train.py", workdir=str(proj), env={"LR": "0.1"},
                                         name="resnet-50 lr=0.1", user="bob")
            other = await s.cluster.submit("true", name="nothing-kept")
            markup = await s.cluster.submit(f"{wb.PY} train.py", workdir=str(proj), name=wb.XSS)
            for j in (job, other, markup):
                done = await s.cluster.wait_done(j.id)
                assert done.state is JobState.SUCCEEDED, (done.reason, done.current and done.current.tail, s.dump())
            async with Client(s.cluster.nats.url, timeout=5.0, user="ann") as c:
                await c.register_model("markup", markup.id, note=MARKUP)
                await c.register_model("resnet", job.id, alias="production", note=NOTE)
                await c.register_model("resnet", job.id, paths=["model.pt"], alias="staging", note="weights only")
            return Registered(s, job.id, other.id, markup.id)

        yield wb.on_own_loop(setup)


@pytest.fixture
async def http(reg: Registered) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(reg.stack.url) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, path: str, status: int = 200) -> Any:
    async with http.get(path) as resp:
        body = await resp.json()
        assert resp.status == status, body
        return body


async def test_models_list_shows_each_model_with_its_latest_version_and_aliases(
        reg: Registered, http: aiohttp.ClientSession) -> None:
    m, markup = (await get_json(http, "/api/models"))["models"]  # the most recently registered first
    assert (m["name"], m["versions"], m["aliases"]) == ("resnet", 2, {"production": 1, "staging": 2})
    assert (markup["name"], markup["versions"], markup["aliases"]) == ("markup", 1, {})
    assert m["latest"]["version"] == 2 and m["updated_at"] == m["latest"]["registered_at"]
    assert m["latest"]["lineage"]["job_id"] == reg.job_id and m["latest"]["registered_by"] == "ann"


async def test_model_has_every_version_with_its_lineage_newest_first(reg: Registered,
                                                                     http: aiohttp.ClientSession) -> None:
    body = await get_json(http, "/api/models/resnet")
    assert body["name"] == "resnet" and body["aliases"] == {"production": 1, "staging": 2}
    v2, v1 = body["versions"]
    assert (v2["version"], v2["paths"], v2["tree"]["files"]) == (2, ["model.pt"], 1)
    assert (v1["version"], v1["paths"], v1["tree"]["files"], v1["note"]) == (1, [], 2, NOTE)
    lineage = v1["lineage"]
    assert (lineage["job_id"], lineage["job_name"], lineage["user"], lineage["job_state"]) == (
        reg.job_id, "resnet-50 lr=0.1", "bob", "SUCCEEDED")
    assert lineage["env"] == {"LR": "0.1"} and lineage["code"]["files"] == 1 and lineage["image"] is None
    # The last value of each metric; a NaN as the string JSON can carry.
    assert lineage["metrics"] == {"loss": 0.25, "grad_norm": "NaN"}
    assert not math.isnan(v2["registered_at"]) and v2["registered_at"] >= v1["registered_at"]


async def test_unknown_model_is_404_and_an_impossible_name_400(http: aiohttp.ClientSession) -> None:
    assert await get_json(http, "/api/models/nosuch", 404) == {"error": "no model nosuch"}
    assert "not a valid model name" in (await get_json(http, "/api/models/a..b", 400))["error"]


async def test_a_job_lists_the_versions_made_from_it(reg: Registered, http: aiohttp.ClientSession) -> None:
    versions = (await get_json(http, f"/api/jobs/{reg.job_id}/models"))["versions"]
    assert [(v["name"], v["version"]) for v in versions] == [("resnet", 1), ("resnet", 2)]  # not markup's
    assert (await get_json(http, f"/api/jobs/{reg.other_id}/models")) == {"versions": []}
    assert await get_json(http, "/api/jobs/j-nothere/models", 404) == {"error": "no job j-nothere"}


def test_models_pages_are_served_under_the_security_policy(reg: Registered) -> None:
    for path in ["/models", "/models/resnet", "/static/js/models.js", "/static/js/model.js"]:
        with urllib.request.urlopen(reg.stack.url + path) as resp:
            assert resp.status == 200
            assert "script-src 'self'" in resp.headers["Content-Security-Policy"]


# --- in the browser ------------------------------------------------------------------------------------------


def test_models_page_links_versions_to_their_job_and_the_job_back(reg: Registered, page: Any,
                                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    """Models -> resnet -> v1's job -> back to resnet by the job's link; the job's markup name and the note stay
    text."""
    shots: Path = tmp_path_factory.mktemp("screenshots")
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{reg.stack.url}/jobs")
    page.click("header nav a:text('Models')")
    page.wait_for_url("**/models")
    row = page.locator("tr[data-model='resnet']")
    assert row.locator("td").nth(1).inner_text() == "v2"
    assert row.locator("a.tag").all_text_contents() == ["production → v1", "staging → v2"]
    row.get_by_role("link", name="resnet").click()

    page.wait_for_url("**/models/resnet")
    page.wait_for_function("document.body.dataset.ready === '1'")
    assert page.locator("#versions tr").count() == 2
    v1 = page.locator("tr#v1")
    assert v1.locator("a.tag").all_text_contents() == ["production"]
    assert NOTE in v1.locator("td.note").inner_text()
    assert "loss 0.25" in v1.inner_text() and "grad_norm NaN" in v1.inner_text() and "$LR 0.1" in v1.inner_text()
    page.screenshot(path=str(shots / "web-models.png"), full_page=True)

    v1.get_by_role("link", name=reg.job_id).click()
    page.wait_for_url(f"**/jobs/{reg.job_id}")
    page.wait_for_selector("#models a")
    assert page.locator("#models a").all_text_contents() == ["resnet v1", "resnet v2"]
    page.screenshot(path=str(shots / "web-job-models.png"))
    page.click("#models a:text('resnet v1')")
    page.wait_for_url("**/models/resnet#v1")
    page.wait_for_function("document.body.dataset.ready === '1'")
    page.goto(f"{reg.stack.url}/models")
    page.wait_for_function("document.body.dataset.ready === '1'")
    page.screenshot(path=str(shots / "web-models-list.png"))
    assert not dialogs


def test_a_job_name_and_a_note_of_markup_are_shown_as_text(reg: Registered, page: Any) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(f"{reg.stack.url}/models/markup")
    page.wait_for_function("document.body.dataset.ready === '1'")
    v1 = page.locator("tr#v1")
    assert v1.locator("td.note").inner_text() == MARKUP and wb.XSS in v1.inner_text()
    assert page.locator("main img, main b").count() == 0
    page.goto(f"{reg.stack.url}/models")
    page.wait_for_function("document.body.dataset.ready === '1'")
    assert wb.XSS in page.locator("tr[data-model='markup']").inner_text()
    assert page.locator("main img, main b").count() == 0 and not dialogs
