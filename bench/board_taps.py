"""The alert board's acceptance run: 60 s of a person tapping Acknowledge on a busy board.

    .venv/bin/python bench/board_taps.py [--seconds 60] [--opens 6]

The same harness as tests/browser/test_board_floor.py (which runs it for 60 s in CI): a feed server on a
floor of 160 machines with 520 open alerts and `--opens` new alerts a second, Debian's chromium
driven by Playwright at 800x1280. Each tap reads a tile's alert and position, waits 150-300 ms,
clicks that point with page.mouse.click, confirms, and the alert acknowledged is compared with the
one under the pointer. Prints the counts; exits 1 if any tap acknowledged another alert.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.browser.live import CHROMIUM, CHROMIUM_ARGS, BusyFloor, LiveFeed
from tests.browser.taps import RECORD_TAPS, tap_like_a_person


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--opens", type=int, default=6, help="new alerts a second")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    floor = BusyFloor(machines=160, opens_per_s=args.opens, closes_per_s=args.opens // 2)
    with tempfile.TemporaryDirectory() as tmp, LiveFeed(Path(tmp)) as live, \
            sync_playwright() as playwright:
        live.preload(floor, 520)
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 800, "height": 1280})
        page.add_init_script(RECORD_TAPS)
        page.goto(live.url)
        page.fill("#token", "attendant-token")
        page.click("#login-form button")
        page.wait_for_function("() => document.querySelectorAll('.tile').length >= 100")
        with live.busy(floor):
            started, began = floor.opened, time.monotonic()
            report = tap_like_a_person(page, args.seconds)
            elapsed = time.monotonic() - began
            opened = floor.opened - started
        open_now = len(live.server.board.alerts)
        browser.close()
    acked = [seq for seq, _ in live.acks]
    # Acknowledged at the gateway, in order, must be exactly the alerts under the pointer.
    other = int(acked != [a["under"] for a in report.acked]) + report.wrong
    print(f"{elapsed:.0f} s of taps: {report.line()}")
    print(f"new alerts {opened / elapsed:.1f}/s, open alerts at the end {open_now}")
    print(f"gateway's acknowledgements match the alerts under the pointer: {not other}")
    return 1 if other or report.moved_before_tap else 0

if __name__ == "__main__":
    sys.exit(main())
