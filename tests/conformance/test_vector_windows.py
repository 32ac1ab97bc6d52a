"""The vectors' meter windows and verdicts are what the reconciler itself makes from the
vectors' own events (docs/reconciliation.md): causal (each window's seqs come before its
verdict), the day close after the day start, the machine's identity consistent."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from gateway.reconcile import Observation, Reconciler
from gateway.uplink import vectors

V = json.loads(vectors.VECTORS_PATH.read_text())
VERDICTS = ("meterReconciled", "meterDiscrepancy", "gamingDayClosed")


def _driver_data(env: dict[str, Any]) -> dict[str, Any]:
    """The data the reconciler is fed (capture.py passes the driver's: money in cents)."""
    data = dict(env["data"])
    if "amount" in data:
        data["amount_cents"] = data.pop("amount")["minor"]
    if "denomination" in data:
        data["denomination_cents"] = data.pop("denomination")["minor"]
    return data


def test_the_reconciler_makes_the_vectors_verdicts() -> None:
    reconciler, made, shipped = Reconciler(), [], []
    for entry in V["chain"]:
        env = entry["envelope"]
        if env["event"] in VERDICTS:
            shipped.append((env["event"], env["data"], env["seq"]))
            continue
        if env["machine"] is None:
            continue
        at = dt.datetime.fromisoformat(env["timestamp"].replace("Z", "+00:00")).timestamp()
        key = f"{env['machine']['port']}/{env['machine']['address']}"
        for verdict in reconciler.observe(Observation(
                key, env["event"], _driver_data(env), exception=env["event"] != "meterSnapshot",
                seq=env["seq"], at=at)):
            made.append((verdict.type, verdict.data))
    assert [(t, d) for t, d, _ in shipped] == made
    for _, data, seq in shipped:
        assert all(data.get(k) is None or data[k] < seq for k in ("from_seq", "to_seq"))


def test_the_replaced_machine_is_the_one_before_it() -> None:
    chain = V["chain"]
    replaced = next(e for e in chain if e["event"] == "machineReplaced")
    before = [e["envelope"]["machine"] for e in chain
              if e["seq"] < replaced["seq"] and e["envelope"]["machine"]]
    data, now = replaced["envelope"]["data"], replaced["envelope"]["machine"]
    assert {(m["serial"], m["asset"]) for m in before} == {(data["previous_serial"],
                                                           data["previous_asset"])}
    assert (now["serial"], now["asset"]) != (data["previous_serial"], data["previous_asset"])
