"""What the browser tests share: headless Chromium from Debian's `chromium`, driven by Playwright (never a browser
download), one per test module, and a fresh page (context) per test. A module imports the fixtures it uses
(`from browserkit import browser, page, shots`) and may define its own `page` instead."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")


def _playwright() -> Any:
    """Playwright's sync API, or a skip (a failure with CI=true) saying what is missing."""
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (the dev extra)"
    if reason is None and not os.access(CHROMIUM, os.X_OK):
        reason = f"{CHROMIUM} is not installed (Debian's chromium: apt-get install chromium)"
    if reason is not None:
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"the browser tests cannot run: {reason}")
        pytest.skip(reason)
    return sync_playwright


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_playwright = _playwright()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    # bypass_csp: Playwright's waits evaluate script text, which the pages' policy forbids. The markup tests so
    # prove the escaping itself, not the policy behind it (whose header the API tests check).
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    p = context.new_page()
    p.set_default_timeout(15000)
    yield p
    context.close()
