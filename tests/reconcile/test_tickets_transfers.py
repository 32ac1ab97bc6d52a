"""Tickets, cancelled credits, handpays and electronic transfers against their meters (issue 21,
Table C-7 03, 04, 11-18): the simulator keeps them honestly (a cash-out ticket moves 04, 12 and
16 with exception 3D), a lie about each is reported within two reads naming meter and amount,
and a machine that keeps no transfer meters is named as unable to reconcile them."""

from __future__ import annotations

import pytest

from bench.reconcile_sim import SimRun
from drivers.sas.codes import Exc
from drivers.sas.host import HostConfig
from drivers.sim.egm import PROFILES, SasEgm
from drivers.sim.faults import LINE_FAULTS, FaultPlan
from drivers.sim.ledger import Ledger
from drivers.sim.machine import PlayModel
from tests.reconcile.test_sim_lies import _first_discrepancy, _oracle_clean, _reads_between

_TICKET_METERS = {"tickets_out_cashable", "ticket_out_credits", "cancelled_credits"}


def _run(*, rte: bool = True, asset: int | None = 0, faults: frozenset[str] = frozenset(),
         profile: str = "default", mode: str = "6F") -> SimRun:
    # Bills and games at 0.5 a second, a ticket out whenever the credit meter reaches $20.
    egm = SasEgm(1, Ledger(), play=PlayModel(7, 0.5, cashout_credits=2000, profile="floor"), serial="T1",
                 profile=PROFILES[profile], asset=asset, faults=FaultPlan(faults, 0.02, seed=7))
    return SimRun([egm], HostConfig(rte=rte, meters_every_s=5.0, meter_polls=mode))


def _tickets(run: SimRun) -> list[int]:
    return [i for i, e in enumerate(run.recorded, 1) if e.type == "ticketPrinted"]


@pytest.mark.parametrize("rte", [True, False])
def test_tickets_out_reconcile_with_their_meters(rte: bool) -> None:
    # No silences or power cuts here: a 6F met with silence makes the host read LP 1C + 0F +
    # 1E from then on, which have no ticket meters (the last test).
    run = _run(rte=rte, faults=frozenset(LINE_FAULTS) - {"silence"} | {"duplicate"})
    run.run_until(400.0)
    assert run.host.statistics()[1]["meter_polls"] == "6F"
    assert len(_tickets(run)) >= 5
    moved = [v.data["deltas"] for v in run.verdicts if v.type == "meterReconciled"]
    assert sum(d.get("tickets_out_cashable", 0) for d in moved) >= 5
    assert sum(d.get("ticket_out_credits", 0) for d in moved) >= 5 * 2000
    if _oracle_clean(run):
        assert [v.data for v in run.discrepancies()] == []


@pytest.mark.parametrize("rte", [True, False])
def test_a_swallowed_ticket_is_reported_with_meter_and_amount(rte: bool) -> None:
    run = _run(rte=rte)
    run.run_until(20.0)
    egm = run.egms[0]
    egm.lies.swallow[Exc.CASHOUT_TICKET_PRINTED] = 1
    run.run_until(200.0)
    [(when, _)] = egm.lies.told
    d = _first_discrepancy(run, "tickets_out_cashable")
    assert (d["difference"], d["cause"], d["expected_max"]) == (1, "eventsMissing", 0)
    amount = _first_discrepancy(run, "ticket_out_credits")
    assert amount["seen"] >= 2000 and amount["to_seq"] == d["to_seq"]
    assert _reads_between(run, when, d["to_seq"]) <= 2  # type: ignore[arg-type]
    assert {v.data["meter"] for v in run.discrepancies()} == _TICKET_METERS


@pytest.mark.parametrize("meter", ["ticket_in_credits", "tickets_in_restricted",
                                   "handpaid_cancelled_credits", "transfers_to_machine_credits",
                                   "transfers_to_host_credits"])
def test_a_meter_moved_without_its_event(meter: str) -> None:
    run = _run()
    run.run_until(30.0)
    run.egms[0].lies.offset[meter] = 300
    when = run.now
    run.run_until(60.0)
    d = _first_discrepancy(run, meter)
    assert (d["difference"], d["cause"], d["expected_max"]) == (300, "eventsMissing", 0)
    assert _reads_between(run, when, d["to_seq"]) <= 2  # type: ignore[arg-type]
    assert [v.data["meter"] for v in run.discrepancies()] == [meter]


@pytest.mark.parametrize(("asset", "mode", "unreported"), [
    (None, "6F", {"transfers_to_machine_credits", "transfers_to_host_credits"}),
    (0, "6F", set()),
    (0, "1C", {"handpaid_cancelled_credits", "tickets_in_cashable", "tickets_out_cashable",
               "ticket_out_credits", "transfers_to_host_credits", "games_lost", "bills_2"}),
])
def test_a_window_names_the_figures_the_machine_could_not_report(
        asset: int | None, mode: str, unreported: set[str]) -> None:
    run = _run(asset=asset, mode=mode)
    run.run_until(60.0)
    windows = [v.data for v in run.verdicts if v.type == "meterReconciled"]
    assert len(windows) >= 5 and run.discrepancies() == []
    for w in windows:
        assert unreported <= set(w["unreported"])
        if not unreported:
            assert w["unreported"] == []


def test_a_genuine_repeat_after_a_cashout_keeps_the_credit_meter_at_zero() -> None:
    """The long run once stopped on it: a game, the ticket for every credit, then the game's 7E
    repeated (the `duplicate` fault) took the credit meter below zero."""
    play = PlayModel(1, 0.5, cashout_credits=1)
    play.credits = 3
    while True:
        out = play.advance(play.due() or 0.0, rte=True)
        started = [d for c, d in out if c == Exc.GAME_STARTED]
        if started and (Exc.CASHOUT_TICKET_PRINTED, b"") in out:
            break
        play.credits = 3
    assert play.credits == 0
    play.repeat(Exc.GAME_STARTED, started[0])
    assert play.credits == 0 and play.meters()["games_played"] >= 2
