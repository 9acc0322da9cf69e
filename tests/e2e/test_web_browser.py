"""The web UI in a real browser (headless Chromium from Debian's `chromium` package, driven by Playwright; no
browser is ever downloaded) against a real stack: live charts and logs, cancel from the page, and text a job
controls shown as text. Screenshots of each page go to the test's temporary directory."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest
from webstack import WebStack, web_stack

PY = sys.executable
XSS = "<img src=x onerror=alert(1)>"
T = TypeVar("T")
pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebStack]:
    with web_stack(tmp_path_factory.mktemp("webui")) as s:
        yield s


def on_own_loop(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to its end on a loop of its own, in a thread (Playwright's sync API holds this one's)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def submit(stack: WebStack, run: str, **spec: Any) -> str:
    return on_own_loop(lambda: stack.cluster.submit(run, **spec)).id


def state(stack: WebStack, job_id: str) -> str:
    return str(on_own_loop(lambda: stack.cluster.job(job_id)).state)


def points_shown(page: Any, metric: str) -> int:
    title = page.locator("h3", has_text=re.compile(f"^{re.escape(metric)}$"))
    note = page.locator(".chart", has=title).locator(".note")
    text = note.text_content() or ""
    match = re.match(r"([\d,]+) points", text)
    return int(match.group(1).replace(",", "")) if match else 0


LIVE = ("import incl, sys, time\n"
        "for i in range(3):\n"
        "    sys.stdout.write(f'\\rprogress {(i + 1) * 10}%'); sys.stdout.flush(); time.sleep(0.05)\n"
        "print()\n"
        "print('warning: lr is high', file=sys.stderr, flush=True)\n"
        "i = 0\n"
        "while True:\n"
        "    print(f'tick {i}', flush=True)\n"
        "    incl.log({'loss': 1.0 / (i + 1), 'accuracy': 1 - 1.0 / (i + 2)}, step=i)\n"
        "    i += 1\n"
        "    time.sleep(0.1)\n")


def test_live_job_page_draws_points_follows_logs_and_cancels(stack: WebStack, page: Any, shots: Path) -> None:
    job_id = submit(stack, f"{PY} -c \"{LIVE}\"", name="resnet-live", env={"EPOCHS": "20"})
    page.goto(f"{stack.url}/jobs/{job_id}")
    page.wait_for_function("document.body.dataset.ready === '1'")
    page.locator(".state.RUNNING").first.wait_for()
    page.wait_for_function("() => [...document.querySelectorAll('#log .out')].some(n => n.textContent === 'tick 5')")
    first = points_shown(page, "loss")
    # Points logged after the page opened are drawn live, and the log follows.
    page.wait_for_function(
        "n => [...document.querySelectorAll('.chart')].some(c => c.querySelector('h3').textContent === 'loss' && "
        "parseInt(c.querySelector('.note').textContent.replace(/,/g, '')) >= n)", arg=first + 10)
    page.wait_for_function("() => [...document.querySelectorAll('#log .out')].some(n => n.textContent === 'tick 25')")
    assert page.locator("#log .err").first.text_content() == "warning: lr is high"  # stderr is marked
    assert page.locator("#log .out").first.text_content() == "progress 30%"  # `\r` progress: its latest state
    assert page.locator("canvas").count() >= 2  # loss and accuracy
    page.screenshot(path=shots / "job.png", full_page=True)
    # Cancel: two clicks (no dialog), then the job stops and the page says so.
    page.click("#cancel")
    page.click("#cancel")
    page.locator("#state.CANCELLED").wait_for(timeout=20000)
    assert state(stack, job_id) == "CANCELLED"
    page.wait_for_function("document.body.dataset.streamEnded === '1'")


def test_jobs_list_filters_and_links_to_the_job(stack: WebStack, page: Any, shots: Path) -> None:
    ids = [submit(stack, "echo done", name=f"sweep-{i}", user=user) for i, user in enumerate(["ann", "bob", "ann"])]
    page.goto(f"{stack.url}/jobs")
    for job_id in ids:
        page.locator("td.id a", has_text=job_id).wait_for()
    page.fill("#user", "ann")
    page.wait_for_function("() => document.querySelectorAll('#rows tr').length === 2")
    assert page.url.endswith("/jobs?user=ann")
    page.fill("#user", "")
    page.locator("td.id a", has_text=ids[1]).wait_for()
    page.wait_for_function("() => !document.querySelector('#rows').textContent.includes('QUEUED')")
    page.screenshot(path=shots / "jobs.png", full_page=True)
    page.click(f"text={ids[1]}")
    page.wait_for_url(f"**/jobs/{ids[1]}")
    page.locator("#title", has_text="sweep-1").wait_for()


def test_markup_in_names_log_lines_and_metric_names_is_shown_as_text(stack: WebStack, page: Any,
                                                                      shots: Path) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    script = (f"import incl\nprint({XSS!r})\nprint('<script>alert(2)</script>')\n"
              f"incl.log({{{XSS!r}: 1.0}}, step=0)\nincl.log({{{XSS!r}: 2.0}}, step=1)\n")
    job_id = submit(stack, f"{PY} -c \"{script}\"", name=XSS)
    page.goto(f"{stack.url}/jobs/{job_id}")
    page.locator("#state.SUCCEEDED").wait_for(timeout=20000)
    page.wait_for_function("() => document.querySelectorAll('#log .out').length >= 2")
    assert page.locator("#title").text_content() == XSS
    assert [page.locator("#log .out").nth(i).text_content() for i in range(2)] == [XSS, "<script>alert(2)</script>"]
    page.locator(".chart h3", has_text=XSS).wait_for()
    page.goto(f"{stack.url}/jobs?q=onerror")
    page.locator("td.name", has_text=XSS).wait_for()
    page.screenshot(path=shots / "xss.png")
    assert page.locator("main img").count() == 0
    assert page.evaluate("() => document.querySelectorAll('script:not([src])').length") == 0
    assert dialogs == []
