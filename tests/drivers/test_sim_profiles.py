"""The simulator's play profiles: "floor" raises alerts at the stated per-machine-hour rates
(drivers/sim/machine.py FLOOR_RATES_PER_HOUR), "storm" many times more, for load tests."""

from __future__ import annotations

from collections import Counter

import pytest

from drivers.sas.codes import Exc
from drivers.sim.machine import FLOOR_RATES_PER_HOUR, PlayModel

DOORS = {0x11, 0x13, 0x15, 0x19, 0x1D}
TILTS = {0x20, 0x2B, 0x60, 0x61, 0x3B}


def per_hour(profile: str, hours: float, rate: float, machines: int = 20) -> Counter:
    counts: Counter = Counter()
    for n in range(machines):
        model = PlayModel(n, rate, profile=profile)
        for code, _ in model.advance(hours * 3600, rte=True):
            if code in DOORS:
                counts["door"] += 1
            elif code == Exc.BILL_JAM:
                counts["bill_jam"] += 1
            elif code in TILTS:
                counts["tilt"] += 1
            elif code == Exc.HANDPAY_PENDING:
                counts["handpay"] += 1
            elif code in (Exc.GAME_STARTED, Exc.BILL_ACCEPTED):
                counts["play"] += 1
    return Counter({k: v / (hours * machines) for k, v in counts.items()})


def test_floor_profile_raises_alerts_at_the_stated_rates():
    # Alert rates do not depend on the play rate: a slow one keeps the test short.
    rates = per_hour("floor", hours=60, rate=0.05)
    for kind, expected in FLOOR_RATES_PER_HOUR.items():
        assert rates[kind] == pytest.approx(expected, rel=0.35), (kind, rates[kind])
    assert rates["play"] > 150, "the machines still play at the play rate"


def test_storm_profile_is_the_load_test_one():
    rates = per_hour("storm", hours=0.25, rate=2.0, machines=10)
    assert 200 < rates["tilt"] + rates["bill_jam"] < 400   # ~290 an hour at 2 events/s
    assert rates["handpay"] > 100


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="profile"):
        PlayModel(1, 2.0, profile="calm")
