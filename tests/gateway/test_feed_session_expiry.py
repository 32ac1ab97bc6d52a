"""A login on a shared tablet ends after `session_max_s`, enforced by the gateway and not only by
the page: the live connection is closed, a reconnect that continues the login keeps its end, and
the ended login cannot be continued. Real WebSocket clients; trio's MockClock (at real speed for
the outbox's timers) jumps over the session length."""

from __future__ import annotations

import json

import trio
from trio_websocket import open_websocket_url

from gateway.feed.protocol import LoginBook

from .test_feed_server import auth, closed_with, recv, recv_type
from .test_feed_server import start_feed as _start_feed

start_feed = _start_feed  # the fixture, shared

SHIFT = 60.0   # session_max_s here; a shift of 8 h behaves the same


async def continue_login(ws, login: str) -> dict:
    await ws.send_message(json.dumps({"type": "auth", "token": "attendant-token",
                                      "login": login}))
    return await recv(ws)


async def test_the_gateway_closes_a_session_when_its_login_ends(start_feed, mock_clock):
    mock_clock.rate = 1.0
    with trio.fail_after(SHIFT + 20):   # trio time: includes the jumps
        feed = await start_feed(session_max_s=SHIFT)
        async with open_websocket_url(feed.url) as ws:
            welcome = await auth(ws)
            assert welcome["type"] == "welcome" and welcome["session_max_s"] == SHIFT
            assert welcome["login"] and welcome["session_expires"]
            mock_clock.jump(SHIFT)
            assert await closed_with(ws) == (1008, "session expired")
            assert feed.server.client_count == 0


async def test_a_reconnect_continues_the_login_and_does_not_extend_it(start_feed, mock_clock):
    mock_clock.rate = 1.0
    with trio.fail_after(SHIFT + 20):   # trio time: includes the jumps
        feed = await start_feed(session_max_s=SHIFT)
        async with open_websocket_url(feed.url) as ws:
            login = (await auth(ws))["login"]
        mock_clock.jump(SHIFT * 3 / 4)
        # The page reconnects (a network hiccup) a quarter of the shift before its end.
        async with open_websocket_url(feed.url) as ws:
            again = await continue_login(ws, login)
            assert again["type"] == "welcome" and again["login"] == login
            mock_clock.jump(SHIFT / 4)   # the end of the login, not a shift after the reconnect
            assert await closed_with(ws) == (1008, "session expired")
        # A page that tries to continue the ended login (its own timer never fired) is refused,
        # and not counted as a failed login.
        async with open_websocket_url(feed.url) as ws:
            refused = await continue_login(ws, login)
            assert refused["type"] == "error" and refused["code"] == "session_expired"
            assert await closed_with(ws) == (1008, "session expired")
        assert feed.server.metrics.auth_failures._value.get() == 0
        # Typing the token again is a fresh login: a new id, a new shift.
        async with open_websocket_url(feed.url) as ws:
            fresh = await auth(ws)
            assert fresh["type"] == "welcome" and fresh["login"] != login
            await ws.send_message(json.dumps({"type": "subscribe", "channels": ["alerts"]}))
            await recv_type(ws, "subscribed")


def test_login_book_is_pure_and_bounded():
    book = LoginBook(max_s=10.0, capacity=2)
    first = book.begin("ann", None, now=0.0)
    assert first is not None and first[1] == 10.0
    assert book.begin("ann", first[0], now=5.0) == first          # continued, same end
    other = book.begin("bob", first[0], now=5.0)                  # not bob's login: fresh
    assert other is not None and other[0] != first[0]
    assert book.begin("ann", first[0], now=10.0) is None          # ended
    assert book.begin("ann", "x" * 24, now=10.0) is not None      # unknown id: a fresh login
    for n in range(5):
        book.begin("ann", None, now=11.0 + n)
    assert len(book._live) <= 2 and len(book._expired) <= 2
