"""The Job page's log view and charts in a real browser (Debian's chromium through Playwright) against a real
stack: terminal colours shown as colours with no escape text left, a sequence cut between two batches still read
whole, search narrowing the log to marked matches, the attempt filter, and the charts' options (log scale,
smoothing, x by time) read from uPlot's own state and kept in the page's address. The ANSI parser and the
smoothing are also checked as functions, imported into the page. Screenshots go to the test's temporary
directory."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_web_browser import PY, submit
from webstack import WebStack, web_stack

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebStack]:
    with web_stack(tmp_path_factory.mktemp("webjob")) as s:
        yield s


def visible_lines(page: Any) -> list[str]:
    return list(page.evaluate("() => [...document.querySelectorAll('#log > span')]"
                              ".filter(n => !n.hidden).map(n => n.textContent)"))


ANSI_CASES = """async () => {
  const { parse, look, color } = await import('/static/js/ansi.js');
  const { smooth } = await import('/static/js/charts.js');
  const text = (r) => r.runs.map((x) => x.text).join('');
  const red = parse('\\x1b[31mred\\x1b[0m plain');
  const cut = parse('a \\x1b[3');
  const whole = parse('a \\x1b[3' + '4mblue');
  const ext = parse('\\x1b[1;38;5;196mx\\x1b[48;2;1;2;3my\\x1b[38:2::10:20:30mz');
  const noise = parse('\\x1b]0;title\\x07\\x1b[2K\\x1b[1G\\x1b[?25lshown\\x1b(B\\x08\\x1b[A');
  return {
    red: red.runs.map((r) => [r.text, color(r.style.fg)]), redEnd: red.style.fg,
    cutText: text(cut), cutRest: cut.rest, whole: whole.runs.map((r) => [r.text, r.style.fg]),
    ext: ext.runs.map((r) => [r.text, color(r.style.fg), color(r.style.bg), r.style.bold]),
    noise: text(noise), progress: text(parse('\\x1b[32m10%\\r20%\\r\\x1b[0m')),
    carried: parse('still green', parse('\\x1b[32mgreen').style).runs[0].style.fg,
    bold: look(parse('\\x1b[1mb').runs[0].style).className, plain: look(parse('p').runs[0].style),
    smooth: smooth([1, 1, null, 3], 0.5), raw: smooth([1, 2, 3], 0),
  };
}"""


def test_ansi_parser_and_smoothing_as_functions(stack: WebStack, page: Any) -> None:
    """SGR colours (16, 256, truecolor, bold, reset), a sequence cut at a batch's end kept until its rest comes,
    other escapes stripped, `\\r` showing the latest state, colours carried to the next line; TensorBoard's EMA."""
    page.goto(f"{stack.url}/jobs")
    got = page.evaluate(ANSI_CASES)
    assert got["red"] == [["red", "#f87171"], [" plain", None]] and got["redEnd"] is None
    assert got["cutText"] == "a " and got["cutRest"] == "\x1b[3"
    assert got["whole"] == [["a ", None], ["blue", 4]]
    assert got["ext"] == [["x", "#ff0000", None, True], ["y", "#ff0000", "#010203", True],
                          ["z", "#0a141e", "#010203", True]]
    assert got["noise"] == "shown"
    assert got["progress"] == "20%"
    assert got["carried"] == 2
    assert got["bold"] == "ansi ansi-bold" and got["plain"] is None
    assert got["smooth"] == [1, 1, None, pytest.approx(1 + 2 * 0.5 / 0.875)]  # debiased: the first point is itself
    assert got["raw"] == [1, 2, 3]


# The agent ships a line longer than `max_line_bytes` (64 KiB) in pieces: this one is cut inside `ESC [ 3 4 m`.
COLOURED = r"""
printf '\033[31mred\033[0m plain\n'
printf '\033[2K\033[1G\033[1;32mok\033[0m attempt %s\n' "$INCL_ATTEMPT"
""" + f"{PY} -c \"print('x' * (65536 - 3) + '\\033[34mblue\\033[0m')\"" + r"""
for i in 1 2 3; do echo "line $i of attempt $INCL_ATTEMPT"; done
[ "$INCL_ATTEMPT" = 1 ] && exit 3
echo done
"""


def test_log_colours_search_and_attempt_filter(stack: WebStack, page: Any, shots: Path) -> None:
    """A job that prints coloured lines and fails once (retried): the red text is red, no escape text shows, a
    sequence cut between batches is read whole; search narrows to marked matches and clearing it restores every
    line; the attempt filter shows one attempt's lines, and all of them with a separator."""
    job_id = submit(stack, COLOURED, name="colours", retry={"max_attempts": 2, "on_failure": True})
    page.goto(f"{stack.url}/jobs/{job_id}")
    page.locator("#state.SUCCEEDED").wait_for(timeout=40000)
    page.wait_for_function("() => document.querySelector('#log').textContent.includes('done')")
    red = page.locator("#log span.out span", has_text="red").first
    assert red.evaluate("n => getComputedStyle(n).color") == "rgb(248, 113, 113)"
    ok = page.locator("#log span.out span", has_text="ok").first
    bold_green = ["rgb(74, 222, 128)", "700"]
    assert ok.evaluate("n => [getComputedStyle(n).color, getComputedStyle(n).fontWeight]") == bold_green
    blue = page.locator("#log span.out span", has_text="blue").first
    assert blue.evaluate("n => getComputedStyle(n).color") == "rgb(96, 165, 250)"  # cut sequence read whole
    assert blue.evaluate("n => n.parentNode.textContent.length") == 65533 + len("blue")
    with urllib.request.urlopen(f"{stack.url}/api/jobs/{job_id}/stream", timeout=10) as resp:
        events = resp.read().decode()
    assert '\\u001b[3", true]' in events  # the stream did cut the sequence: a piece ends inside it
    log = page.locator("#log").text_content() or ""
    assert "\x1b" not in log and "[31m" not in log and "[0m" not in log and "[3" not in log
    assert "— attempt 2 —" in visible_lines(page)
    assert "red plain" in visible_lines(page) and "ok attempt 1" in visible_lines(page)

    every = visible_lines(page)
    page.fill("#logsearch", "OF ATTEMPT 2")
    page.wait_for_function("() => document.querySelectorAll('#log mark').length === 3")
    assert [ln for ln in visible_lines(page) if not ln.startswith("—")] == [f"line {i} of attempt 2" for i in (1, 2, 3)]
    assert page.locator("#log mark").all_text_contents() == ["of attempt 2"] * 3
    assert "3 of" in (page.locator("#logcount").text_content() or "")
    page.screenshot(path=shots / "job-search.png", full_page=True)
    page.fill("#logsearch", "")
    page.wait_for_function("() => document.querySelectorAll('#log mark').length === 0")
    assert visible_lines(page) == every

    assert page.locator("#attempt").is_visible()
    page.select_option("#attempt", "2")
    shown = visible_lines(page)
    assert "line 1 of attempt 2" in shown and "ok attempt 2" in shown and "red plain" in shown
    assert not any("attempt 1" in ln for ln in shown) and "— attempt 2 —" not in shown
    page.select_option("#attempt", "1")
    assert "line 3 of attempt 1" in visible_lines(page) and "done" not in visible_lines(page)
    page.select_option("#attempt", "")
    assert visible_lines(page) == every


TRAIN = ("import incl, sys, time\n"
         "for i in range(60):\n"
         "    incl.log({'loss': 2.0 / (i + 1) + 0.05 * (i % 3), 'delta': (i % 7) - 3.0}, step=i)\n"
         "    incl.log({'sys/gpu_util': 50.0 + i % 10})\n"
         "    print(f'step {i:>2}/60  loss \\033[1m{2.0 / (i + 1):.4f}\\033[0m  \\033[2mlr 0.1\\033[0m', flush=True)\n"
         "    if i % 10 == 0:\n"
         "        print(f'\\033[32mepoch {i // 10}\\033[0m loss \\033[1m{2.0 / (i + 1):.3f}\\033[0m', flush=True)\n"
         "    if i == 30:\n"
         "        print('\\033[33mwarning:\\033[0m lr is high', file=sys.stderr, flush=True)\n"
         "    time.sleep(0.08)\n")


def chart_state(page: Any, name: str) -> dict[str, str]:
    return dict(page.evaluate(
        "name => { const c = [...document.querySelectorAll('.chart')]"
        ".find(c => c.querySelector('h3').textContent === name);"
        " return c ? {...c.dataset, title: c.title, note: c.querySelector('.note').textContent,"
        " legend: [...c.querySelectorAll('.u-legend .u-series .u-label')].map(n => n.textContent).join('|')} : null; }",
        name) or {})


def test_chart_log_scale_smoothing_and_x_by_time(stack: WebStack, page: Any, shots: Path) -> None:
    """Log y changes uPlot's y scale where every value is above 0 and leaves a chart with values at or below 0
    linear, saying why; smoothing adds a second series; x by time re-reads the charts with the time axis, every
    point once (the live points after the switch included); a step-less system metric draws either way."""
    job_id = submit(stack, f"{PY} -c \"{TRAIN}\"", name="train-colours")
    page.goto(f"{stack.url}/jobs/{job_id}")
    page.wait_for_function("document.body.dataset.ready === '1'")
    page.locator("#logsearch").fill("EPOCH")  # before the lines come: matching ones appear as they arrive
    page.wait_for_function("() => document.querySelectorAll('.chart').length === 3", timeout=20000)
    assert chart_state(page, "loss")["distr"] == "1" and chart_state(page, "loss")["series"] == "1"
    assert chart_state(page, "sys/gpu_util")["x"] == "step"

    page.check("#logy")
    assert chart_state(page, "loss")["distr"] == "3"
    delta = chart_state(page, "delta")
    assert delta["distr"] == "1" and "at or below 0" in delta["title"] and "linear y" in delta["note"]
    assert page.locator("#logy").is_enabled()

    page.eval_on_selector("#smoothing", "n => { n.value = '0.6'; n.dispatchEvent(new Event('input')); }")
    assert page.locator("#smoothing-value").text_content() == "0.6"
    loss = chart_state(page, "loss")
    assert loss["series"] == "2" and loss["distr"] == "3" and loss["legend"].endswith("|loss|smoothed")

    page.select_option("#xaxis", "time")  # while the job still logs: the re-read and the stream must agree
    page.wait_for_function("() => [...document.querySelectorAll('.chart')].every(c => c.dataset.x === 'time')")
    assert chart_state(page, "loss")["legend"].startswith("time|")
    page.locator("#state.SUCCEEDED").wait_for(timeout=40000)
    for name in ("loss", "delta", "sys/gpu_util"):
        page.wait_for_function(
            "name => [...document.querySelectorAll('.chart')].some(c => c.querySelector('h3').textContent === name"
            " && c.querySelector('.note').textContent.startsWith('60 points'))", arg=name)
    page.wait_for_function("() => document.querySelectorAll('#log mark').length === 6")
    assert visible_lines(page) == [f"epoch {i} loss {2.0 / (10 * i + 1):.3f}" for i in range(6)]
    page.locator("#logsearch").fill("")
    page.wait_for_function("() => document.querySelectorAll('#log mark').length === 0")
    assert "warning: lr is high" in visible_lines(page)
    page.select_option("#xaxis", "step")
    page.wait_for_function("() => [...document.querySelectorAll('.chart')].every(c => c.dataset.x === 'step')")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.chart .note')].every(n => n.textContent.startsWith('60 points'))")
    assert chart_state(page, "loss")["series"] == "2"
    # Zoom and hover still work with the options on: a drag fetches the range, a double-click goes back.
    loss = page.locator(".chart", has=page.locator("h3", has_text="loss"))
    over = loss.locator(".u-over").bounding_box()
    page.mouse.move(over["x"] + over["width"] * 0.2, over["y"] + over["height"] / 2)
    page.mouse.down()
    page.mouse.move(over["x"] + over["width"] * 0.6, over["y"] + over["height"] / 2, steps=5)
    page.mouse.up()
    loss.locator(".note", has_text="zoomed:").wait_for()
    assert chart_state(page, "loss")["series"] == "2"
    page.mouse.dblclick(over["x"] + over["width"] / 2, over["y"] + over["height"] / 2)
    loss.locator(".note", has_text="60 points").wait_for()
    page.mouse.move(over["x"] + over["width"] * 0.5, over["y"] + over["height"] / 2)
    values = loss.locator(".u-legend .u-series .u-value").all_text_contents()
    assert len(values) == 3 and all(v not in ("", "--") for v in values), values
    page.screenshot(path=shots / "job.png", full_page=True)
    assert page.url.endswith(f"/jobs/{job_id}?log=1&smooth=0.6")  # the view is in the address
    page.goto(f"{stack.url}/jobs/{job_id}?x=time&log=1&smooth=0.5&q=EPOCH")  # a link shows the same view
    page.wait_for_function("document.body.dataset.ready === '1'")
    loss = chart_state(page, "loss")
    assert (loss["x"], loss["distr"], loss["series"]) == ("time", "3", "2")
    assert chart_state(page, "delta")["distr"] == "1"  # made with log y from the address, then seen to go below 0
    assert page.input_value("#smoothing") == "0.5" and page.is_checked("#logy")
    assert page.input_value("#xaxis") == "time" and page.input_value("#logsearch") == "EPOCH"
    page.wait_for_function("() => document.querySelectorAll('#log mark').length === 6")
    page.screenshot(path=shots / "job-time.png", full_page=True)
