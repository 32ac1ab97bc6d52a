"""One short round of bench/hostile.py in CI (issue 15): a real daemon with machines and a card
reader playing gets every attack of tests/test_hostile.py plus the new boundaries -- a hostile
card reader port (garbage, huge lines, a flood through a pty), forged, borrowed and malformed
session-resume ids, and a viewer trying every way to the `player` channel. bench/hostile.py runs
the same rounds for minutes and prints the figures; its assertions are the test's.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))

import hostile


def test_one_hostile_round(tmp_path: Path) -> None:
    lines: list[str] = []
    result = hostile.run(tmp_path / "plant", minutes=0, flood_s=2.0, echo=lines.append)
    (only,) = result["rounds"]
    end = result["end"]
    assert end["lost"] == end["twice"] == 0 and end["receiver_equal"] and end["readers_ok"]
    assert end["board"].partition(";")[0] in ("ok", "degraded"), end["board"]
    assert only["sent"]["reader bytes"] > 1_000_000 and only["health_failures"] == 0
    assert only["forms_refused"] == 12 and only["attendant_player"] > 0
    # The other ports kept polling through the reader flood: a recent answer from each machine.
    assert only["machine_age_s"] < 2.0
    print("\n".join(lines))
