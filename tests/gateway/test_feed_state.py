"""The alert board is a pure function of the event stream: feed it envelopes, read the board."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.feed.state import AlertBoard


def env(seq: int, event: str, data: dict[str, Any] | None = None, *, port: str | None = "p1",
        address: int = 1) -> dict[str, Any]:
    machine = {"port": port, "address": address, "serial": None, "asset": None} if port else None
    return {"seq": seq, "event": event, "channel": "alerts", "machine": machine,
            "timestamp": f"2026-11-21T06:00:{seq:02d}.000Z", "data": data or {},
            "hash": b"\x00" * 32}


def kinds(board: AlertBoard) -> list[tuple[int, str, str | None]]:
    return [(a.seq, a.kind, a.machine) for a in board.alerts]


def test_handpay_open_until_reset_of_the_same_machine():
    board = AlertBoard()
    assert board.apply(env(1, "handpayPending", {"amount": {"minor": 120000, "currency": "USD"}}))
    assert board.apply(env(2, "handpayPending", port="p2"))
    assert not board.apply(env(3, "handpayReset", port="p3"))
    assert board.apply(env(4, "handpayReset"))
    assert kinds(board) == [(2, "handpay", "p2/1")]


def test_door_closes_only_for_the_same_machine_and_door():
    board = AlertBoard()
    board.apply(env(1, "doorOpened", {"door": "main"}))
    board.apply(env(2, "doorOpened", {"door": "drop"}))
    assert not board.apply(env(3, "doorOpened", {"door": "main"})), "a repeat is the same alert"
    assert not board.apply(env(4, "doorClosed", {"door": "main"}, port="p2"))
    assert board.apply(env(5, "doorClosed", {"door": "main"}))
    assert kinds(board) == [(2, "door", "p1/1")]


def test_tilt_and_overflow_stay_until_acknowledged():
    board = AlertBoard()
    board.apply(env(1, "tilt", {"kind": "reel"}))
    board.apply(env(2, "bufferOverflow"))
    board.apply(env(3, "betPlaced"))
    assert kinds(board) == [(2, "bufferOverflow", "p1/1"), (1, "tilt", "p1/1")]
    assert board.apply(env(4, "alertAcknowledged", {"alert_seq": 1, "by": "ann"}))
    assert board.apply(env(5, "alertAcknowledged", {"alert_seq": 2, "by": "ann"}))
    assert board.alerts == []


def test_acknowledged_handpay_stays_open_and_says_by_whom():
    board = AlertBoard()
    board.apply(env(1, "handpayPending"))
    assert board.ack_refusal(1) is None
    board.apply(env(2, "alertAcknowledged", {"alert_seq": 1, "by": "ann", "note": "on my way"}))
    (alert,) = board.alerts
    assert (alert.acknowledged_by, alert.ack_note) == ("ann", "on my way")
    assert alert.acknowledged_at == "2026-11-21T06:00:02.000Z"
    assert board.ack_refusal(1) == "already acknowledged by ann"
    assert board.ack_refusal(99) == "no open alert has that seq"
    assert not board.apply(env(3, "alertAcknowledged", {"alert_seq": 99, "by": "ann"}))


def test_offline_until_online_and_uplink_status():
    board = AlertBoard()
    board.apply(env(1, "deviceOffline"))
    assert not board.apply(env(2, "deviceOffline")), "still the same outage"
    assert board.apply(env(3, "uplinkDown", {"reason": "timeout"}, port=None))
    assert not board.apply(env(4, "uplinkDown", {"reason": "again"}, port=None))
    snap = board.snapshot()
    assert snap["uplink"] == {"connected": False, "since": "2026-11-21T06:00:03.000Z",
                              "reason": "timeout"}
    assert [a["kind"] for a in snap["alerts"]] == ["offline"]
    board.apply(env(5, "deviceOnline"))
    board.apply(env(6, "uplinkUp", {"down_for_s": 3.0}, port=None))
    assert board.snapshot() == {"seq": 6, "alerts": [], "uplink": {
        "connected": True, "since": "2026-11-21T06:00:06.000Z", "reason": None}}


def test_replayed_envelopes_are_ignored():
    board = AlertBoard()
    board.apply(env(5, "tilt", {"kind": "x"}))
    assert not board.apply(env(5, "tilt", {"kind": "x"}))
    assert not board.apply(env(4, "handpayPending"))
    assert len(board.alerts) == 1


def test_snapshot_lists_newest_first_with_everything_a_page_needs():
    board = AlertBoard()
    for seq, event in enumerate(["handpayPending", "tilt", "deviceOffline"], start=1):
        board.apply(env(seq, event, {"kind": "k"} if event == "tilt" else {}, address=seq))
    alerts = board.snapshot()["alerts"]
    assert [a["seq"] for a in alerts] == [3, 2, 1]
    assert set(alerts[0]) == {"seq", "kind", "event", "machine", "machine_info", "opened", "data",
                              "acknowledged_by", "acknowledged_at", "ack_note"}
    assert alerts[0]["machine"] == "p1/3"


def test_pure_modules_import_no_io():
    # gateway.events pulls in drivers.base (which imports trio for its types), so the check is on
    # what the pure modules themselves import, as house-style 3.1 asks.
    import ast

    import gateway.feed.protocol
    import gateway.feed.state

    for module in (gateway.feed.state, gateway.feed.protocol):
        tree = ast.parse(Path(module.__file__).read_text())
        names = {alias.name.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module.split(".")[0] for node in ast.walk(tree)
                  if isinstance(node, ast.ImportFrom) and node.module}
        assert not names & {"trio", "trio_websocket", "socket", "sqlite3", "h11", "ssl"}, module
