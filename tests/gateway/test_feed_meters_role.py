"""The board's `meters` alert (a `meterDiscrepancy`, docs/reconciliation.md) is the supervisor
view (issue 21): the floor view (viewer, attendant) never gets it -- not in the welcome state,
a resync, a delta, a machine's history, nor the event itself -- and cannot acknowledge it."""

from __future__ import annotations

import json

import trio
from trio_websocket import open_websocket_url

from tests.gateway.test_feed_server import (  # noqa: F401 (start_feed: the fixture)
    auth,
    recv,
    recv_type,
    start_feed,
    subscribe,
)

_DISCREPANCY = {"meter": "bills_20", "expected_min": 0, "expected_max": 0, "seen": 2,
                "difference": 2, "cause": "eventsMissing", "evidence": [], "from_seq": 1,
                "to_seq": 2, "events": {}, "rule": "meter 44"}


async def _until_version(ws, version: int, until: int) -> tuple[list[dict], list[str]]:
    """The board's changes and the events received until the board is at version `until` (a
    flush sends its events before its delta)."""
    changes: list[dict] = []
    events: list[str] = []
    while version < until:
        message = await recv(ws)
        if message["type"] == "events":
            events += [e["event"] for e in message["events"]]
        elif message["type"] == "alerts_delta":
            assert message["base"] <= version, "no delta missed"
            changes += [c for c in message["changes"] if c["v"] > version]
            version = message["version"]
    return changes, events


async def test_only_supervisors_see_the_meters_alert(start_feed):  # noqa: F811 (the fixture)
    with trio.fail_after(20):
        feed = await start_feed()
        early = await feed.append("meterDiscrepancy", _DISCREPANCY)
        async with open_websocket_url(feed.url) as sup, open_websocket_url(feed.url) as ann:
            s_welcome = await auth(sup, "supervisor-token")
            a_welcome = await auth(ann, "attendant-token")
            assert [a["seq"] for a in s_welcome["state"]["alerts"]] == [early]
            assert a_welcome["state"]["alerts"] == []
            assert a_welcome["state"]["version"] == s_welcome["state"]["version"] == 1
            for ws in (sup, ann):
                await subscribe(ws, channels=["alerts"])
            late = await feed.append("meterDiscrepancy", _DISCREPANCY, port="p2")
            tilt = await feed.append("tilt", {"kind": "reel_tilt"}, port="p3")
            s_changes, s_events = await _until_version(sup, 1, 3)
            a_changes, a_events = await _until_version(ann, 1, 3)
            assert [c["alert"]["seq"] for c in s_changes] == [late, tilt]
            assert s_events == ["meterDiscrepancy", "tilt"]
            # The floor view's deltas keep the versions (no resync) without the meters alert.
            assert [c["alert"]["seq"] for c in a_changes] == [tilt]
            assert a_events == ["tilt"]
            await ann.send_message(json.dumps({"type": "resync"}))
            assert [a["seq"] for a in (await recv_type(ann, "alerts_snapshot"))["state"][
                "alerts"]] == [tilt]
            await ann.send_message(json.dumps({"type": "history", "machine": "p1/1"}))
            assert (await recv_type(ann, "history"))["alerts"] == []
            await ann.send_message(json.dumps({"type": "ack", "alert_seq": early, "id": "a"}))
            result = await recv_type(ann, "ack_result")
            assert (result["ok"], result["reason"]) == (False, "no open alert has that seq")
            await sup.send_message(json.dumps({"type": "history", "machine": "p1/1"}))
            assert [a["seq"] for a in (await recv_type(sup, "history"))["alerts"]] == [early]
            await sup.send_message(json.dumps({"type": "ack", "alert_seq": early, "id": "s"}))
            assert (await recv_type(sup, "ack_result"))["ok"] is True
