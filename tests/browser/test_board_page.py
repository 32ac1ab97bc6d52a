"""The alert board page: its logic under node, and the real page in headless Chromium
(Playwright driving Debian's chromium) against a live feed server.

Node comes from the machine image; without it (or without the browser) a test is skipped on a
workstation and fails in CI (CI=true).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .live import LiveFeed
from .taps import tap_acknowledge

HERE = Path(__file__).parent
NODE = shutil.which("node")


def test_board_logic_under_node():
    if NODE is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and node is not installed")
        pytest.skip("node is not installed")
    result = subprocess.run([NODE, "--test", str(HERE / "board_core.test.js")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_page_ranks_and_names_every_kind_the_server_has():
    """board-core.js keeps its own copy of the server's severity order and a word for each kind:
    a kind added on the server (e.g. a card reader offline) must reach the page in the same place."""
    import json
    import re

    from gateway.feed.state import ALERT_KINDS, CLOSED_BY_ACK, SEVERITY

    source = (HERE.parents[1] / "gateway/feed/static/board-core.js").read_text()
    found = re.search(r"const SEVERITY = (\{[^}]*\});", source)
    assert found, "SEVERITY not found in board-core.js"
    page = json.loads(re.sub(r"(\w+):", r'"\1":', found.group(1)))
    assert page == SEVERITY
    labels = re.search(r"const KIND_LABELS = \{([^}]*)\};", source, re.S)
    assert labels and all(re.search(rf"\b{kind}:", labels.group(1)) for kind in ALERT_KINDS)
    # The confirmation says "This clears it from the board" exactly for these.
    closed = re.search(r"const CLOSED_BY_ACK = (\[[^\]]*\]);", source)
    assert closed and set(json.loads(closed.group(1))) == CLOSED_BY_ACK


def text(page, selector: str) -> str:
    return page.locator(selector).first.text_content()


def test_board_in_headless_chromium(browser, page_problems, tmp_path):
    with LiveFeed(tmp_path) as live:
        handpay = live.append("handpayPending", {"amount": {"minor": 250000, "currency": "USD"}},
                              port="bank-a-01")
        live.append("doorOpened", {"door": "main"}, port="bank-b-07")
        live.status["uplink_status"] = {"state": "down", "connected": False,
                                        "since": time.time() - 125,
                                        "reason": "platform unreachable"}
        page = page_problems(browser.new_page(viewport={"width": 1100, "height": 800}))
        page.goto(live.url)
        # Not logged in: the form shows; log in as the page's user would.
        page.wait_for_selector("#login:not([hidden])")
        page.fill("#token", "attendant-token")
        page.click("#login-form button")
        page.wait_for_function("() => document.querySelectorAll('.tile').length === 2")
        assert page.evaluate("sessionStorage.getItem('casino-feed-token')") == "attendant-token"
        assert page.locator("#login").is_hidden()
        # Plain words for the floor; the uplink's own reason only in the tooltip.
        banner = text(page, "#uplink-text")
        assert banner.startswith("Platform connection lost since ") and "(network)" in banner
        assert "2 min ago" in banner
        assert page.get_attribute("#uplink-banner", "title") == "platform unreachable"
        # One tile per machine, most severe first, in words.
        assert page.locator(".tile .machine-name").all_text_contents() == [
            "Bank A 01 \u00B7 #1", "Bank B 07 \u00B7 #1"]
        assert text(page, ".tile.kind-handpay .kind") == "HANDPAY"
        assert text(page, ".tile.kind-handpay .detail") == "2,500.00 USD"
        assert text(page, ".tile.kind-door .detail") == "Main door"
        assert page.locator(".tile .ack-button:visible").count() == 2
        assert text(page, "#status") == "Connected as ann (attendant)"

        # A new handpay is pushed at once and flashes; a tilt on the same machine adds to it.
        live.append("handpayPending", {"amount": {"minor": 120000, "currency": "USD"}},
                    port="bank-c-02")
        page.wait_for_selector('.tile[data-machine="bank-c-02/1"].kind-handpay.flash')
        live.append("tilt", {"kind": "bill_jam"}, port="bank-a-01")
        page.wait_for_function("() => document.querySelector('.tile[data-machine=\"bank-a-01/1\"]"
                               " .extra').textContent === '+ 1 more'")

        # Acknowledge the handpay: the confirmation names it; the handpay stays, marked.
        tile = '.tile[data-machine="bank-a-01/1"]'
        tap_acknowledge(page, tile)
        assert page.get_attribute("#confirm", "data-alert") == str(handpay)
        assert "HANDPAY" in text(page, "#confirm-text") and "Bank A 01" in text(
            page, "#confirm-text")
        page.locator("#confirm-yes").click()
        page.wait_for_selector("#confirm", state="hidden")
        # The tile now shows the tilt (needing action); the handpay is acknowledged, not gone.
        page.wait_for_function(f"() => document.querySelector('{tile} .kind').textContent"
                               " === 'Fault'")
        assert live.acks == [(handpay, "ann")]
        assert live.server.board.get(handpay).acknowledged_by == "ann"
        page.locator(f"{tile} .history-button").click()
        page.wait_for_function("() => document.querySelectorAll('#machine-history li').length"
                               " === 2")
        history = page.locator("#machine-history li").all_text_contents()
        assert history[0].startswith("HANDPAY: 2,500.00 USD") and "acknowledged by ann" in \
            history[0] and history[0].endswith("(open)")
        page.click("#machine-close")

        # The uplink comes back: the banner goes.
        live.status["uplink_status"] = {"state": "up", "connected": True,
                                        "since": time.time(), "reason": "connected"}
        page.wait_for_selector("#uplink-banner", state="hidden")

        # The feed restarts: the page says so over the whole page, reconnects by itself, and
        # resyncs what happened meanwhile.
        live.stop_feed()
        page.wait_for_selector("#unreachable:not([hidden])")
        assert page.locator(".tile .ack-button:visible").first.is_disabled()
        live.append("deviceOffline", port="bank-d-04")
        live.start_feed()
        page.wait_for_selector('.tile.kind-offline[data-machine="bank-d-04/1"]', timeout=45000)
        page.wait_for_selector("#unreachable", state="hidden")
        assert text(page, "#status") == "Connected as ann (attendant)"
        assert page_problems.problems == []


def test_the_confirmation_says_whether_acknowledging_clears_the_alert(browser, tmp_path):
    """Only a fault (and events lost, meters) goes when acknowledged; a machine not responding
    stays, marked, until it answers again, and the confirmation says which."""
    with LiveFeed(tmp_path) as live:
        live.append("deviceOffline", {}, port="bank-d-04")
        live.append("tilt", {"kind": "bill_jam"}, port="bank-e-05")
        page = browser.new_page(viewport={"width": 800, "height": 1280})
        page.goto(live.url)
        page.fill("#token", "attendant-token")
        page.click("#login-form button")
        notes = {}
        for machine in ("bank-d-04/1", "bank-e-05/1"):
            tile = f'.tile[data-machine="{machine}"]'
            page.wait_for_selector(f"{tile}[data-alert]")
            tap_acknowledge(page, tile)
            notes[machine] = page.locator("#confirm-note").text_content()
            page.click("#confirm-no")
            page.wait_for_selector("#confirm", state="hidden")
        assert notes["bank-d-04/1"].endswith("until the machine answers again.")
        assert notes["bank-e-05/1"].endswith("This clears it from the board.")
        assert live.acks == []
