"""The feed server over real loopback sockets: trio-websocket clients and a tiny h11 HTTP client."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from drivers.base import MachineRef
from gateway.events import system_draft
from gateway.feed.protocol import TokenEntry, hash_token
from gateway.feed.server import FeedServer, FeedSettings
from gateway.outbox import Outbox

TOKENS = (TokenEntry("vic", "viewer", hash_token("viewer-token")),
          TokenEntry("ann", "attendant", hash_token("attendant-token")),
          TokenEntry("sue", "supervisor", hash_token("supervisor-token")))


@dataclass
class Feed:
    server: FeedServer
    outbox: Outbox
    port: int
    status: dict[str, Any]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/feed"

    async def append(self, event: str, data: dict[str, Any] | None = None, *, port: str = "p1",
                     address: int = 1, machine: bool = True) -> int:
        return await self.outbox.append(system_draft(
            event, data, now=time.time(), monotonic=trio.current_time(),
            machine=MachineRef(port, address) if machine else None))


@pytest.fixture
def start_feed(make_outbox, nursery):
    """Start an outbox writer and a feed server on port 0; returns a `Feed`."""
    outbox = None

    async def start(command_handler=None, **overrides: Any) -> Feed:
        nonlocal outbox
        if outbox is None:
            outbox = make_outbox()
            await nursery.start(outbox.run_writer)
        status = {"uplink": {"connected": True, "since": 1_700_000_000.0, "reconnects": 2},
                  "uplink_status": {"state": "up", "connected": True, "since": 1_700_000_000.0,
                                    "reason": "connected, events acknowledged"},
                  "ports": {"p1": {"machines": {"1": {
                      "online": True, "timeouts": 3, "crc_errors": 1,
                      "resent_after_reset": 2}}}}}
        settings = replace(FeedSettings(tokens=TOKENS), **overrides)
        server = FeedServer(settings, outbox, lambda: status, command_handler)
        port = await nursery.start(server.run)
        return Feed(server, outbox, port, status)

    return start


async def recv(ws) -> dict[str, Any]:
    return json.loads(await ws.get_message())


async def recv_type(ws, kind: str) -> dict[str, Any]:
    """The next message of type `kind`, skipping others (alert state pushes, mostly)."""
    while True:
        message = await recv(ws)
        if message["type"] == kind:
            return message


async def recv_events(ws, count: int = 1) -> list[dict[str, Any]]:
    """The next `count` events, from however many `events` frames carry them (other messages
    skipped); more than `count` is a failure."""
    got: list[dict[str, Any]] = []
    while len(got) < count:
        got += (await recv_type(ws, "events"))["events"]
    assert len(got) == count, f"expected {count} events, got {[e['seq'] for e in got]}"
    return got


async def auth(ws, token: str = "attendant-token") -> dict[str, Any]:
    await ws.send_message(json.dumps({"type": "auth", "token": token}))
    return await recv(ws)


async def subscribe(ws, **what: list[str]) -> None:
    await ws.send_message(json.dumps({"type": "subscribe", **what}))
    await recv_type(ws, "subscribed")


async def closed_with(ws) -> tuple[int, str | None]:
    with pytest.raises(ConnectionClosed) as caught:
        while True:
            await ws.get_message()
    return caught.value.reason.code, caught.value.reason.reason


# -- authentication ---------------------------------------------------------------------------------

async def test_first_message_auth_gets_welcome_with_current_alerts(start_feed):
    with trio.fail_after(10):
        feed = await start_feed()
        handpay = await feed.append("handpayPending", {"amount_cents": 250000}, port="p2")
        await feed.append("doorOpened", {"door": "main"})
        await feed.append("uplinkDown", {"reason": "platform unreachable"}, machine=False)
        async with open_websocket_url(feed.url) as ws:
            welcome = await auth(ws)
        assert welcome["type"] == "welcome"
        assert (welcome["name"], welcome["role"]) == ("ann", "attendant")
        state = welcome["state"]
        assert [(a["kind"], a["machine"]) for a in state["alerts"]] == [
            ("door", "p1/1"), ("handpay", "p2/1")]
        assert state["alerts"][1]["seq"] == handpay
        assert state["alerts"][1]["data"]["amount"] == {"minor": 250000, "currency": "USD"}
        # The uplink's live state, not the last uplink event in the outbox, is what is shown.
        assert state["uplink"] == {"state": "up", "connected": True,
                                   "since": "2023-11-14T22:13:20.000Z",
                                   "reason": "connected, events acknowledged"}
        assert state["version"] == 2 and state["seq"] == 3


async def test_alert_state_survives_a_restart_of_the_feed(start_feed, nursery):
    with trio.fail_after(10):
        first = await start_feed()
        await first.append("tilt", {"kind": "reel"})
        await first.append("deviceOffline", port="p3")
        second = await start_feed()   # a fresh server on the same outbox rebuilds the board
        async with open_websocket_url(second.url) as ws:
            state = (await auth(ws, "viewer-token"))["state"]
        assert [a["kind"] for a in state["alerts"]] == ["offline", "tilt"]
        assert state["uplink"]["connected"] is True


async def test_first_message_must_be_auth(start_feed):
    with trio.fail_after(10):
        feed = await start_feed()
        async with open_websocket_url(feed.url) as ws:
            await ws.send_message(json.dumps({"type": "subscribe", "channels": ["alerts"]}))
            assert (await recv(ws))["code"] == "auth_required"
            assert await closed_with(ws) == (1008, "authentication required")


async def test_bad_token_is_refused(start_feed):
    with trio.fail_after(10):
        feed = await start_feed()
        async with open_websocket_url(feed.url) as ws:
            reply = await auth(ws, "guess")
            assert (reply["type"], reply["code"]) == ("error", "auth_failed")
            assert await closed_with(ws) == (1008, "authentication failed")


async def test_silent_client_is_closed_after_the_auth_timeout(start_feed):
    with trio.fail_after(10):
        feed = await start_feed(auth_timeout_s=0.2)
        # A token in the URL is not a way in: the server still waits for the auth message.
        async with open_websocket_url(feed.url + "?token=attendant-token") as ws:
            assert (await recv(ws))["code"] == "auth_required"
            assert await closed_with(ws) == (1008, "authentication timeout")


async def test_token_as_subprotocol(start_feed):
    with trio.fail_after(10):
        feed = await start_feed()
        async with open_websocket_url(
                feed.url, subprotocols=["casino-feed.v1", "token.supervisor-token"]) as ws:
            welcome = await recv(ws)
            assert (welcome["type"], welcome["role"]) == ("welcome", "supervisor")
            assert ws.subprotocol == "casino-feed.v1", "the token is never echoed back"
        async with open_websocket_url(feed.url, subprotocols=["token.nope"]) as ws:
            assert (await recv(ws))["code"] == "auth_failed"
            assert await closed_with(ws) == (1008, "authentication failed")


async def test_failed_auth_is_rate_limited_per_address(start_feed):
    with trio.fail_after(10):
        feed = await start_feed(auth_failures_per_minute=2)
        for _ in range(2):
            async with open_websocket_url(feed.url) as ws:
                assert (await auth(ws, "wrong"))["code"] == "auth_failed"
        with pytest.raises(ConnectionRejected) as caught:
            async with open_websocket_url(feed.url, subprotocols=["token.attendant-token"]):
                pass
        assert caught.value.status_code == 429
        assert dict(caught.value.headers)[b"retry-after"].isdigit()


async def test_origin_not_allowed_is_refused(start_feed):
    with trio.fail_after(10):
        feed = await start_feed(allowed_origins=("http://board.venue.lan",))
        with pytest.raises(ConnectionRejected) as caught:
            async with open_websocket_url(feed.url, extra_headers=[(b"origin", b"http://evil")]):
                pass
        assert caught.value.status_code == 403
        for origin in (b"http://board.venue.lan", f"http://127.0.0.1:{feed.port}".encode()):
            async with open_websocket_url(feed.url, extra_headers=[(b"origin", origin)]) as ws:
                assert (await auth(ws))["type"] == "welcome"


# -- events, filters, replay ------------------------------------------------------------------------

async def test_filters_by_channel_event_and_machine(start_feed):
    with trio.fail_after(10):
        feed = await start_feed()
        async with open_websocket_url(feed.url) as ws:
            await auth(ws, "viewer-token")
            await subscribe(ws, channels=["alerts"], machines=["p1/1"])
            await feed.append("betPlaced", {"wager_credits": 5})      # game channel
            await feed.append("tilt", {"kind": "reel"}, port="p2")     # another machine
            tilt = await feed.append("tilt", {"kind": "door"})
            [got] = await recv_events(ws)
            assert (got["seq"], got["event"]) == (tilt, "tilt")
            assert len(got["hash"]) == 64 and len(got["sig"]) == 128

            await ws.send_message(json.dumps({"type": "unsubscribe", "channels": ["alerts"]}))
            await recv_type(ws, "subscribed")
            await subscribe(ws, events=["betPlaced"])
            await feed.append("tilt", {"kind": "again"})
            bet = await feed.append("betPlaced", {"wager_credits": 1})
            [got] = await recv_events(ws)
            assert (got["seq"], got["event"]) == (bet, "betPlaced")


async def test_replay_from_seq_then_live(start_feed):
    with trio.fail_after(10):
        feed = await start_feed()
        seqs = [await feed.append("betPlaced", {"wager_credits": n}) for n in range(5)]
        async with open_websocket_url(feed.url) as ws:
            await auth(ws, "viewer-token")
            await subscribe(ws, channels=["game"])
            await ws.send_message(json.dumps({"type": "replay", "from_seq": seqs[2]}))
            replayed = [event["seq"] for event in await recv_events(ws, 3)]
            assert replayed == seqs[2:]
            done = await recv_type(ws, "replay_done")
            assert done == {"type": "replay_done", "from_seq": seqs[2], "to_seq": seqs[4],
                            "sent": 3, "complete": True}
            live = await feed.append("gameEnded", {"win_credits": 0})
            assert [e["seq"] for e in await recv_events(ws)] == [live]


async def test_replay_is_bounded(start_feed):
    with trio.fail_after(10):
        feed = await start_feed(replay_max=2)
        for n in range(4):
            await feed.append("betPlaced", {"wager_credits": n})
        async with open_websocket_url(feed.url) as ws:
            await auth(ws, "viewer-token")
            await subscribe(ws, channels=["game"])
            await ws.send_message(json.dumps({"type": "replay", "from_seq": 1}))
            done = await recv_type(ws, "replay_done")
            assert (done["to_seq"], done["sent"], done["complete"]) == (2, 2, False)
            await ws.send_message(json.dumps({"type": "replay", "from_seq": 3}))
            done = await recv_type(ws, "replay_done")
            assert (done["to_seq"], done["complete"]) == (4, True)


# -- acknowledging alerts ---------------------------------------------------------------------------

async def test_attendant_ack_is_recorded_and_comes_back_on_the_feed(start_feed):
    with trio.fail_after(10):
        feed = await start_feed()
        tilt = await feed.append("tilt", {"kind": "reel"}, port="p4", address=2)
        async with open_websocket_url(feed.url) as ws:
            await auth(ws)
            await subscribe(ws, events=["alertAcknowledged"])
            await ws.send_message(json.dumps({"type": "ack", "alert_seq": tilt,
                                              "note": "reset done"}))
            # The event and the new alert state are fanned out as soon as the acknowledgement is
            # durable, before the server answers the request itself.
            got = [await recv(ws) for _ in range(3)]
            assert [m["type"] for m in got] == ["events", "alerts_delta", "ack_result"]
            [ack], delta, result = got[0]["events"], got[1], got[2]
            assert result["ok"] and result["alert_seq"] == tilt
            assert ack["seq"] == result["seq"] == feed.outbox.last_seq
            assert ack["data"] == {"alert_seq": tilt, "by": "ann", "role": "attendant",
                                   "note": "reset done"}
            assert ack["machine"]["port"] == "p4" and ack["machine"]["address"] == 2
            # An acknowledged tilt is cleared: one `closed` change, the next version.
            assert (delta["base"], delta["version"]) == (1, 2)
            assert delta["changes"] == [{"v": 2, "op": "closed", "seq": tilt, "machine": "p4/2",
                                         "at": ack["timestamp"]}]

            await ws.send_message(json.dumps({"type": "ack", "alert_seq": tilt}))
            again = await recv_type(ws, "ack_result")
            assert again == {"type": "ack_result", "alert_seq": tilt, "ok": False,
                             "reason": "no open alert has that seq"}


async def test_viewer_may_not_ack(start_feed):
    with trio.fail_after(10):
        feed = await start_feed()
        handpay = await feed.append("handpayPending")
        async with open_websocket_url(feed.url) as ws:
            await auth(ws, "viewer-token")
            await ws.send_message(json.dumps({"type": "ack", "alert_seq": handpay, "id": "a1"}))
            reply = await recv_type(ws, "error")
            assert (reply["code"], reply["ref"]) == ("forbidden", "a1")
        assert feed.outbox.last_seq == handpay
        assert feed.server.board.get(handpay).acknowledged_by is None


async def test_supervisor_commands(start_feed):
    calls = []

    async def handler(request, requested_by):
        calls.append((request, requested_by))
        return {"result": "ok", "detail": "machine disabled"}

    with trio.fail_after(10):
        feed = await start_feed(command_handler=handler)
        command = {"type": "command", "id": "c-1", "name": "disable", "target": "p1/1",
                   "args": {"reason": "jam"}}
        async with open_websocket_url(feed.url) as ws:
            await auth(ws, "supervisor-token")
            await ws.send_message(json.dumps(command))
            assert await recv_type(ws, "command_result") == {
                "type": "command_result", "id": "c-1", "result": "ok",
                "detail": "machine disabled"}
        assert calls == [({"id": "c-1", "name": "disable", "target": "p1/1",
                           "args": {"reason": "jam"}}, "sue")]
        plain = await start_feed()
        async with open_websocket_url(plain.url) as ws:
            await auth(ws, "supervisor-token")
            await ws.send_message(json.dumps(command))
            reply = await recv_type(ws, "error")
            assert (reply["code"], reply["message"]) == ("commands_disabled",
                                                         "commands not enabled")


# -- misbehaving clients ----------------------------------------------------------------------------

async def test_slow_client_is_dropped_and_appends_keep_completing(start_feed):
    big = "x" * 16_000
    count = 800   # ~13 MB of frames: more than the loopback socket buffers hold
    with trio.fail_after(30):
        feed = await start_feed(client_queue=10)
        async with open_websocket_url(feed.url) as slow, open_websocket_url(feed.url) as ok:
            await auth(slow, "viewer-token")
            await subscribe(slow, channels=["system"])
            await auth(ok, "viewer-token")
            await subscribe(ok, channels=["alerts"])
            # `slow` reads nothing from here on while the outbox takes every event.
            async with trio.open_nursery() as appenders:
                for worker in range(20):
                    async def append_some(worker=worker):
                        for n in range(count // 20):
                            await feed.append("lossMarker", {"reason": "test", "count": n,
                                                             "detail": big}, machine=False)
                    appenders.start_soon(append_some)
            assert feed.outbox.last_seq == count
            received = 0
            with pytest.raises(ConnectionClosed) as caught:
                while True:
                    message = json.loads(await slow.get_message())
                    if message["type"] == "events":
                        received += len(message["events"])
            assert (caught.value.reason.code, caught.value.reason.reason) == (1008, "too slow")
            assert received < count
            assert feed.server.client_count == 1, "only the slow client was dropped"
            tilt = await feed.append("tilt", {"kind": "after"})
            assert [e["seq"] for e in await recv_events(ok)] == [tilt]


async def test_oversized_frame_closes_with_1009(start_feed):
    with trio.fail_after(10):
        feed = await start_feed(max_message_bytes=1024)
        async with open_websocket_url(feed.url) as ws:
            await auth(ws)
            await ws.send_message(json.dumps({"type": "ack", "alert_seq": 1, "note": "n" * 2000}))
            code, _reason = await closed_with(ws)
        assert code == 1009


async def test_malformed_frames_get_errors_and_the_connection_stays(start_feed):
    with trio.fail_after(10):
        feed = await start_feed()
        async with open_websocket_url(feed.url) as ws:
            await auth(ws)
            for frame, code in [("{not json", "bad_json"), (b"\x00binary", "bad_request"),
                                ('{"type": "subscribe", "channels": "alerts"}', "bad_request"),
                                ('{"type": "teleport"}', "unknown_type")]:
                await ws.send_message(frame)
                assert (await recv_type(ws, "error"))["code"] == code
            await subscribe(ws, channels=["alerts"])
            tilt = await feed.append("tilt", {"kind": "still here"})
            assert [e["seq"] for e in await recv_events(ws)] == [tilt]


# -- plain HTTP ------------------------------------------------------------------------------------

async def http_get(port: int, target: str, method: bytes = b"GET"
                   ) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request over a fresh connection with h11, the same library the server uses."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        await stream.send_all(conn.send(h11.Request(method=method, target=target, headers=[
            (b"host", f"127.0.0.1:{port}".encode()), (b"connection", b"close")])))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        response, body = None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return response.status_code, dict(response.headers), body


async def test_health(start_feed):
    with trio.fail_after(10):
        feed = await start_feed()
        status, headers, body = await http_get(feed.port, "/health")
        health = json.loads(body)
        assert (status, headers[b"content-type"]) == (200, b"application/json")
        assert (health["status"], health["reasons"]) == ("ok", [])
        assert health["version"] and health["time"].endswith("Z")
        assert health["outbox"] == {"depth": 0, "oldest_undelivered_s": 0.0, "last_seq": 0,
                                    "delivered_seq": 0, "intake_stopped": False,
                                    "epoch": feed.outbox.epoch, "witness": "absent at open",
                                    "epoch_changes": 0, "epoch_change": None}
        await feed.append("betPlaced", {"wager_credits": 1})
        # Down for longer than the limit (60 s by default): 503, and why.
        feed.status["uplink_status"] = {"state": "down", "connected": False,
                                        "since": time.time() - 90, "reason": "refused"}
        status, _, body = await http_get(feed.port, "/health")
        health = json.loads(body)
        assert (status, health["status"]) == (503, "degraded")
        assert health["uplink"]["connected"] is False
        [reason] = health["reasons"]
        assert reason.startswith("uplink down for 9") and reason.endswith("(limit 60 s): refused")
        assert health["outbox"]["depth"] == 1
        assert 0 <= health["outbox"]["oldest_undelivered_s"] < 10
        # Down for less than the limit is not yet worth a page.
        feed.status["uplink_status"]["since"] = time.time() - 5
        assert (await http_get(feed.port, "/health"))[0] == 200
        feed.status["uplink_status"] = {"state": "frozen", "connected": False,
                                        "since": time.time() - 5, "reason": "no acks"}
        status, _, body = await http_get(feed.port, "/health")
        assert (status, json.loads(body)["reasons"]) == (503, ["uplink frozen: no acks"])


async def test_health_degraded_by_backlog(start_feed):
    with trio.fail_after(10):
        feed = await start_feed(degraded_depth=2)
        for n in range(3):
            await feed.append("betPlaced", {"wager_credits": n})
        status, _, body = await http_get(feed.port, "/health")
        assert (status, json.loads(body)["reasons"]) == (503, ["3 events undelivered (limit 2)"])


async def test_metrics(start_feed):
    with trio.fail_after(10):
        feed = await start_feed()
        async with open_websocket_url(feed.url) as ws:
            await auth(ws, "viewer-token")
            await feed.append("tilt", {"kind": "reel"})
            await feed.append("tilt", {"kind": "reel"})
            status, headers, body = await http_get(feed.port, "/metrics")
        text = body.decode()
        assert status == 200 and headers[b"content-type"].startswith(b"text/plain")
        for line in ['gateway_events_total{type="tilt"} 2.0', "gateway_outbox_depth 2.0",
                     "gateway_uplink_connected 1.0", "gateway_uplink_reconnects_total 2.0",
                     "gateway_feed_clients 1.0", 'gateway_port_timeouts_total{port="p1"} 3.0',
                     'gateway_port_crc_errors_total{port="p1"} 1.0',
                     'gateway_port_resent_after_reset_total{port="p1"} 2.0',
                     "gateway_capture_to_durable_seconds_count 2.0"]:
            assert line in text, line


async def test_page_static_files_and_errors(start_feed):
    with trio.fail_after(10):
        feed = await start_feed()
        status, headers, body = await http_get(feed.port, "/")
        assert status == 200 and headers[b"content-type"].startswith(b"text/html")
        assert b"/static/board.js" in body
        status, headers, _ = await http_get(feed.port, "/static/board.js")
        assert status == 200 and headers[b"content-type"].startswith(b"text/javascript")
        for target in ("/nope", "/static/../server.py", "/static/%2e%2e/server.py"):
            assert (await http_get(feed.port, target))[0] == 404, target
        assert (await http_get(feed.port, "/", b"POST"))[0] == 405
        status, headers, body = await http_get(feed.port, "/health", b"HEAD")
        assert (status, body) == (200, b"") and int(headers[b"content-length"]) > 0


async def test_keep_alive_then_upgrade_elsewhere_is_404(start_feed):
    with trio.fail_after(10):
        feed = await start_feed()
        stream = await trio.open_tcp_stream("127.0.0.1", feed.port)
        async with stream:
            request = (b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                       b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await stream.send_all(request)
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
        assert data.count(b"HTTP/1.1 200 ") == 2
        with pytest.raises(ConnectionRejected) as caught:
            async with open_websocket_url(f"ws://127.0.0.1:{feed.port}/elsewhere"):
                pass
        assert caught.value.status_code == 404


async def raw_exchange(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def test_broken_requests_get_http_errors_and_the_server_lives(start_feed):
    with trio.fail_after(10):
        feed = await start_feed()
        no_key = (b"GET /feed HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n")
        assert (await raw_exchange(feed.port, no_key)).startswith(b"HTTP/1.1 400 ")
        huge = (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: " + b"a" * 40_000
                + b"\r\n\r\n")
        assert (await raw_exchange(feed.port, huge)).startswith(b"HTTP/1.1 431 ")
        assert (await raw_exchange(feed.port, b"\x16\x03\x01garbage\r\n\r\n")).startswith(
            b"HTTP/1.1 400 ")
        assert (await http_get(feed.port, "/health"))[0] == 200


async def test_tls(start_feed, tmp_path):
    import ssl

    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    with trio.fail_after(10):
        feed = await start_feed(certfile=tmp_path / "cert.pem", keyfile=tmp_path / "key.pem")
        url = f"wss://127.0.0.1:{feed.port}/feed"
        async with open_websocket_url(url, client_context) as ws:
            assert (await auth(ws))["type"] == "welcome"
        # A plain-text client on the TLS port gets nothing but a closed connection.
        try:
            answer = await raw_exchange(feed.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        except trio.BrokenResourceError:
            answer = b""
        assert answer == b""
        async with open_websocket_url(url, client_context) as ws:
            assert (await auth(ws))["type"] == "welcome"


async def test_shutdown_closes_clients_with_going_away(make_outbox, nursery):
    with trio.fail_after(10):
        outbox = make_outbox()
        await nursery.start(outbox.run_writer)
        server = FeedServer(FeedSettings(tokens=TOKENS), outbox, dict)
        async with trio.open_nursery() as inner:
            port = await inner.start(server.run)
            async with open_websocket_url(f"ws://127.0.0.1:{port}/feed") as ws:
                await auth(ws)
                inner.cancel_scope.cancel()
                assert await closed_with(ws) == (1001, "gateway shutting down")
        assert server.fanout.on_commit not in outbox.commit_listeners


def test_settings_from_config():
    from gateway.config import parse_config

    config = parse_config({
        "gateway": {"id": "gw", "key_file": "k"}, "uplink": {"url": "wss://x", "token_file": "t"},
        "feed": {"port": 0, "client_queue": 50, "tokens": [
            {"name": "ann", "role": "attendant", "sha256": hash_token("attendant-token")}]}})
    settings = FeedSettings.from_config(config.feed)
    assert settings.port == 0 and settings.client_queue == 50
    assert settings.tokens == (TOKENS[1],)


def test_settings_refuse_what_cannot_work():
    with pytest.raises(ValueError, match="client_queue"):
        FeedSettings(client_queue=1)
    with pytest.raises(ValueError, match="together"):
        FeedSettings(certfile=Path("/etc/cert.pem"))


# -- incremental alert state ----------------------------------------------------------------------

async def test_alert_state_is_a_snapshot_then_versioned_deltas_and_resync(start_feed):
    with trio.fail_after(10):
        feed = await start_feed()
        door = await feed.append("doorOpened", {"door": "main"})
        async with open_websocket_url(feed.url) as ws:
            welcome = await auth(ws, "viewer-token")
            assert welcome["state"]["version"] == 1
            tilt = await feed.append("tilt", {"kind": "reel_tilt"}, port="p2")
            await feed.append("betPlaced")                       # changes nothing on the board
            await feed.append("doorClosed", {"door": "main"})
            changes: list[dict[str, Any]] = []
            version = welcome["state"]["version"]
            while version < 3:
                delta = await recv_type(ws, "alerts_delta")
                assert delta["base"] <= version, "no delta missed"
                changes += [c for c in delta["changes"] if c["v"] > version]
                version = delta["version"]
            assert [(c["v"], c["op"]) for c in changes] == [(2, "opened"), (3, "closed")]
            assert changes[0]["alert"]["seq"] == tilt and changes[1]["seq"] == door
            # A client that lost track asks again and gets the whole state at the current version.
            await ws.send_message(json.dumps({"type": "resync"}))
            snapshot = await recv_type(ws, "alerts_snapshot")
            assert snapshot["state"]["version"] == 3
            assert [a["seq"] for a in snapshot["state"]["alerts"]] == [tilt]
            await ws.send_message(json.dumps({"type": "history", "machine": "p1/1", "id": "h"}))
            history = await recv_type(ws, "history")
            assert (history["machine"], history["ref"]) == ("p1/1", "h")
            assert [(a["seq"], a["closed"] is not None) for a in history["alerts"]] == [
                (door, True)]
            await ws.send_message(json.dumps({"type": "history", "machine": "nonsense"}))
            assert (await recv_type(ws, "error"))["code"] == "bad_request"


async def test_uplink_status_changes_are_pushed(start_feed):
    with trio.fail_after(10):
        feed = await start_feed()
        async with open_websocket_url(feed.url) as ws:
            assert (await auth(ws, "viewer-token"))["state"]["uplink"]["state"] == "up"
            feed.status["uplink_status"] = {"state": "down", "connected": False,
                                            "since": 1_700_000_100.0, "reason": "refused"}
            pushed = await recv_type(ws, "status")
            assert pushed["uplink"] == {"state": "down", "connected": False,
                                        "since": "2023-11-14T22:15:00.000Z", "reason": "refused"}


async def test_the_rebuilt_board_is_not_sent_again_as_deltas(start_feed):
    with trio.fail_after(10):
        first = await start_feed()
        for port in ("p1", "p2", "p3"):
            await first.append("tilt", {"kind": "reel"}, port=port)
        second = await start_feed()   # rebuilds the board from the outbox
        async with open_websocket_url(second.url) as ws:
            assert (await auth(ws, "viewer-token"))["state"]["version"] == 3
            door = await second.append("doorOpened", {"door": "main"})
            delta = await recv_type(ws, "alerts_delta")
            assert (delta["base"], [c["alert"]["seq"] for c in delta["changes"]]) == (3, [door])


async def test_plain_get_of_the_feed_says_why_a_login_would_fail(start_feed):
    """A browser cannot see a failed handshake's status: the page asks GET /feed instead."""
    with trio.fail_after(10):
        feed = await start_feed(auth_failures_per_minute=1)
        status, headers, _ = await http_get(feed.port, "/feed")
        assert (status, headers[b"upgrade"]) == (426, b"websocket")
        async with open_websocket_url(feed.url) as ws:
            assert (await auth(ws, "wrong-token"))["code"] == "auth_failed"
        status, headers, _ = await http_get(feed.port, "/feed")
        assert status == 429 and 1 <= int(headers[b"retry-after"]) <= 61
