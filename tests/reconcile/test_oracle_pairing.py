"""The long run's 40 "false" discrepancies on `silence_fresh` machines (issue 21) were true: an
RTE event lost on the line (docs/sas.md, "Residual risk" 2) and, later, a data-less exception
recorded twice after a power cycle (normal mode again, so it came bare). The oracle paired the
second bare record with the lost entry, which it can never be (that entry never went out bare),
and so called the machine clean. A bare record pairs only with an entry that went out bare."""

from __future__ import annotations

from bench.reconcile_sim import SimRun
from drivers.sas.codes import Exc
from drivers.sas.host import HostConfig
from drivers.sim.egm import PROFILES, SasEgm
from drivers.sim.faults import LINE_FAULTS, FaultPlan
from drivers.sim.ledger import Ledger
from drivers.sim.machine import PlayModel
from drivers.sim.oracle import judge

_LOST = bytes.fromhex("0001000002410000")  # game 89 of the seeded run below: its 7E data


def test_a_bare_record_never_pairs_with_an_entry_that_only_went_out_with_data() -> None:
    ledger = Ledger()
    lost = ledger.raised(Exc.GAME_STARTED, _LOST, 1.0)
    lost.sent = 1  # an RTE frame, lost on the line, then acknowledged by another poll
    ledger.acknowledge(lost, 2.0)
    later = ledger.raised(Exc.GAME_STARTED, bytes(8), 3.0)
    later.sent = later.sent_bare = 1  # normal mode after a power cycle: the code alone
    ledger.acknowledge(later, 4.0)
    v = judge(ledger.entries, [(Exc.GAME_STARTED, b""), (Exc.GAME_STARTED, b"")])
    assert (v.missing, v.duplicates_dataless, v.invented) == (1, 1, 0)
    assert not v.ok


def test_bare_records_still_pair_with_entries_that_went_out_bare() -> None:
    ledger = Ledger()
    for t in (1.0, 3.0):
        e = ledger.raised(Exc.GAME_STARTED, bytes([int(t)] * 8), t)
        e.sent = e.sent_bare = 1
        ledger.acknowledge(e, t + 1)
    v = judge(ledger.entries, [(Exc.GAME_STARTED, b""), (Exc.GAME_STARTED, b"")])
    assert (v.missing, v.duplicates_dataless, v.invented) == (0, 0, 0) and v.ok


def test_the_seeded_silence_fresh_run_is_dirty_where_it_shows_discrepancies() -> None:
    """Seed 14 of the long run's shape, one `silence_fresh` machine, RTE, LP 1C reads: the
    reconciler reports games_played +1 and -1; the ledger must show why (a loss and a bare
    duplicate), so the bench counts both as true."""
    egm = SasEgm(3, Ledger(), play=PlayModel(1403, 0.03, profile="floor"), serial="R14-3",
                 profile=PROFILES["silence_fresh"],
                 faults=FaultPlan(frozenset(LINE_FAULTS) | {"power", "duplicate"}, 0.005,
                                  seed=1403))
    run = SimRun([egm], HostConfig(rte=True, meter_polls="1C", poll_interval_s=3.0,
                                   meters_every_s=60.0))
    run.run_until(2 * 3600)
    found = [(v.data["meter"], v.data["difference"], v.data["cause"])
             for v in run.discrepancies() if v.data["meter"] == "games_played"]
    assert found == [("games_played", 1, "eventsMissing"), ("games_played", -1, "eventsExtra")]
    recorded = [(e.source.code, e.source.payload) for e in run.recorded if e.source is not None]
    assert _LOST not in {p for _, p in recorded}
    v = judge(egm.ledger.entries, recorded, 0, lone_bytes=egm.ledger.lone_bytes)
    assert v.missing >= 1 and v.duplicates_dataless >= 1


def test_a_snapshot_is_not_released_on_the_first_silence_of_an_rte_gp() -> None:
    """Segment 472 of the long run: a machine back from a power cycle, RTE mode set again, its
    queue holding 18, 17 and a 7F the read had counted; the first GP's answer (18) was lost on
    the line. Released on that one silence, the 7F came one read late: games_lost +1, then -1.
    A silent GP is "no activity" only once its repeat is silent too (the repeat re-sends a lost
    event answer)."""
    from bench.reconcile_long import segments
    from bench.reconcile_sim import run_segment

    result = run_segment(segments(10_000, 5, 0.005, 0.03, 3.0)[472])
    assert [v.data for v in result.false_discrepancies] == []
