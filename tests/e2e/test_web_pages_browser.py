"""The Compare, Study and Cluster pages in a real browser (Debian's chromium through Playwright, as in
test_web_browser) against a real stack with a CPU agent and one whose recorded GPU goes idle: two runs overlaid
with the differing param marked, a finished study's trials and charts, the agents and the idle alert. Screenshots
go to the test's temporary directory (`screenshots*/`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_web_browser as wb
from conftest import wait_for
from webpages import IDLE, PY, RUN, start_gpu_agent, submit_study
from webstack import WebStack, web_stack

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebStack]:
    tmp = tmp_path_factory.mktemp("webpagesui")
    with web_stack(tmp) as s:
        start_gpu_agent(s.cluster, tmp)
        yield s


@pytest.fixture(scope="module")
def study_id(stack: WebStack, browser: Any) -> str:
    """A tiny study, submitted first so that it runs while the other pages are tested."""
    return wb.on_own_loop(lambda: submit_study(stack.cluster)).id


# How many pixels of each colour a chart's canvas holds: a series drawn is a colour present.
PIXELS = """([canvas, colours]) => {
  const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  const want = colours.map(c => [1, 3, 5].map(i => parseInt(c.slice(i, i + 2), 16)));
  const counts = want.map(() => 0);
  for (let i = 0; i < d.length; i += 4) {
    want.forEach((w, k) => {
      if (Math.abs(d[i] - w[0]) + Math.abs(d[i + 1] - w[1]) + Math.abs(d[i + 2] - w[2]) < 40) counts[k]++;
    });
  }
  return counts;
}"""


def test_compare_overlays_two_runs_and_marks_the_param_that_differs(stack: WebStack, study_id: str, page: Any,
                                                                    shots: Path) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    ids = [wb.submit(stack, f"{PY} -c \"{RUN}\"", name=name, env={"LR": lr, "MODE": "fast"})
           for name, lr in [("lr-small", "0.01"), (wb.XSS, "0.1")]]
    for job_id in ids:
        wb.on_own_loop(lambda j=job_id: stack.cluster.wait_done(j))
    # Picked on the Jobs page: two ticks and Compare.
    page.goto(f"{stack.url}/jobs")
    for job_id in ids:
        page.get_by_label(f"compare {job_id}").check()
    page.click("#compare")
    page.wait_for_url(f"**/compare?jobs={ids[0]},{ids[1]}")
    page.wait_for_function("document.body.dataset.ready === '1'")
    page.locator(".chart h3", has_text="accuracy").wait_for()
    assert page.locator(".chart h3").all_text_contents() == ["accuracy", "loss"]
    loss = page.locator(".chart", has=page.locator("h3", has_text="loss"))
    assert loss.locator(".u-legend .u-series").count() == 3  # x, and one series per job
    drawn = page.evaluate(PIXELS, [loss.locator("canvas").element_handle(), ["#2563eb", "#dc2626"]])
    assert all(n > 50 for n in drawn), drawn  # both runs' lines are on the canvas
    lr = page.locator("tr[data-key='env:LR']")
    assert lr.get_attribute("class") == "differs" and lr.locator("td.diff").all_text_contents() == ["0.01", "0.1"]
    assert page.locator("tr[data-key='env:MODE']").get_attribute("class") == "same"
    assert page.locator("tr[data-key='metric:loss'] td.diff").count() == 2
    assert wb.XSS in page.locator("#legend").text_content()  # the name as text
    assert page.locator("main img").count() == 0 and dialogs == []
    page.screenshot(path=shots / "compare.png", full_page=True)
    # A dragged range is fetched again for both jobs; a double-click goes back to the whole runs.
    over = loss.locator(".u-over").bounding_box()
    page.mouse.move(over["x"] + over["width"] * 0.2, over["y"] + over["height"] / 2)
    page.mouse.down()
    page.mouse.move(over["x"] + over["width"] * 0.6, over["y"] + over["height"] / 2, steps=5)
    page.mouse.up()
    loss.locator(".note", has_text="zoomed: full resolution").wait_for()
    page.mouse.dblclick(over["x"] + over["width"] / 2, over["y"] + over["height"] / 2)
    loss.locator(".note", has_text="2 of 2 jobs log it").wait_for()
    page.check("#onlydiff")
    assert not page.locator("tr[data-key='env:MODE']").is_visible()


SLOW = ("import incl, time\n"
        "for s in range(40):\n"
        "    incl.log({'loss': 1.0 / (s + 1)}, step=s)\n"
        "    time.sleep(0.2)\n")


def test_compare_follows_a_running_job_until_it_ends(stack: WebStack, page: Any, shots: Path) -> None:
    """Its state, final metrics and line follow without a reload, and the page stops asking once it has ended."""
    done = wb.submit(stack, f"{PY} -c \"{RUN}\"", name="finished", env={"LR": "0.5"})
    wb.on_own_loop(lambda: stack.cluster.wait_done(done))
    running = wb.submit(stack, f"{PY} -c \"{SLOW}\"", name="running")
    wb.on_own_loop(lambda: stack.cluster.wait_state(running, {"RUNNING"}))
    page.goto(f"{stack.url}/compare?jobs={done},{running}")
    page.wait_for_function("document.body.dataset.ready === '1'")
    assert page.evaluate("document.body.dataset.following") == "1"
    loss = page.locator(".chart", has=page.locator("h3", has_text="loss"))
    loss.locator("canvas").wait_for()
    page.wait_for_function("document.body.dataset.following === '0'", timeout=60000)
    assert "SUCCEEDED" in page.locator("#legend .chip", has_text="running").text_content()
    assert page.locator("tr[data-key='metric:loss'] td").nth(1).text_content() == "0.025"  # its last value, 1/40
    drawn = page.evaluate(PIXELS, [loss.locator("canvas").element_handle(), ["#2563eb", "#dc2626"]])
    assert all(n > 50 for n in drawn), drawn  # both lines, the followed one drawn to its end
    page.screenshot(path=shots / "compare-followed.png", full_page=True)


def test_cluster_page_lists_the_agents_gpu_readings_and_the_idle_job(stack: WebStack, study_id: str, page: Any,
                                                                     shots: Path) -> None:
    wb.on_own_loop(lambda: stack.cluster.wait_agents(2))  # the GPU agent registered (the fixture only started it)
    job_id = wb.submit(stack, "sleep 60", name="napper", resources={"gpus": 1}, gpu_idle=IDLE)
    page.goto(f"{stack.url}/cluster")
    page.locator("tr[data-agent='a1']").wait_for()
    page.locator("tr[data-agent='gpu1'] a", has_text=job_id).wait_for()
    page.locator(f"#idle li[data-job='{job_id}']").wait_for(timeout=30000)  # polled: it appears by itself
    assert "napper (tester) on gpu1" in page.locator(f"#idle li[data-job='{job_id}']").text_content()
    assert page.locator("table.gpus tbody tr").count() == 1
    assert "Fake A100" in page.locator("table.gpus").text_content()
    page.screenshot(path=shots / "cluster.png", full_page=True)
    wb.on_own_loop(lambda: _cancel(stack, job_id))


async def _cancel(stack: WebStack, job_id: str) -> None:
    async with stack.cluster.client() as c:
        await c.cancel(job_id)


def test_study_page_shows_its_trials_and_charts(stack: WebStack, study_id: str, page: Any, shots: Path) -> None:
    async def completed() -> bool:
        async with stack.cluster.client() as c:
            return (await c.study(study_id)).summary.study.state == "COMPLETED"

    wb.on_own_loop(lambda: wait_for(completed, 90, "the study to complete", interval=0.5))
    page.goto(f"{stack.url}/studies")
    page.click(f"text={study_id}")
    page.wait_for_url(f"**/studies/{study_id}")
    page.wait_for_function("document.body.dataset.ready === '1'")
    assert page.locator("#title").text_content() == "tiny-sweep"
    assert page.locator("#trials tr").count() == 5
    assert page.locator("#trials a[href^='/jobs/j-']").count() == 5
    assert page.locator("#trials tr.best").count() == 1
    assert page.locator("#best canvas").count() >= 1
    assert page.locator("#scatter .chart h3").all_text_contents() == ["LR", "LAYERS", "OPT"]
    assert page.locator("#parallel polyline").count() == 5
    assert page.locator("#importances .barrow").count() >= 1
    page.screenshot(path=shots / "study.png", full_page=True)
    # Brushing: a drag along the value's axis keeps the trials in that range, a click on it clears the range.
    area = page.locator("#parallel g.brush").last.locator("rect.area")
    area.scroll_into_view_if_needed()
    value_axis = area.bounding_box()
    middle = value_axis["x"] + value_axis["width"] / 2
    page.mouse.move(middle, value_axis["y"] + value_axis["height"] / 2)  # from half way up past the top
    page.mouse.down()
    page.mouse.move(middle, value_axis["y"] - 20, steps=5)
    page.mouse.up()
    dim = page.locator("#parallel polyline.dim").count()
    values = [float(v) for v in page.evaluate("() => [...document.querySelectorAll('#trials tr')]"
                                              ".map(tr => tr.children[2].textContent)")]
    high = (max(values) + min(values)) / 2
    assert dim == sum(1 for v in values if v < high - 1e-6 * abs(high)), (dim, values)  # those below half way
    assert f"{5 - dim} of 5 trials" in page.locator("#parallel p").text_content()
    page.screenshot(path=shots / "study-brushed.png", full_page=True)
    page.mouse.click(middle, value_axis["y"] + value_axis["height"] / 4)
    assert page.locator("#parallel polyline.dim").count() == 0
    # A trial's job links back to its study from the Jobs page.
    page.goto(f"{stack.url}/jobs?q={study_id}")
    page.locator("a.tag", has_text=study_id).first.click()
    page.wait_for_url(f"**/studies/{study_id}")
