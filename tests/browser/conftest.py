"""Fixtures for the alert board's browser tests: one headless Chromium (Debian's, driven by
Playwright) per test. Without it a test is skipped on a workstation and FAILS in CI (CI=true)."""

from __future__ import annotations

import pytest

from .live import CHROMIUM, CHROMIUM_ARGS, need_browser


@pytest.fixture
def browser():
    need_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page_problems():
    """Collects uncaught page errors and Content-Security-Policy violations of a page:
    `watch(page)` then assert `problems == []`."""
    problems: list[str] = []

    def watch(page):
        page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
        page.on("console", lambda msg: problems.append(msg.text)
                if "Content Security Policy" in msg.text or (msg.type == "error"
                and "429" not in msg.text and "WebSocket" not in msg.text
                and "Failed to load resource" not in msg.text) else None)
        return page

    watch.problems = problems  # type: ignore[attr-defined]
    return watch
