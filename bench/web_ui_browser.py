"""Headless Chromium (Debian's, through Playwright's sync API) for bench/web_ui.py: each measurement in a
fresh context (a cold tab: no cache), viewport 1280×900, with web_ui_hook.js injected before the page's
scripts. `bypass_csp` only so that Playwright may evaluate script text in INCL's pages, as in the tests."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 900}


class Browser:
    def __init__(self, hook: Path, shots: Path | None = None) -> None:
        self.hook = hook.read_text()
        self.shots = shots

    def __enter__(self) -> Browser:
        from playwright.sync_api import sync_playwright

        self._pw = sync_playwright().start()
        self.browser = self._pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        return self

    def __exit__(self, *exc: object) -> None:
        self.browser.close()
        self._pw.stop()

    def page(self, hook: bool = True) -> tuple[Any, Any]:
        context = self.browser.new_context(viewport=VIEWPORT, bypass_csp=True)
        page = context.new_page()
        page.set_default_timeout(120_000)
        if hook:
            page.add_init_script(self.hook)
        return context, page

    # ------------------------------------------------------------------------------------- the 1M chart

    def incl_load(self, url: str) -> dict:
        """Navigation start -> the first draw with data (uPlot's draw hook, page time), then two drags."""
        context, page = self.page()
        try:
            page.goto(url)
            page.wait_for_function("window.__bench.draws.some(d => d.n > 0)")
            first = page.evaluate("window.__bench.draws.find(d => d.n > 0)")
            page.wait_for_timeout(300)
            out = {"drawn_ms": round(first["t"], 1), "drawn_points": first["n"]}
            # Where the time went: the /metrics request as the page made it (Resource Timing, page time).
            rt = page.evaluate("performance.getEntriesByType('resource').filter(e => e.name.includes('/metrics'))"
                               ".map(e => [e.startTime, e.responseStart, e.responseEnd])")
            if rt:
                out["metrics_sent_ms"], out["metrics_first_byte_ms"], out["metrics_done_ms"] = (round(x, 1) for x in rt[0])
            # Drag 12 px in the middle of the plot (about 3% of x), then 8 px inside that range (full resolution).
            for k, (at, width) in enumerate(((0.5, 12), (0.5, 8)), 1):
                ms, n, note = self._drag(page, at, width)
                out[f"zoom{k}_ms"], out[f"zoom{k}_points"], out[f"zoom{k}_note"] = ms, n, note
            return out
        finally:
            context.close()

    def _drag(self, page: Any, at: float, width: int) -> tuple[float, int, str]:
        box = page.locator(".chart .u-over").first.bounding_box()
        gen = page.evaluate("window.__bench.draws.at(-1).gen")
        x, y = box["x"] + box["width"] * at, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + width, y, steps=4)
        page.mouse.up()
        page.wait_for_function("g => window.__bench.draws.some(d => d.gen > g && d.t > window.__bench.mouseup)",
                               arg=gen)
        d = page.evaluate("g => { const b = window.__bench; return [b.draws.find(d => d.gen > g && d.t > b.mouseup),"
                          " b.mouseup]; }", gen)
        page.wait_for_timeout(200)
        note = page.locator(".chart .note").first.text_content() or ""
        return round(d[0]["t"] - d[1], 1), d[0]["n"], note

    # ---------------------------------------------------------------------------------------- live points

    def live(self, url: str, points: int, timeout: float) -> dict:
        """Each live point's value is the job's time.time() when it logged it; its latency is the wall time
        of the first draw that shows it minus that."""
        context, page = self.page()
        try:
            page.add_init_script("window.__bench.keepValues = true;")
            page.goto(url)
            page.wait_for_function("document.body.dataset.ready === '1'")
            ready = page.evaluate("performance.timeOrigin + performance.now()") / 1000
            deadline = time.time() + timeout
            while time.time() < deadline:
                if page.evaluate("window.__bench.fresh.length") >= points:
                    break
                page.wait_for_timeout(500)
            origin = page.evaluate("performance.timeOrigin")
            fresh = page.evaluate("window.__bench.fresh")
            gaps = page.evaluate("window.__bench.gaps")
        finally:
            context.close()
        live = [(origin + t) / 1000 - v for t, v in fresh if v >= ready]
        return {"points_drawn": len(fresh), "points_counted": len(live), "before_page_ready": len(fresh) - len(live),
                "latency_ms": [round(x * 1000, 2) for x in live],
                "longest_frame_ms": round(max(gaps[10:], default=0), 1)}

    # -------------------------------------------------------------------------------------- log follow

    def follow_logs(self, url: str, timeout: float) -> dict:
        """Frames and long tasks from the page ready until the stream's end event (the job over, all sent)."""
        context, page = self.page()
        try:
            page.goto(url)
            page.wait_for_function("document.body.dataset.ready === '1'")
            start = page.evaluate("[performance.now(), window.__bench.gaps.length]")
            deadline = time.time() + timeout
            while time.time() < deadline and not page.evaluate("document.body.dataset.streamEnded === '1'"):
                page.wait_for_timeout(500)
            ended = page.evaluate("document.body.dataset.streamEnded === '1'")
            page.wait_for_timeout(500)
            b = page.evaluate("[window.__bench.gaps, window.__bench.longtasks, performance.now()]")
            # A line is an element, or in a fast log's frames one of the newline-separated lines of one.
            lines = page.evaluate("[...document.querySelectorAll('#log > span')].flatMap(s => s.textContent.split('\\n'))")
            note = page.locator("#lognote").text_content() or ""
            page.screenshot(path=str(self.shots / "logs.png")) if self.shots else None
        finally:
            context.close()
        gaps, tasks = b[0][start[1]:], [t for t in b[1] if t[0] >= start[0]]
        gaps_sorted = sorted(gaps)
        dropped = int(re.sub(r"\D", "", note.split(" earlier")[0]) or 0) if "earlier" in note else 0
        return {"stream_ended": ended, "watched_s": round((b[2] - start[0]) / 1000, 1), "frames": len(gaps),
                "longest_frame_ms": round(max(gaps, default=0), 1),
                "frame_p99_ms": round(gaps_sorted[int(0.99 * (len(gaps) - 1))], 1) if gaps else None,
                "frames_over_50ms": sum(g > 50 for g in gaps), "frames_over_200ms": sum(g > 200 for g in gaps),
                "longtasks": len(tasks), "longtask_max_ms": round(max((t[1] for t in tasks), default=0), 1),
                "longtask_total_ms": round(sum(t[1] for t in tasks), 1),
                "page_lines_kept": len(lines), "page_lines_received": len(lines) + dropped,
                "page_first_line": lines[0] if lines else None, "page_last_lines": lines[-2:]}

    # -------------------------------------------------------------------------------------------- peers

    def peer_load(self, peer: str, ready: dict) -> dict:
        return stable_chart(self, ready["url"], ready["data"], ready["selector"], hook=False)


def stable_chart(browser: Browser, url: str, data: str, selector: str, hold: float = 1.5,
                 hook: bool = True) -> dict:
    """The same measure for every UI: from `goto` to the moment the chart's pixels reached their final state.
    After the data request (a URL containing `data`) has answered, screenshots of the chart element (`selector`)
    are taken back to back; the chart is drawn once `hold` s of them are identical. `stable_ms` is the start of
    the first identical screenshot (an upper bound); `changed_ms` the start of the one before it (a lower bound)."""
    context, page = browser.page(hook)
    answered: list[float] = []
    t0 = time.perf_counter()
    page.on("requestfinished", lambda r: answered.append(time.perf_counter()) if data in r.url else None)
    try:
        page.goto(url)
        while not answered:
            page.wait_for_timeout(20)
        el = page.locator(selector).first
        el.wait_for(state="visible")
        shots: list[tuple[float, bytes]] = []
        since = None
        while True:
            t = time.perf_counter()
            img = el.screenshot(animations="allow", caret="initial")
            if shots and img == shots[-1][1]:
                since = since if since is not None else len(shots) - 1
                if t - shots[since][0] >= hold:
                    break
            else:
                since = None
            shots.append((t, img))
            if t - t0 > 300:
                raise TimeoutError(f"{url}: the chart kept changing for 300 s")
        k = since
        return {"stable_ms": round((shots[k][0] - t0) * 1000, 1),
                "changed_ms": round((shots[k - 1][0] - t0) * 1000, 1) if k else None,
                "data_answered_ms": round((answered[0] - t0) * 1000, 1), "shots": len(shots),
                "shot_ms": round((shots[-1][0] - shots[0][0]) * 1000 / max(len(shots) - 1, 1), 1)}
    finally:
        context.close()
