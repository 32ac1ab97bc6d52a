"""Tapping the board the way a person does, shared by the CI test and bench/board_taps.py.

A person reads a tile (which alert, where its Acknowledge button is), takes 150-300 ms to move
a finger there, taps that point, reads the confirmation and taps "Yes". The page records, at
pointerdown, which tile's alert was under the pointer; the gateway records which alert was
acknowledged. Every acknowledgement must be of the alert that was under the pointer.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

# Installed before the page's own scripts: what was under the pointer at each pointerdown.
RECORD_TAPS = """
window.__taps = [];
document.addEventListener('pointerdown', (event) => {
  const hit = document.elementFromPoint(event.clientX, event.clientY);
  const tile = hit && hit.closest('.tile');
  window.__taps.push({alert: tile && tile.dataset.alert ? Number(tile.dataset.alert) : null,
                      machine: tile ? tile.dataset.machine : null,
                      button: Boolean(hit && hit.closest('.ack-button')), at: Date.now()});
}, true);
"""

# A tile a person could tap now: its Acknowledge button fully on screen and not covered.
PICK = """(r) => {
  const buttons = [...document.querySelectorAll('.tile .ack-button')].filter((b) => {
    if (b.hidden || b.disabled || b.classList.contains('inert') || b.closest('.tile').hidden) {
      return false;
    }
    const rc = b.getBoundingClientRect();
    const x = rc.left + rc.width / 2, y = rc.top + rc.height / 2;
    return rc.top > 70 && rc.bottom < innerHeight - 120 && document.elementFromPoint(x, y) === b;
  });
  if (!buttons.length) return null;
  const b = buttons[Math.floor(r * buttons.length)];
  const rc = b.getBoundingClientRect();
  return {alert: Number(b.closest('.tile').dataset.alert),
          machine: b.closest('.tile').dataset.machine, x: rc.left + rc.width / 2,
          y: rc.top + rc.height / 2};
}"""

# Resolves once the page has not scrolled for a few animation frames (wheel scrolling is smooth).
SCROLL_SETTLED = """() => new Promise((resolve) => {
  let last = -1, still = 0;
  const frame = () => {
    still = window.scrollY === last ? still + 1 : 0;
    last = window.scrollY;
    if (still >= 5) resolve(true); else requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
})"""

OUTCOME = """(before) => {
  const box = document.getElementById('confirm');
  if (!box.hidden && !document.getElementById('confirm-yes').disabled) return 'confirm';
  if (Number(document.body.dataset.refused || 0) > before) return 'refused';
  return null;
}"""


@dataclass
class TapReport:
    taps: int = 0
    acked: list[dict[str, Any]] = field(default_factory=list)  # ok: read, under, named
    refused: dict[str, int] = field(default_factory=dict)      # by the page, by reason
    gone: int = 0                   # the machine cleared the alert before it was acknowledged
    gateway_refused: dict[str, int] = field(default_factory=dict)
    moved_before_tap: int = 0       # another machine's tile was under the pointer than read
    changed_before_tap: int = 0     # the tile read showed another alert when tapped
    warned_switched: int = 0        # confirmations that said "this tile changed just now"
    wrong_dialog: int = 0           # the confirmation named another alert than the pointer's
    scrolls: int = 0

    @property
    def acked_as_tapped(self) -> int:
        return sum(1 for a in self.acked if a["named"] == a["under"])

    @property
    def wrong(self) -> int:
        return self.wrong_dialog + sum(1 for a in self.acked if a["named"] != a["under"])

    def line(self) -> str:
        return (f"taps {self.taps} / acked-as-tapped {self.acked_as_tapped} / "
                f"refused {sum(self.refused.values())} {self.refused} / wrong {self.wrong}; "
                f"alert gone before the ack {self.gone}, gateway refused "
                f"{self.gateway_refused}, tile switched alerts between reading and tapping "
                f"{self.changed_before_tap} (warned {self.warned_switched}), tile moved "
                f"{self.moved_before_tap}, scrolls {self.scrolls}")


def center(page: Any, selector: str) -> tuple[float, float]:
    box = page.locator(selector).bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


def tap_like_a_person(page: Any, seconds: float, seed: int = 5) -> TapReport:
    rng = random.Random(seed)
    report = TapReport()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        target = page.evaluate(PICK, rng.random())
        if target is None:
            page.mouse.wheel(0, 700)
            report.scrolls += 1
            page.evaluate(SCROLL_SETTLED)  # as a person does: read once the page stops moving
            continue
        # A person's reaction time between reading the tile and the finger landing: this is
        # the behaviour under test, not a wait for something to happen.
        time.sleep(rng.uniform(0.15, 0.30))
        _tap(page, target, report)
    return report


def _tap(page: Any, target: dict[str, Any], report: TapReport) -> None:
    """One tap at the point read, then "Yes" on the confirmation, recorded in `report`."""
    refused_before = int(page.evaluate("Number(document.body.dataset.refused || 0)"))
    page.mouse.click(target["x"], target["y"])
    report.taps += 1
    under = page.evaluate("window.__taps[window.__taps.length - 1]")
    report.moved_before_tap += under["machine"] != target["machine"]
    report.changed_before_tap += under["alert"] != target["alert"]
    outcome = page.wait_for_function(OUTCOME, arg=refused_before, timeout=5000).json_value()
    if outcome == "refused":
        why = page.evaluate("document.body.dataset.refusedWhy")
        if why == "alert gone":
            report.gone += 1
        report.refused[why] = report.refused.get(why, 0) + 1
        return
    named = int(page.get_attribute("#confirm", "data-alert"))
    report.wrong_dialog += named != under["alert"]
    report.warned_switched += page.get_attribute("#confirm", "data-switched") == "true"
    # The alert can be cleared by its machine while the confirmation is open: then "Yes"
    # is disabled and says so, and the person cancels.
    if page.evaluate("!document.getElementById('confirm-yes').disabled"):
        page.mouse.click(*center(page, "#confirm-yes"))
    done = page.wait_for_function(
        "() => { const yes = document.getElementById('confirm-yes');"
        " if (document.getElementById('confirm').hidden) return 'sent';"
        " return yes.disabled && yes.textContent !== 'Sending…' ? 'cleared' : null; }",
        timeout=10000).json_value()
    if done == "cleared":
        page.click("#confirm-no")
        page.wait_for_function("() => document.getElementById('confirm').hidden")
        report.gone += 1
        return
    result = page.evaluate("JSON.parse(document.body.dataset.ackResult || 'null')")
    if result and result["seq"] == named and result["ok"]:
        report.acked.append({"read": target["alert"], "under": under["alert"], "named": named})
    elif result and result["reason"] == "no open alert has that seq":
        report.gone += 1    # cleared by its machine between "Yes" and the gateway
    else:
        reason = result["reason"] if result else "no result"
        report.gateway_refused[reason] = report.gateway_refused.get(reason, 0) + 1


def tap_acknowledge(page, tile: str) -> None:
    """Tap a tile's Acknowledge and wait for the confirmation. A tap just after the board
    re-sorted is refused ("tap again"): a person taps again, so does this."""
    for _ in range(5):
        before = int(page.evaluate("Number(document.body.dataset.refused || 0)"))
        page.locator(f"{tile} .ack-button").click()
        outcome = page.wait_for_function(
            "(before) => !document.getElementById('confirm').hidden ? 'confirm'"
            " : Number(document.body.dataset.refused || 0) > before ? 'refused' : null",
            arg=before).json_value()
        if outcome == "confirm":
            return
        # As a person would: read the toast, look again, tap again once the board is still.
        page.wait_for_function(
            "(tile) => Date.now() - Math.max(Number(document.body.dataset.sortedAt || 0),"
            " Number(document.querySelector(tile).dataset.changedAt || 0)) > 1100", arg=tile)
    raise AssertionError("every tap was refused: " + page.evaluate("document.body.dataset.refusedWhy"))
