"""The capture path: what the gateway records is shown to the reconciler, and its verdicts are
recorded right after the meter read, signed in the chain and valid against their schemas (the
autouse fixture validates every committed envelope)."""

from __future__ import annotations

import trio

from drivers.base import MachineEvent, MachineRef, SourceRef
from gateway.capture import OutboxSink
from gateway.reconcile import Reconciler

MACHINE = MachineRef("p1", 1, serial="S1")


def _snapshot(games: int, bills_20: int) -> MachineEvent:
    return MachineEvent("meterSnapshot", MACHINE, {
        "meters": {"games_played": games, "bills_20": bills_20, "drop": bills_20 * 2000},
        "denomination_cents": 1, "digits": {"games_played": 8, "bills_20": 8, "drop": 8},
        "straddle": 0})


async def test_verdicts_are_recorded_after_the_read_that_closes_the_window(make_outbox) -> None:
    outbox = make_outbox()
    committed: list = []
    outbox.commit_listeners.append(committed.extend)
    sink = OutboxSink(outbox, currency="USD", reconciler=Reconciler())
    bill = MachineEvent("billAccepted", MACHINE, {"amount_cents": 2000},
                        SourceRef("sas", 0x4A))
    game = MachineEvent("betPlaced", MACHINE, {}, SourceRef("sas", 0x7E))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            await sink.record(_snapshot(10, 3))
            await sink.record(game)
            await sink.record(bill)
            await sink.record(_snapshot(11, 4))      # adds up
            await sink.record(bill)
            await sink.record(_snapshot(11, 7))      # two $20 bills without an event
            nursery.cancel_scope.cancel()
    kinds = [(e["event"], e["seq"]) for e in committed]
    assert [k for k, _ in kinds] == [
        "meterSnapshot", "betPlaced", "billAccepted", "meterSnapshot", "meterReconciled",
        "billAccepted", "meterSnapshot", "meterDiscrepancy"]  # drop has a lower bound only
    reconciled = committed[4]["data"]
    assert (reconciled["from_seq"], reconciled["to_seq"]) == (kinds[0][1], kinds[3][1])
    assert reconciled["deltas"] == {"games_played": 1, "bills_20": 1, "drop": 2000}
    bills = committed[7]["data"]
    assert (bills["meter"], bills["difference"], bills["cause"]) == ("bills_20", 2, "eventsMissing")
    assert bills["evidence"] == [kinds[5][1]]  # the one bill recorded in that window
    assert committed[7]["channel"] == "alerts" and committed[7]["machine"]["serial"] == "S1"
    assert sink.reconciler is not None
    assert sink.reconciler.discrepancies == {("p1/1", "bills_20"): 1}
