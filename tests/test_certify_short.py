"""The certification run, short version (about two minutes): bench/certify.py --short.

Runs the real processes (receiver, simulator on ptys, gateway) through every scenario and checks
the JSON report: no loss, no chain break (outbox and receiver copy), no receiver error, no
scenario FAILED. Duplicates must be zero in every scenario except two known ones, which are
reported but do not fail this test (see docs/certification.md, "Known issues"):
  * the gateway SIGKILL loop: a re-sent exception recorded twice was an open bug until the
    poll-journal counter (docs/sas.md "Restart safety"; 0 in 200- and 240-kill runs since);
  * serial faults: an exception a machine re-sends after a power cycle that fell between its
    answer and the implied ACK is recorded again; certify.py classifies each such record
    (`resent_after_outage`) and fails the scenario on any duplicate it cannot classify. When
    they occur this test ends as XFAIL (after every other assertion passed), so CI shows it.
certify.py itself exits 3 whenever a known-issue duplicate occurred, 1 on any failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KNOWN_DUPLICATES = {"sigkill", "serial_faults"}


# Not marked slow on purpose: the default suite (and so .ci/run) runs it, in about two minutes.
def test_certify_short(tmp_path: Path):
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "certify.py"), "--short",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=420)
    print(done.stdout[-6000:])
    print(done.stderr[-3000:], file=sys.stderr)
    report = json.loads((out / "report.json").read_text())
    ran = [r for r in report["scenarios"] if r["status"] != "not run"]
    assert ran, "no scenario ran"
    for r in report["scenarios"]:
        assert r["status"] != "FAILED", (r["name"], r.get("reason"))
    for r in ran:
        cons = r["conservation"]
        assert r["losses"] == 0, (r["name"], cons["per_machine"])
        assert cons["unexplained_losses"] == 0, r["name"]
        assert r["chain_ok"] and not r["chain_breaks"], (r["name"], r["chain_breaks"])
        assert cons["received_identical"], r["name"]
        assert r["errors"] == 0, (r["name"], cons["receiver_counters"])
        assert cons["pending"] == 0 and cons["ledger_balance"] == 0, r["name"]
        assert r["sigterm_exit_code"] == 0, r["name"]
        if r["name"] not in KNOWN_DUPLICATES:
            assert r["duplicates"] == 0, (r["name"], cons["per_machine"])
    totals = report["totals"]
    assert totals["losses"] == 0 and totals["chain_breaks"] == 0 and not totals["failed"]
    # 0: all clean; 3: the only findings are known-issue duplicates (reported).
    assert done.returncode in (0, 3), done.returncode
    known = {r["name"]: r["reason"] for r in ran if r["status"] == "KNOWN ISSUE"}
    assert set(known) <= KNOWN_DUPLICATES, known
    assert (done.returncode == 3) == bool(known)
    if "serial_faults" in known:
        pytest.xfail(f"known issue, serial_faults: {known['serial_faults']}")
