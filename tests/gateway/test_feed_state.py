"""The alert board is a pure function of the event stream: feed it envelopes, read the board."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.feed.state import ALERT_KINDS, OPENING_EVENTS, SEVERITY, AlertBoard


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


def test_offline_until_online_and_uplink_events_are_not_board_state():
    board = AlertBoard()
    board.apply(env(1, "deviceOffline"))
    assert not board.apply(env(2, "deviceOffline")), "still the same outage"
    # The uplink's status comes from its live state (gateway/status.py), not from the stream.
    assert not board.apply(env(3, "uplinkDown", {"reason": "timeout"}, port=None))
    snap = board.snapshot()
    assert [a["kind"] for a in snap["alerts"]] == ["offline"]
    board.apply(env(5, "deviceOnline"))
    assert board.snapshot() == {"version": 2, "seq": 5, "alerts": []}


def test_a_card_reader_offline_is_its_own_alert_on_the_machine_it_sits_beside():
    """cardReaderOffline opens "reader" (players cannot be rated) until cardReaderOnline of that
    reader; the machine's own offline alert is another thing and closes on its own."""
    board = AlertBoard()
    gone = {"reader": "reader-1", "reason": "read failed: EIO"}
    assert board.apply(env(1, "cardReaderOffline", gone))
    assert not board.apply(env(2, "cardReaderOffline", gone)), "still the same outage"
    assert board.apply(env(3, "deviceOffline"))
    assert kinds(board) == [(3, "offline", "p1/1"), (1, "reader", "p1/1")]
    assert board.apply(env(4, "alertAcknowledged", {"alert_seq": 1, "by": "ann"}))
    assert board.get(1) is not None, "acknowledged is not resolved: the reader is still gone"
    assert board.apply(env(5, "deviceOnline"))
    assert not board.apply(env(6, "cardReaderOnline", {"reader": "reader-9"}, port="p2"))
    assert kinds(board) == [(1, "reader", "p1/1")]
    assert board.apply(env(7, "cardReaderOnline", {"reader": "reader-1"}))
    assert board.alerts == []


def test_a_card_reader_ranks_below_machine_faults_above_bookkeeping():
    assert SEVERITY["tilt"] < SEVERITY["offline"] < SEVERITY["reader"] < SEVERITY["bufferOverflow"]
    assert "reader" in ALERT_KINDS and "cardReaderOffline" in OPENING_EVENTS


def test_every_change_is_a_numbered_delta():
    board = AlertBoard()
    board.apply(env(1, "handpayPending", {"amount": {"minor": 5000, "currency": "USD"}}))
    board.apply(env(2, "tilt", {"kind": "reel_tilt"}, port="p2"))
    first = [c.as_dict() for c in board.drain()]
    assert [(c["v"], c["op"], c["alert"]["seq"]) for c in first] == [
        (1, "opened", 1), (2, "opened", 2)]
    assert board.drain() == [], "drained once"
    board.apply(env(3, "tilt", {"kind": "reel_tilt"}, port="p2"))      # the same fault again
    board.apply(env(4, "alertAcknowledged", {"alert_seq": 1, "by": "ann"}))
    board.apply(env(5, "alertAcknowledged", {"alert_seq": 2, "by": "ann"}))
    board.apply(env(6, "handpayReset"))
    changes = [c.as_dict() for c in board.drain()]
    assert [(c["v"], c["op"]) for c in changes] == [
        (3, "changed"), (4, "acknowledged"), (5, "closed"), (6, "closed")]
    assert changes[0]["alert"]["count"] == 2
    assert changes[0]["alert"]["last"] == "2026-11-21T06:00:03.000Z"
    assert changes[1]["alert"]["acknowledged_by"] == "ann"
    assert changes[2] == {"v": 5, "op": "closed", "seq": 2, "machine": "p2/1",
                          "at": "2026-11-21T06:00:05.000Z"}
    assert board.version == 6 and board.snapshot()["alerts"] == []


def test_a_client_that_applies_the_deltas_has_the_snapshot():
    """The client's rule (docs/feed-protocol.md): apply changes with v above your version."""
    import random

    rng = random.Random(7)
    board = AlertBoard()
    mirror: dict[int, dict[str, Any]] = {}
    version = 0
    for seq in range(1, 400):
        event = rng.choice(["tilt", "doorOpened", "doorClosed", "handpayPending", "handpayReset",
                            "deviceOffline", "deviceOnline", "alertAcknowledged", "betPlaced"])
        data = {"kind": rng.choice(["a", "b"]), "door": "main",
                "alert_seq": rng.randrange(1, seq + 1), "by": "ann"}
        board.apply(env(seq, event, data, address=rng.randrange(1, 5)))
        if rng.random() < 0.3:
            for change in (c.as_dict() for c in board.drain()):
                assert change["v"] == version + 1, "no gap, no repeat"
                version = change["v"]
                if change["op"] == "closed":
                    mirror.pop(change["seq"], None)
                else:
                    mirror[change["alert"]["seq"]] = change["alert"]
    for change in (c.as_dict() for c in board.drain()):
        if change["op"] == "closed":
            mirror.pop(change["seq"], None)
        else:
            mirror[change["alert"]["seq"]] = change["alert"]
    assert sorted(mirror.values(), key=lambda a: -a["seq"]) == board.snapshot()["alerts"]


def test_machine_history_lists_open_then_recently_closed():
    board = AlertBoard()
    board.apply(env(1, "doorOpened", {"door": "main"}))
    board.apply(env(2, "doorClosed", {"door": "main"}))
    board.apply(env(3, "handpayPending"))
    board.apply(env(4, "tilt", {"kind": "reel_tilt"}))
    history = board.history("p1/1")
    assert [(a["seq"], a["kind"], a["closed"]) for a in history] == [
        (3, "handpay", None), (4, "tilt", None), (1, "door", "2026-11-21T06:00:02.000Z")]
    assert board.history("p9/1") == []


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
                              "acknowledged_by", "acknowledged_at", "ack_note", "count", "last"}
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


def test_a_new_epoch_starts_the_board_over():
    # After an epoch change (a rollback or a damaged outbox) seqs restart at 1: the board must
    # apply them (not take them for replays) and no new alert may take an old alert's id.
    board = AlertBoard()
    board.apply({**env(40, "doorOpened", {"door": "main"}), "epoch": "a" * 16})
    board.apply({**env(41, "tilt", {"kind": "x"}), "epoch": "a" * 16})
    board.drain()
    assert board.apply({**env(1, "lossMarker", port=None), "epoch": "b" * 16})
    assert board.alerts == [] and [c.op for c in board.drain()] == ["closed", "closed"]
    assert board.apply({**env(2, "tilt", {"kind": "y"}), "epoch": "b" * 16})
    assert kinds(board) == [(2, "tilt", "p1/1")] and board.epoch == "b" * 16
