"""Golden windows (tests/reconcile/golden.json): each rule of the reconciler against the meter
definitions of the SAS reference, independent of our simulator."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import Any

import pytest

from gateway.reconcile import Observation, Reconciler, Verdict

_CASES = json.loads((pathlib.Path(__file__).parent / "golden.json").read_text())["cases"]
_T0 = 1765000000


def _run(steps: list[dict[str, Any]]) -> list[Verdict]:
    r, out = Reconciler(), []
    for seq, step in enumerate(steps, 1):
        at = step.get("at", _T0 + seq)
        if "snap" in step:
            data = {"meters": step["snap"], "straddle": step.get("straddle", 0),
                    "digits": step.get("digits", {}), "denomination_cents": step.get("denom", 1)}
            obs = Observation("p/1", "meterSnapshot", data, seq=seq, at=at, machine="p/1")
        else:
            obs = Observation("p/1", step["ev"], step["data"], exception=step["exc"], seq=seq,
                              at=at)
        out += r.observe(obs)
    return out


@pytest.mark.parametrize("case", _CASES, ids=[c["name"] for c in _CASES])
def test_golden_window(case: dict[str, Any]) -> None:
    got = _run(case["steps"])
    assert len(got) == len(case["expect"]), [(v.type, v.data) for v in got]
    for verdict, want in zip(got, case["expect"], strict=True):
        assert verdict.type == want.get("type", "meterDiscrepancy")
        for key, value in want.items():
            if key == "unreported_includes":
                assert set(value) <= set(verdict.data["unreported"])
            elif key != "type":
                assert verdict.data[key] == value, (key, verdict.data)


def test_every_rule_has_a_golden_case() -> None:
    from gateway.reconcile.meters import RULES
    named = {m for c in _CASES for step in c["steps"] if "snap" in step for m in step["snap"]}
    assert {"games_played", "games_won", "games_lost", "coin_in", "coin_out", "jackpot", "drop",
            "bills_20", "cancelled_credits", "handpaid_cancelled_credits", "tickets_in_cashable",
            "tickets_in_restricted", "tickets_out_cashable", "tickets_out_restricted",
            "ticket_in_credits", "ticket_out_credits", "transfers_to_machine_credits",
            "transfers_to_host_credits"} <= named <= set(RULES)


def test_core_imports_no_trio() -> None:
    code = "import sys, gateway.reconcile; assert 'trio' not in sys.modules, 'trio imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_rules_name_the_driver_contract_meters() -> None:
    """Every rule meter but the per-denomination bill counts is a drivers.model.MeterName."""
    from gateway.reconcile.meters import NEUTRAL, RULES
    assert set(NEUTRAL) == {m for m in RULES if not m.startswith("bills_")}
