"""The corruption suite, CI sample (bench/corruption.py --sample: 12 cases, one or more of each
class, about 75 s on the loaded 2-core box): each damaged state directory gets a real daemon
(bench/daemon_case.py) that comes up, reads every row back, polls a simulated machine and
streams the new event to a reference receiver holding the platform's prior copy. Each ends with
the daemon up, 0 seqs reused, lossMarkers exactly when events are missing and counting exactly
them, and `outbox verify` OK afterwards and never OK before when something is missing.
bench/corruption.py without --sample runs every case (docs/certification.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_corruption_sample(tmp_path: Path):
    report = tmp_path / "corruption.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "corruption.py"), "--sample",
                           "--json", str(report)], cwd=ROOT, capture_output=True, text=True,
                          timeout=90)
    print(done.stdout[-4000:])
    print(done.stderr[-3000:], file=sys.stderr)
    results = json.loads(report.read_text())
    assert len(results) == 12
    assert [r["case"] for r in results if not r["ok"]] == []
    assert all(r["up"] and r["reused"] == 0 for r in results)
    assert all((r["markers"] > 0) == (r["missing"] > 0) and r["marked"] == r["missing"]
               for r in results)
    by_case = {r["case"]: r for r in results}
    assert by_case["intact"]["markers"] == 0 and by_case["intact"]["missing"] == 0
    assert by_case["flip-freelist-page"]["markers"] == 0  # free space: nothing lost, no marker
    assert by_case["flip-row-middle"]["marked"] == 1  # beyond the start-up window: read back
    # A zeroed page of delivered rows: a fresh epoch, nothing missing, announced by
    # epochStarted with no lossMarker (the daemon used to exit at its next commit).
    zeroed = by_case["zero-oldest-leaf-page-delivered"]
    assert (zeroed["missing"], zeroed["markers"], zeroed["started"]) == (0, 0, 1)
    assert by_case["restore-older-backup"]["missing"] == 140
    assert done.returncode == 0
