"""Connection caps, login attempt limits, throttled logging, token revocation, a port in use and
running out of descriptors (issue 15, "Resource caps"). Pure parts first, then a real feed on
loopback; a second client address is 127.0.0.2 (all of 127/8 is loopback on Linux)."""

from __future__ import annotations

import errno
import json
import socket
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs
from trio_websocket import ConnectionRejected, open_websocket_url

from gateway.accepting import serve_accepting
from gateway.feed.protocol import FailureLimiter
from gateway.feed.server import FeedServer, FeedSettings
from gateway.limits import Admission, LogThrottle, Ticket
from tests.gateway.test_feed_server import (
    TOKENS,
    auth,
    closed_with,
    http_get,
    raw_exchange,
    recv,
)
from tests.gateway.test_feed_server import start_feed as _start_feed

start_feed = _start_feed  # the fixture, shared

OTHER = "127.0.0.2"


# -- pure ------------------------------------------------------------------------------------------

def test_admission_caps_per_address_below_the_listener():
    admission = Admission(total=4, per_address=3, unauthenticated=3,
                          unauthenticated_per_address=2)
    a1, a2 = admission.admit("a"), admission.admit("a")
    assert isinstance(a1, Ticket) and isinstance(a2, Ticket)
    assert admission.admit("a") == "address_unauthenticated_full"
    a1.authenticated()
    a3 = admission.admit("a")
    assert isinstance(a3, Ticket)
    assert admission.admit("a") == "address_full"   # three open from "a"
    b1 = admission.admit("b")
    assert isinstance(b1, Ticket)
    assert admission.admit("c") == "listener_full"
    for ticket in (a1, a2, a3, b1, b1):   # releasing twice changes nothing
        ticket.release()
    assert (admission.open, admission.unauthenticated) == (0, 0)
    assert isinstance(admission.admit("c"), Ticket)


def test_admission_unauthenticated_cap_is_global():
    admission = Admission(total=10, per_address=10, unauthenticated=2,
                          unauthenticated_per_address=1)
    assert isinstance(admission.admit("a"), Ticket)
    assert isinstance(admission.admit("b"), Ticket)
    assert admission.admit("c") == "unauthenticated_full"


def test_attempts_in_flight_count_like_failures():
    limiter = FailureLimiter(3)
    for _ in range(3):
        limiter.begin("a")
    assert limiter.blocked("a", 0.0) and not limiter.blocked("b", 0.0)
    assert limiter.retry_after("a", 0.0) == 1
    limiter.end("a")
    assert not limiter.blocked("a", 0.0)
    limiter.record("a", 0.0)
    assert limiter.blocked("a", 1.0) and not limiter.blocked("a", 61.0)


def test_log_throttle_logs_once_then_the_count():
    throttle = LogThrottle(60.0, max_kinds=2)
    assert throttle.admit("x", 0.0) == 0
    assert [throttle.admit("x", t) for t in (1.0, 2.0, 59.0)] == [None, None, None]
    assert throttle.admit("x", 61.0) == 3
    assert throttle.admit("y", 0.0) == 0
    assert throttle.admit("z", 0.0) == 0          # a third kind shares "(other)"
    assert throttle.admit("w", 1.0) is None


# -- a real feed ---------------------------------------------------------------------------------

async def open_from(port: int, local: str = "127.0.0.1") -> trio.SocketStream:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    await sock.bind((local, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def test_half_open_flood_from_one_address_does_not_lock_out_another(start_feed):
    with trio.fail_after(15):
        feed = await start_feed(max_unauthenticated_per_address=3, max_unauthenticated=8)
        held = [await open_from(feed.port) for _ in range(3)]   # half-open: no request sent
        # Every task blocked (the server's on reading those three): all three are admitted.
        await trio.testing.wait_all_tasks_blocked(0.05)
        assert feed.server.admission.open == 3
        refused = await open_from(feed.port)
        reply = await refused.receive_some(1024)
        assert reply.startswith(b"HTTP/1.1 503 ")
        # Another address is not affected by the first one's flood.
        other = await open_from(feed.port, OTHER)
        await other.send_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await other.receive_some(65536)).startswith(b"HTTP/1.1 200 ")
        await other.aclose()
        other = await open_from(feed.port, OTHER)
        await other.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = b""
        while chunk := await other.receive_some(65536):
            body += chunk
        for stream in (*held, refused, other):
            await stream.aclose()
        assert 'gateway_feed_refused_connections_total{reason="address_unauthenticated_full"}' \
               ' 1.0' in body.decode()


async def test_login_attempts_in_flight_are_counted_not_handshakes(start_feed):
    """Issue 15: 200 connections opened first got 200 guesses. Attempts in flight count."""
    with trio.fail_after(15):
        feed = await start_feed(auth_failures_per_minute=3)
        async with trio.open_nursery() as nursery:
            opened = trio.Semaphore(0)
            release = trio.Event()

            async def hold() -> None:
                async with open_websocket_url(feed.url):
                    opened.release()
                    await release.wait()

            for _ in range(3):
                nursery.start_soon(hold)
            for _ in range(3):
                await opened.acquire()
            with pytest.raises(ConnectionRejected) as caught:
                async with open_websocket_url(feed.url):
                    pass
            assert caught.value.status_code == 429
            release.set()
        _, _, body = await http_get(feed.port, "/metrics")
        assert "gateway_feed_rate_limited_total 1.0" in body.decode()


async def test_auth_failures_counted_and_logged_at_a_bounded_rate(start_feed):
    with trio.fail_after(15):
        feed = await start_feed(auth_failures_per_minute=100)
        with capture_logs() as logs:
            for _ in range(5):
                async with open_websocket_url(feed.url) as ws:
                    assert (await auth(ws, "wrong"))["code"] == "auth_failed"
        _, _, body = await http_get(feed.port, "/metrics")
        assert "gateway_feed_auth_failures_total 5.0" in body.decode()
        lines = [e for e in logs if e["event"] == "feed authentication failed"]
        assert len(lines) == 1 and lines[0]["repeated"] == 0


async def test_429s_counted_and_logged_at_a_bounded_rate(start_feed):
    """Issue 15: "429s are never logged". Each 429 is counted; the log says it once a minute
    (with the repeats since), naming the address, so a flood cannot fill the journal."""
    with trio.fail_after(15):
        feed = await start_feed(auth_failures_per_minute=1)
        async with open_websocket_url(feed.url) as ws:
            assert (await auth(ws, "wrong"))["code"] == "auth_failed"
        with capture_logs() as logs:
            for _ in range(4):
                with pytest.raises(ConnectionRejected) as caught:
                    async with open_websocket_url(feed.url):
                        pass
                assert caught.value.status_code == 429
        _, _, body = await http_get(feed.port, "/metrics")
        assert "gateway_feed_rate_limited_total 4.0" in body.decode()
        lines = [e for e in logs if "429" in e["event"]]
        assert len(lines) == 1 and lines[0]["log_level"] == "warning"
        assert (lines[0]["client"], lines[0]["repeated"]) == ("127.0.0.1", 0)


async def test_revoking_a_token_on_reload_closes_its_sessions(start_feed):
    with trio.fail_after(15):
        feed = await start_feed()
        async with open_websocket_url(feed.url) as ann, open_websocket_url(feed.url) as sue:
            assert (await auth(ann, "attendant-token"))["type"] == "welcome"
            assert (await auth(sue, "supervisor-token"))["type"] == "welcome"
            kept = tuple(t for t in TOKENS if t.role != "attendant")
            assert feed.server.replace_tokens(kept) == 1
            assert await closed_with(ann) == (1008, "token revoked")
            await sue.send_message(json.dumps({"type": "subscribe", "channels": ["alerts"]}))
            assert (await recv(sue))["type"] in ("subscribed", "alerts")
        async with open_websocket_url(feed.url) as again:
            assert (await auth(again, "attendant-token"))["code"] == "auth_failed"


def test_staff_tokens_in_clear_on_the_lan_get_a_loud_warning(make_outbox):
    outbox = make_outbox()
    for host, loud in (("0.0.0.0", True), ("192.168.1.20", True), ("127.0.0.1", False),
                       ("::1", False), ("localhost", False)):
        server = FeedServer(FeedSettings(host=host, tokens=TOKENS), outbox, dict)
        with capture_logs() as logs:
            server._warn_if_clear()
        assert any("IN CLEAR" in e["event"] and e["log_level"] == "error" for e in logs) == loud


async def test_a_feed_started_in_clear_on_the_lan_says_so_once_and_tls_silences_it(
        start_feed, tmp_path):
    """The warning is given by the running server at start (not only by the helper above):
    listening on every address without TLS, once; with feed.certfile set, not at all."""
    import trustme

    cert = trustme.CA().issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    with trio.fail_after(15):
        for tls, loud in (({}, 1), ({"certfile": tmp_path / "cert.pem",
                                     "keyfile": tmp_path / "key.pem"}, 0)):
            with capture_logs() as logs:
                await start_feed(host="0.0.0.0", **tls)
            assert sum("IN CLEAR" in e["event"] and e["log_level"] == "error"
                       for e in logs) == loud


async def test_port_in_use_is_not_fatal_and_the_bind_is_retried(make_outbox, nursery):
    outbox = make_outbox()
    await nursery.start(outbox.run_writer)
    taken = trio.socket.socket()
    await taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    server = FeedServer(FeedSettings(port=port, tokens=TOKENS, bind_retry_s=0.05), outbox,
                        lambda: {})
    with trio.fail_after(15), capture_logs() as logs:
        assert await nursery.start(server.run) is None    # started: the daemon goes on
        assert server.bind_error is not None and "in use" in server.bind_error
        assert any(e["event"].startswith("feed port unavailable") for e in logs)
        taken.close()
        await server.listening.wait()
        assert server.port == port and server.bind_error is None
        health = json.loads((await http_get(port, "/health"))[2])
        assert health["feed"]["bind_failures"] >= 1


async def test_head_limit_is_16_kib(start_feed):
    with trio.fail_after(15):
        feed = await start_feed()
        for size, status in ((15_000, b"200"), (20_000, b"431"), (30_000, b"431")):
            request = (b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: "
                       + b"a" * size + b"\r\n\r\n")
            assert (await raw_exchange(feed.port, request)).startswith(b"HTTP/1.1 " + status)


async def test_pipelined_gets_are_all_answered_in_order(start_feed):
    with trio.fail_after(15):
        feed = await start_feed()
        request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        last = b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        data = await raw_exchange(feed.port, request * 3 + last)
        assert data.count(b"HTTP/1.1 200 ") == 3 and data.count(b"HTTP/1.1 404 ") == 1
        assert data.index(b"HTTP/1.1 404 ") > data.rindex(b"HTTP/1.1 200 ")


# -- running out of descriptors ------------------------------------------------------------------

class FullListener(trio.abc.Listener[Any]):
    """Fails `failures` accepts with EMFILE, then hands out one stream, then waits forever."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.served = False

    async def accept(self) -> Any:
        await trio.lowlevel.checkpoint()
        if self.failures > 0:
            self.failures -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        if not self.served:
            self.served = True
            return trio.testing.memory_stream_pair()[0]
        await trio.sleep_forever()

    async def aclose(self) -> None:
        pass


async def test_emfile_backs_off_is_counted_and_logged_once(autojump_clock):
    handled = trio.Event()
    full: list[int] = []

    async def handler(stream: Any) -> None:
        handled.set()

    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(serve_accepting, FullListener(5), handler, nursery,
                                       name="test", on_full=lambda: full.append(1)))
            start = trio.current_time()
            await handled.wait()
            waited = trio.current_time() - start
            nursery.cancel_scope.cancel()
    assert len(full) == 5
    assert waited >= 0.1 + 0.2 + 0.4 + 0.8 + 1.6 - 1e-6   # backed off, doubling
    assert len([e for e in logs if e["event"].startswith("cannot accept")]) == 1


async def test_other_accept_errors_still_raise():
    class Broken(FullListener):
        async def accept(self) -> Any:
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EBADF, "Bad file descriptor")

    async def handler(stream: Any) -> None:
        pass

    with pytest.RaisesGroup(OSError):
        async with trio.open_nursery() as nursery:
            await serve_accepting(Broken(0), handler, nursery, name="test")



def test_caps_fit_the_descriptor_limit():
    from gateway.feed.guard import FD_RESERVE
    from gateway.feed.guard import admission as _admission

    settings = FeedSettings()
    roomy = _admission(settings, 65536)
    assert (roomy.total, roomy.unauthenticated_cap) == (256, 64)
    tight = _admission(settings, FD_RESERVE + 40)
    assert (tight.total, tight.unauthenticated_cap, tight.per_address,
            tight.unauthenticated_per_address) == (20, 20, 20, 8)


def test_log_throttle_tells_the_count_when_the_repeats_stop():
    throttle = LogThrottle(60.0)
    assert throttle.admit("x", 0.0) == 0
    for t in range(1, 30):
        assert throttle.admit("x", float(t)) is None
    assert throttle.due(30.0) == []            # not a whole interval yet
    assert throttle.due(61.0) == [("x", 29)]
    assert throttle.due(200.0) == []           # told once
    assert throttle.admit("x", 201.0) == 0


async def test_accepting_again_is_logged_with_the_failure_count(autojump_clock):
    handled = trio.Event()

    async def handler(stream: Any) -> None:
        handled.set()

    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(serve_accepting, FullListener(3), handler, nursery,
                                       name="test"))
            await handled.wait()
            nursery.cancel_scope.cancel()
    again = [e for e in logs if e["event"] == "accepting connections again"]
    assert len(again) == 1 and again[0]["failed_accepts"] == 3


async def test_a_bug_reached_from_one_connection_does_not_stop_the_server(start_feed,
                                                                          monkeypatch):
    from gateway.feed.protocol import FeedSession

    original = FeedSession.receive

    def receive(self: FeedSession, frame: str | bytes) -> list[Any]:
        if frame == "boom":
            raise RuntimeError("a bug")
        return original(self, frame)

    monkeypatch.setattr(FeedSession, "receive", receive)
    with trio.fail_after(15), capture_logs() as logs:
        feed = await start_feed()
        async with open_websocket_url(feed.url) as ws:
            assert (await auth(ws))["type"] == "welcome"
            await ws.send_message("boom")
            await closed_with(ws)
        assert (await http_get(feed.port, "/health"))[0] == 200
        _, _, body = await http_get(feed.port, "/metrics")
        assert "gateway_feed_handler_errors_total 1.0" in body.decode()
    assert [e["log_level"] for e in logs if e["event"].startswith("feed connection failed")] \
        == ["error"]


def test_guesses_spread_over_many_addresses_are_bounded_without_locking_anyone_out():
    """Issue 15: 20 addresses x 10 guesses got 200 guesses and no 429."""
    limiter = FailureLimiter(10)           # global budget: 30 a minute
    guesses = 0
    for n in range(20):
        address = f"10.0.0.{n}"
        while not limiter.blocked(address, 1.0):
            limiter.begin(address)
            limiter.record(address, 1.0)
            limiter.end(address)
            guesses += 1
    assert guesses <= 30 + 20 - 3          # three addresses at 10, then one each
    assert limiter.under_attack(1.0)
    assert not limiter.blocked("10.9.9.9", 1.0)       # staff elsewhere: first try allowed
    limiter.begin("10.9.9.9")
    assert limiter.blocked("10.9.9.9", 1.0)           # but one at a time
    limiter.end("10.9.9.9")
    assert not limiter.under_attack(62.0) and not limiter.blocked("10.0.0.0", 62.0)
