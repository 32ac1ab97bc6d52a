"""Fuzzing every parser that takes outside bytes here (issue 15): the feed's JSON frames, the
control socket's request lines, and the msgpack frames the uplink and the reference receiver
read. The invariant, as h11's fuzz harness states it: arbitrary input yields a result or the
parser's one typed error, never anything else (no RecursionError, OverflowError, TypeError...)."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.bounded import InputRejected, check_plain, loads_json
from gateway.commands import COMMAND_NAMES, _plan
from gateway.control import parse_request
from gateway.events import CATALOGUE, CHANNELS
from gateway.feed.protocol import (
    Authenticated,
    Close,
    FeedSession,
    LoginBook,
    Send,
    TokenEntry,
    TokenTable,
    hash_token,
)
from gateway.receiver.server import _check_result
from gateway.uplink import protocol as proto

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TABLE = TokenTable([TokenEntry("sue", "supervisor", hash_token("s-secret"))])

# JSON-ish values, including the shapes that broke things: deep nesting, huge integers,
# non-finite floats, bytes where strings belong.
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
           | st.integers(min_value=2**63 - 2, max_value=2**80))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=40)
msgpack_values = st.recursive(
    scalars | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8), inner, max_size=4),
    max_leaves=40)


def nested(depth: int, opener: str = "[") -> str:
    closer = {"[": "]", "{": "}"}[opener]
    inner = '{"a":' * depth + "1" + "}" * depth if opener == "{" else "[" * depth + closer * depth
    return inner


feed_texts = (st.text(max_size=200)
              | json_values.map(json.dumps)
              | st.builds(lambda kind, v: json.dumps({"type": kind, "token": "s-secret",
                                                      "alert_seq": v, "from_seq": v,
                                                      "channels": v, "id": "c", "name": "n",
                                                      "args": v, "target": v}),
                          st.sampled_from(["auth", "subscribe", "unsubscribe", "replay", "ack",
                                           "command", "x"]), json_values)
              | st.integers(min_value=1, max_value=5000).map(
                  lambda d: '{"type":"auth","token":' + nested(d) + "}")
              | st.integers(min_value=1, max_value=5000).map(lambda d: nested(d, "{")))


def _only_protocol_actions(actions: list[Any]) -> None:
    for action in actions:
        if isinstance(action, Send):
            json.dumps(action.message)  # every reply can be written


@FUZZ
@given(feed_texts | st.binary(max_size=200))
def test_feed_session_before_auth_never_raises(frame: str | bytes) -> None:
    actions = FeedSession(TABLE, commands_enabled=True).receive(frame)
    _only_protocol_actions(actions)


@FUZZ
@given(st.lists(feed_texts | st.binary(max_size=50), max_size=5))
def test_feed_session_after_auth_never_raises(frames: list[str | bytes]) -> None:
    session = FeedSession(TABLE, commands_enabled=True)
    session.receive('{"type":"auth","token":"s-secret"}')
    for frame in frames:
        actions = session.receive(frame)
        _only_protocol_actions(actions)
        assert not any(isinstance(a, Close) for a in actions)


@FUZZ
@given(st.binary(max_size=300) | feed_texts.map(str.encode))
def test_loads_json_raises_only_input_rejected(data: bytes) -> None:
    try:
        value = loads_json(data, max_bytes=65536)
    except InputRejected:
        return
    check_plain(value, max_depth=64, max_items=10**6)  # what it returns is within budget


@FUZZ
@given(st.binary(max_size=300) | feed_texts.map(str.encode)
       | json_values.map(lambda v: json.dumps({"cmd": "trace", "port": v}).encode()))
def test_control_requests_raise_only_input_rejected(line: bytes) -> None:
    try:
        cmd, port = parse_request(line)
    except InputRejected:
        return
    assert isinstance(cmd, str) and (port is None or isinstance(port, str))


@FUZZ
@given(msgpack_values)
def test_check_plain_raises_only_input_rejected(value: Any) -> None:
    try:
        check_plain(value)
    except InputRejected:
        return
    json.dumps(value, sort_keys=True)  # accepted means storable as JSON


def _frame(kind: str, body: Any) -> bytes:
    try:
        return msgpack.packb({"type": kind, "id": "c-1", "result": "ok", "reason": "",
                              "data": body, "events": body, "seq": body, "epoch": body,
                              "high_water": body, "code": body, "message": body})
    except (OverflowError, ValueError, TypeError):
        return msgpack.packb({"type": kind})


uplink_frames = (st.binary(max_size=300)
                 | st.builds(_frame, st.sampled_from(["hello", "welcome", "events", "ack",
                                                      "error", "command", "command_result",
                                                      "other"]), msgpack_values)
                 | st.integers(min_value=1, max_value=5000).map(
                     lambda d: b"\x91" * d + b"\xc0"))


@FUZZ
@given(uplink_frames)
def test_uplink_and_receiver_frames_raise_only_protocol_violations(frame: bytes) -> None:
    try:
        message = proto.decode(frame, max_events=10_000)
        if isinstance(message, proto.CommandResult):
            _check_result(message)  # what the receiver adds before storing
    except proto.ProtocolViolation:
        return


@FUZZ
@given(st.sampled_from([*sorted(COMMAND_NAMES), "x"]), msgpack_values, msgpack_values)
def test_command_plans_refuse_rather_than_raise(name: str, target: Any, args: Any) -> None:
    """A platform command frame (msgpack) or a supervisor's (JSON) reaches `_plan` as is."""
    plan = _plan({"id": "c", "name": name, "target": target, "args": args}, COMMAND_NAMES,
                 {"sas0": object()})  # type: ignore[dict-item]
    if not plan.refusal:
        msgpack.packb({"target": plan.target, "args": plan.args})  # what the store writes


http_heads = st.builds(
    lambda method, target, headers, tail: method + b" " + target + b" HTTP/1.1\r\nHost: x\r\n"
    + b"".join(k + b": " + v + b"\r\n" for k, v in headers) + b"\r\n" + tail,
    st.sampled_from([b"GET", b"HEAD", b"POST", b"G\x00T", b""]),
    st.sampled_from([b"/", b"/health", b"/metrics", b"/feed", b"/static/../x", b"*", b"/%00"]),
    st.lists(st.tuples(st.sampled_from([b"Host", b"Upgrade", b"Connection", b"Content-Length",
                                        b"Sec-WebSocket-Key", b"Sec-WebSocket-Version",
                                        b"Transfer-Encoding", b"Origin", b"X"]),
                       st.sampled_from([b"x", b"websocket", b"Upgrade", b"close", b"13",
                                        b"dGhlIHNhbXBsZSBub25jZQ==", b"chunked", b"-1",
                                        b"99999999999999999999", b"a" * 3000])), max_size=8),
    st.binary(max_size=200))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=500) | http_heads | st.lists(http_heads, min_size=2, max_size=4)
       .map(b"".join))
@example(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
@example(b"GET / HTTP/1.1\nHost:\n\nHEAD / HTTP/1.1\nHost:\nUpgrade:websocket\n\n")
@example(b"GET /feed HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
         b"\x81\x05hello")
def test_feed_http_any_bytes_get_an_answer_or_a_close(make_outbox, data: bytes) -> None:
    """The feed's HTTP side (h11, the head limit, the upgrade hand-over) over an in-memory
    stream: whatever arrives, the connection ends with no unexpected error."""
    from trio.testing import MockClock, memory_stream_pair

    from gateway.feed.server import FeedServer, FeedSettings

    server = FeedServer(FeedSettings(), _outbox(make_outbox), dict)

    async def exchange() -> None:
        client, served = memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.http.serve_connection, served)
            await client.send_all(data)
            await client.send_eof()
            while await client.receive_some(65536):
                pass

    trio.run(exchange, clock=MockClock(autojump_threshold=0))
    assert server.metrics.handler_errors._value.get() == 0


_OUTBOXES: dict[int, Any] = {}


def _outbox(make_outbox: Any) -> Any:
    """One outbox per test run, not per example (the fixture is the same for every example)."""
    if id(make_outbox) not in _OUTBOXES:
        _OUTBOXES.clear()
        _OUTBOXES[id(make_outbox)] = make_outbox()
    return _OUTBOXES[id(make_outbox)]


# -- today's boundaries: the player channel and session resume --------------------------------

VIEWERS = TokenTable([TokenEntry("vic", "viewer", hash_token("v-secret"))])
PLAYER_TYPES = sorted(n for n, spec in CATALOGUE.items() if spec.channel == "player")
names = (st.sampled_from(sorted(CHANNELS) + sorted(CATALOGUE)) | st.text(max_size=12)
         | st.sampled_from(["Player", "PLAYER", "player ", "player\x00", "cardinserted"]))
name_lists = st.lists(names, max_size=6) | json_values
subscriptions = st.builds(
    lambda kind, channels, events, machines: json.dumps(
        {"type": kind, "channels": channels, "events": events, "machines": machines}),
    st.sampled_from(["subscribe", "unsubscribe"]), name_lists, name_lists,
    st.lists(st.sampled_from(["port1/1", "port2/1", "x"]), max_size=2))


@FUZZ
@given(st.lists(subscriptions | feed_texts, max_size=8))
def test_a_viewer_never_wants_a_player_event(frames: list[str]) -> None:
    """Whatever a viewer subscribes and unsubscribes, in any order and shape, no player event
    passes its filter (for any machine, or none)."""
    session = FeedSession(VIEWERS, commands_enabled=True)
    session.receive('{"type":"auth","token":"v-secret"}')
    for frame in frames:
        _only_protocol_actions(session.receive(frame))
    for kind in PLAYER_TYPES:
        for machine in (None, {"port": "port1", "address": 1}):
            assert not session.wants({"channel": "player", "event": kind, "machine": machine})


@FUZZ
@given(json_values | st.text(max_size=80) | st.sampled_from(["A" * 64, "A" * 65, "a" * 15]))
def test_an_auth_login_of_any_shape_is_a_login_id_or_none(login: Any) -> None:
    frame = json.dumps({"type": "auth", "token": "s-secret", "login": login})
    for action in FeedSession(TABLE, commands_enabled=True).receive(frame):
        if isinstance(action, Authenticated):
            assert action.login is None or (isinstance(action.login, str)
                                            and 16 <= len(action.login) <= 64)


logins = st.lists(st.tuples(st.sampled_from(["sue", "vic"]),
                            st.integers(min_value=-1, max_value=6) | st.text(max_size=70),
                            st.floats(min_value=0, max_value=50)), max_size=30)


@FUZZ
@given(logins)
def test_a_login_id_continues_only_its_own_live_login(steps: list[tuple[str, Any, float]]) -> None:
    """Against a model: an id is continued only for the person it was issued to and only before
    it ends; a forged, borrowed or unknown id gets a fresh login; an ended one is refused."""
    book, issued, now = LoginBook(max_s=10, capacity=4), [], 0.0
    owner: dict[str, tuple[str, float]] = {}
    for name, pick, step in steps:
        now += step
        login = (issued[pick] if isinstance(pick, int) and 0 <= pick < len(issued)
                 else None if pick == -1 else str(pick))
        answer = book.begin(name, login, now)
        if answer is None:
            assert login in owner and owner[login][0] == name and owner[login][1] <= now
            continue
        got, end = answer
        if got == login:
            assert owner[got][0] == name and now < owner[got][1] == end
        else:
            assert got not in owner and end == now + 10
            owner[got] = (name, end)
            issued.append(got)
