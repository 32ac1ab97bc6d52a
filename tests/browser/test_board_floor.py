"""The alert board on a busy floor in headless Chromium (Playwright, Debian's chromium): taps
acknowledge exactly the alert under the finger, and each state the floor meets (busy, tablet,
phone, platform down, gateway down, too many failed logins) is asserted in the DOM and saved as
a screenshot in test-output/.

The tap test runs the full 60 s acceptance run (BOARD_TAP_SECONDS to change it; the test takes
about 75 s in all); bench/board_taps.py is the same harness from the command line.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from .live import OUTPUT, BusyFloor, LiveFeed
from .taps import RECORD_TAPS, tap_like_a_person

TAP_SECONDS = float(os.environ.get("BOARD_TAP_SECONDS", "60"))


def log_in(page, url: str, token: str = "attendant-token") -> None:
    page.goto(url)
    page.fill("#token", token)
    page.click("#login-form button")


def shot(page, name: str) -> Path:
    OUTPUT.mkdir(exist_ok=True)
    path = OUTPUT / name
    page.screenshot(path=str(path))
    return path


def test_taps_on_a_busy_board_acknowledge_exactly_the_alert_under_the_pointer(browser, tmp_path):
    floor = BusyFloor(machines=160, opens_per_s=6, closes_per_s=3)
    with LiveFeed(tmp_path) as live:
        live.preload(floor, 520)
        page = browser.new_page(viewport={"width": 800, "height": 1280})
        page.add_init_script(RECORD_TAPS)
        log_in(page, live.url)
        page.wait_for_function("() => document.querySelectorAll('.tile').length >= 100")
        open_at_start = len(live.server.board.alerts)
        with live.busy(floor):
            started = floor.opened
            began = time.monotonic()
            report = tap_like_a_person(page, TAP_SECONDS)
            rate = (floor.opened - started) / (time.monotonic() - began)
        open_now = len(live.server.board.alerts)
    acked = [seq for seq, by in live.acks]
    print(f"\n{report.line()}; new alerts {rate:.1f}/s for {TAP_SECONDS:.0f} s, open "
          f"{open_at_start} at the start, {open_now} at the end")
    assert rate >= 5 and min(open_at_start, open_now) >= 500, (rate, open_at_start, open_now)
    assert report.taps >= TAP_SECONDS * 0.6, report.line()
    # Every acknowledgement is of the alert under the pointer, and no other was acknowledged.
    assert report.wrong == 0, report.line()
    assert acked == [a["under"] for a in report.acked]
    assert all(a["named"] == a["under"] for a in report.acked)
    # No tap is refused for a change that leaves the alert it names in place: the only
    # refusal is an alert its machine cleared before the tap was taken (none of this floor's
    # closes are aimed at it; a few can hit it by chance).
    assert set(report.refused) <= {"alert gone"}, report.line()
    assert not report.gateway_refused, report.line()
    assert report.acked_as_tapped + report.gone == report.taps, report.line()
    assert report.gone <= max(2, report.taps // 50), report.line()
    # No tile moved between reading it and tapping it.
    assert report.moved_before_tap == 0
    assert all(by == "ann" for _, by in live.acks)
