"""The short CI version of bench/reconcile_long.py: 40 simulated machine-hours (every simulator
profile, normal and RTE mode, LP 6F and 1C reads, line faults, power cycles, genuine repeats)
through the real host into the reconciler on a virtual clock -- 0 false discrepancies, and
every discrepancy the ledger does explain carries its cause with the evidence it needs."""

from __future__ import annotations

import pytest

from bench.reconcile_sim import Segment, run_segment


@pytest.mark.parametrize(("rte", "meter_polls"), [(True, "6F"), (False, "6F"), (True, "1C"),
                                                  (False, "1C")])
def test_ten_machine_hours_without_a_false_discrepancy(rte: bool, meter_polls: str) -> None:
    result = run_segment(Segment(seed=1000 + rte * 2 + (meter_polls == "1C"), hours=2.5,
                                 rte=rte, meter_polls=meter_polls, rate=0.03,
                                 poll_interval_s=3.0))
    assert result.machine_hours == 10.0
    assert result.windows >= 300 and result.day_closes == 4
    assert [v.data for v in result.false_discrepancies] == []
    assert result.unexplained == []
    assert len(result.true_discrepancies) <= result.windows // 50
