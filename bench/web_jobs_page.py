#!/usr/bin/env python3
"""The Jobs page with many jobs in headless Chromium: first contentful paint, and the time until its first
page of rows is in the table (the page is usable then), against a stack holding `--n` jobs.

    .venv/bin/python bench/web_jobs_page.py [--n 10000] [--loads 5]

The stack has no agent, so every job stays queued (the listing the server reads is as large as it gets). The
browser is Debian's chromium (/usr/bin/chromium) driven by Playwright, as in the tests. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from incl_side import USER, Stack, free_port

from incl.bus.client import Client
from incl.cli.stack import wait_port
from incl.proto.spec import load_spec

CHROMIUM = "/usr/bin/chromium"


async def submit(url: str, n: int, concurrency: int = 32) -> float:
    async with Client(url, timeout=30.0) as client:
        spec, gate = load_spec({"run": "true"}), asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with gate:
                await client.submit(spec, USER)

        t = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(n)))
        return time.perf_counter() - t


def loads(page_url: str, count: int) -> list[dict[str, float]]:
    from playwright.sync_api import sync_playwright

    out = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        for _ in range(count):
            context = browser.new_context()  # a cold tab each time (no cache)
            page = context.new_page()
            t = time.perf_counter()
            page.goto(page_url)
            page.wait_for_selector("#rows tr", timeout=60_000)
            rows_ms = (time.perf_counter() - t) * 1000
            fcp = page.evaluate("performance.getEntriesByName('first-contentful-paint')[0]?.startTime ?? null")
            out.append({"fcp_ms": fcp, "rows_ms": rows_ms, "rows": page.locator("#rows tr").count()})
            context.close()
        browser.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--loads", type=int, default=5)
    args = p.parse_args()
    stack = Stack(0, 1, keep=False)
    stack.up()
    web = None
    try:
        submit_s = asyncio.run(submit(stack.url, args.n))
        port = free_port()
        env = {**os.environ, "INCL_HOME": str(stack.home)}
        web = subprocess.Popen([sys.executable, "-m", "incl.web", "--nats", stack.url, "--port", str(port)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_port(port, 30):
            raise RuntimeError("the web server did not start")
        runs = loads(f"http://127.0.0.1:{port}/jobs", args.loads)
        fcp = [r["fcp_ms"] for r in runs if r["fcp_ms"] is not None]
        print(json.dumps({"jobs": args.n, "submit_s": round(submit_s, 1), "runs": runs,
                          "fcp_ms_median": statistics.median(fcp) if fcp else None,
                          "rows_ms_median": statistics.median(r["rows_ms"] for r in runs)}))
    finally:
        if web is not None:
            web.terminate()
            web.wait(10)
        stack.down()


if __name__ == "__main__":
    main()
