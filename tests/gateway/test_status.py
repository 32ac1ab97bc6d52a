"""The one uplink tracker behind the board, the feed, /health, /metrics and the status line."""

from __future__ import annotations

from gateway.status import UplinkTracker

START = 1_800_000_000.0


def sample(tracker: UplinkTracker, t: float, *, state: str, error: str | None = None,
           delivered: int = 0, depth: int = 0):
    stats = {"state": state, "connected": state == "connected", "since": START + t,
             "last_error": error}
    return tracker.observe(stats, delivered_seq=delivered, depth=depth, now=t, wall=START + t)


def test_never_connected_is_down_since_start_with_a_reason_and_since_does_not_move():
    tracker = UplinkTracker(START)
    first = sample(tracker, 0.1, state="connecting")
    assert (first.state, first.connected, first.since) == ("down", False, START)
    assert first.reason == "never connected since start: connecting"
    # Every retry changes the task's own state and `since`; the outage began at start.
    for t, state in ((1.0, "backoff"), (2.0, "connecting"), (3.0, "backoff")):
        view = sample(tracker, t, state=state, error="connection refused")
        assert (view.state, view.since) == ("down", START)
        assert view.reason == "never connected since start: connection refused"


def test_down_after_up_starts_when_the_connection_is_lost():
    tracker = UplinkTracker(START)
    up = sample(tracker, 1.0, state="connected")
    assert (up.state, up.connected, up.since) == ("up", True, START + 1.0)
    down = sample(tracker, 50.0, state="backoff", error="connection closed: 1006")
    assert (down.state, down.since, down.reason) == ("down", START + 50.0,
                                                     "connection closed: 1006")
    again = sample(tracker, 60.0, state="connecting", error="connection closed: 1006")
    assert again.since == START + 50.0


def test_a_frozen_platform_is_reported_within_the_limit_and_recovers():
    tracker = UplinkTracker(START, frozen_after_s=10.0)
    sample(tracker, 0.0, state="connected", delivered=5, depth=0)
    # Events wait from t=1 and nothing is acknowledged any more; sampled once a second.
    seen = None
    for t in range(1, 30):
        view = sample(tracker, float(t), state="connected", delivered=5, depth=t)
        if view.state == "frozen":
            seen = t
            break
    assert seen is not None and seen - 1 <= 11, seen
    assert view.connected is False and "acknowledged nothing" in view.reason
    assert view.since == START + 1.0
    # An acknowledgement arrives: up again, from now.
    back = sample(tracker, 40.0, state="connected", delivered=9, depth=3)
    assert (back.state, back.connected, back.since) == ("up", True, START + 40.0)


def test_a_quiet_floor_is_not_frozen():
    tracker = UplinkTracker(START, frozen_after_s=10.0)
    for t in range(0, 60):
        view = sample(tracker, float(t), state="connected", delivered=5, depth=0)
    assert view.state == "up"


def test_no_uplink_is_unknown():
    view = UplinkTracker(START).observe({}, delivered_seq=0, depth=0, now=0.0, wall=START)
    assert (view.state, view.connected) == ("unknown", None) and view.reason


def test_a_connection_between_samples_still_counts():
    tracker = UplinkTracker(START)
    sample(tracker, 0.1, state="connecting")
    stats = {"state": "backoff", "connected": False, "since": START + 2, "reconnects": 1,
             "last_error": "connection closed: 1006"}
    view = tracker.observe(stats, delivered_seq=0, depth=0, now=2.0, wall=START + 2.0)
    assert (view.state, view.reason) == ("down", "connection closed: 1006")
