"""Durability for real: the gateway process is SIGKILLed at random points during a storm.

The harness lives in bench/crash_loop.py (200 kills there); CI runs 20. It checks that every
exception a machine saw acknowledged is in the outbox exactly once, the chain verifies after
every kill and at the end, the receiver holds every event exactly once and byte for byte, losses
by machine queue overflow are explained by exception 70, and SIGTERM exits 0 within 5 s.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))

from crash_loop import run_crash_loop


def test_sigkill_loop_loses_nothing(tmp_path: Path):
    result = run_crash_loop(tmp_path, kills=20, machines=3, rate=10.0, seed=20261121)
    print(result)
    assert result["chain_ok"], result["chain_breaks"]
    assert result["lost_acknowledged"] == 0
    assert result["unexplained_losses"] == 0
    assert result["duplicated"] == 0
    assert result["received_identical"] and result["received"] == result["outbox_events"] > 0
    assert result["pending"] == 0
    assert result["sigterm_exit_code"] == 0 and result["sigterm_stop_s"] < 5
