"""Where a discrepancy shows: /health degraded (one reason per machine whose latest window did
not add up, until a later window does) and /metrics gateway_meter_discrepancies_total."""

from __future__ import annotations

from gateway.monitor import HealthLimits, Monitor, assess
from gateway.reconcile import Observation, Reconciler


def _snap(r: Reconciler, bills: int, seq: int) -> None:
    r.observe(Observation("p1/1", "meterSnapshot", {"meters": {"bills_20": bills}}, seq=seq,
                          at=1765000000.0 + seq))


def test_health_and_metrics_follow_the_reconciler(make_outbox) -> None:
    r = Reconciler()
    _snap(r, 0, 1)
    _snap(r, 2, 2)  # two $20 bills, no event
    status = {"reconciliation": r.summary()}
    assert assess(status, HealthLimits(), wall=0.0) == [
        "machine p1/1: meters do not add up (bills_20); see its meterDiscrepancy"]
    monitor = Monitor(make_outbox(), lambda: status)
    try:
        text = monitor.metrics().decode()
    finally:
        monitor.close()
    assert 'gateway_meter_discrepancies_total{machine="p1/1",meter="bills_20"} 1.0' in text
    assert "gateway_health_degraded 1.0" in text
    _snap(r, 2, 3)  # the next window adds up: no longer degraded, the count stays
    status = {"reconciliation": r.summary()}
    assert assess(status, HealthLimits(), wall=0.0) == []
    assert r.summary()["discrepancies_total"] == {"p1/1": {"bills_20": 1}}
    assert r.summary()["windows"] == 2


def test_diag_names_the_machines_whose_meters_do_not_add_up() -> None:
    from gateway.diag import render_status
    from tests.gateway.test_diag import _snapshot_with

    r = Reconciler()
    _snap(r, 0, 1)
    _snap(r, 3, 2)
    status = {**_snapshot_with("x"), "reconciliation": r.summary()}
    assert render_status(status).splitlines()[-1] == \
        "meters  1 windows; p1/1 does not add up (bills_20)"
    _snap(r, 3, 3)
    status = {**_snapshot_with("x"), "reconciliation": r.summary()}
    assert render_status(status).splitlines()[-1] == "meters  2 windows; all add up"


def test_the_board_shows_a_discrepancy_until_acknowledged() -> None:
    from gateway.feed.state import AlertBoard
    from tests.gateway.test_feed_state import env, kinds

    board = AlertBoard()
    data = {"meter": "bills_20", "expected_min": 0, "expected_max": 0, "seen": 2,
            "difference": 2, "cause": "eventsMissing", "evidence": []}
    assert board.apply(env(1, "meterDiscrepancy", data))
    assert kinds(board) == [(1, "meters", "p1/1")]
    assert board.apply(env(2, "alertAcknowledged", {"alert_seq": 1, "by": "sup"}))
    assert kinds(board) == []
