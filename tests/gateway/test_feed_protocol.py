"""The feed protocol without sockets: tokens, roles, filters and every malformed-input path."""

from __future__ import annotations

import json

import pytest

from gateway.feed.protocol import (
    Acknowledge,
    Authenticated,
    AuthFailed,
    Close,
    Command,
    FailureLimiter,
    FeedSession,
    Identity,
    Replay,
    Send,
    TokenEntry,
    TokenTable,
    encode_envelope,
    hash_token,
)

TABLE = TokenTable([TokenEntry("vic", "viewer", hash_token("v-secret")),
                    TokenEntry("ann", "attendant", hash_token("a-secret")),
                    TokenEntry("sue", "supervisor", hash_token("s-secret"))])


def session(token: str = "a-secret", *, commands: bool = False) -> FeedSession:
    s = FeedSession(TABLE, commands_enabled=commands)
    assert s.receive(json.dumps({"type": "auth", "token": token})) == [
        Authenticated(s.identity)]
    return s


def errors(actions) -> list[str]:
    return [a.message["code"] for a in actions if isinstance(a, Send)
            and a.message["type"] == "error"]


def test_token_table_matches_hash_and_role():
    assert TABLE.authenticate("a-secret") == Identity("ann", "attendant")
    assert TABLE.authenticate("A-secret") is None
    assert TABLE.authenticate("") is None
    assert TABLE.authenticate(None) is None
    assert TABLE.authenticate(12) is None


def test_token_entry_rejects_bad_role_and_hash():
    with pytest.raises(ValueError, match="role"):
        TokenEntry("x", "boss", hash_token("t"))
    with pytest.raises(ValueError, match="sha256"):
        TokenEntry("x", "viewer", "t")


@pytest.mark.parametrize("frame", [
    '{"type": "subscribe", "channels": ["alerts"]}', "garbage", b"\x00\x01", "[]",
    '{"token": "a-secret"}',
])
def test_anything_before_auth_is_refused(frame):
    actions = FeedSession(TABLE, commands_enabled=False).receive(frame)
    assert errors(actions) == ["auth_required"]
    assert actions[-1] == Close(1008, "authentication required")


def test_bad_token_counts_as_a_failure_and_closes():
    actions = FeedSession(TABLE, commands_enabled=False).receive('{"type":"auth","token":"x"}')
    assert isinstance(actions[0], AuthFailed)
    assert errors(actions) == ["auth_failed"]
    assert actions[-1] == Close(1008, "authentication failed")


def test_roles_gate_ack_and_commands():
    ack = '{"type": "ack", "alert_seq": 7, "note": "coming"}'
    assert errors(session("v-secret").receive(ack)) == ["forbidden"]
    assert session("a-secret").receive(ack) == [
        Acknowledge(7, "coming", Identity("ann", "attendant"))]
    cmd = '{"type": "command", "id": "c1", "name": "disable", "target": "p1/1"}'
    assert errors(session("a-secret", commands=True).receive(cmd)) == ["forbidden"]
    assert errors(session("s-secret").receive(cmd)) == ["commands_disabled"]
    assert session("s-secret", commands=True).receive(cmd) == [Command(
        {"id": "c1", "name": "disable", "target": "p1/1", "args": {}},
        Identity("sue", "supervisor"))]


@pytest.mark.parametrize(("frame", "code"), [
    ("not json", "bad_json"),
    ('{"type": 5}', "bad_json"),
    (b"binary", "bad_request"),
    ('{"type": "dance"}', "unknown_type"),
    ('{"type": "auth", "token": "a-secret"}', "bad_request"),
    ('{"type": "subscribe", "channels": "alerts"}', "bad_request"),
    ('{"type": "subscribe", "channels": ["nope"]}', "bad_request"),
    ('{"type": "subscribe", "events": ["noSuchEvent"]}', "bad_request"),
    ('{"type": "subscribe", "machines": ["p1"]}', "bad_request"),
    ('{"type": "replay", "from_seq": "1"}', "bad_request"),
    ('{"type": "replay", "from_seq": true}', "bad_request"),
    ('{"type": "replay", "from_seq": 0}', "bad_request"),
    ('{"type": "ack", "alert_seq": 1, "note": 5}', "bad_request"),
    ('{"type": "ack"}', "bad_request"),
])
def test_malformed_messages_get_an_error_not_a_close(frame, code):
    actions = session().receive(frame)
    assert errors(actions) == [code]
    assert not any(isinstance(a, Close) for a in actions)


def test_subscribe_and_unsubscribe_shape_the_filter():
    s = session()
    (reply,) = s.receive('{"type": "subscribe", "channels": ["alerts"], "machines": ["p1/1"]}')
    assert reply.message == {"type": "subscribed", "channels": ["alerts"], "events": [],
                             "machines": ["p1/1"]}
    tilt = {"event": "tilt", "channel": "alerts", "machine": {"port": "p1", "address": 1}}
    other = {**tilt, "machine": {"port": "p2", "address": 1}}
    bet = {"event": "betPlaced", "channel": "game", "machine": {"port": "p1", "address": 1}}
    system = {"event": "uplinkDown", "channel": "alerts", "machine": None}
    assert s.wants(tilt) and not s.wants(other) and not s.wants(bet) and s.wants(system)
    s.receive('{"type": "subscribe", "events": ["betPlaced"]}')
    assert s.wants(bet)
    s.receive('{"type": "unsubscribe", "channels": ["alerts"], "machines": ["p1/1"]}')
    assert not s.wants(tilt) and s.wants(bet) and s.wants({**bet, "machine": {"port": "p9",
                                                                               "address": 3}})


def test_nothing_is_wanted_before_subscribing_or_authenticating():
    tilt = {"event": "tilt", "channel": "alerts", "machine": None}
    assert not session().wants(tilt)
    assert not FeedSession(TABLE, commands_enabled=False).wants(tilt)


def test_replay_request():
    assert session().receive('{"type": "replay", "from_seq": 42}') == [Replay(42)]


def test_failure_limiter_slides_over_a_minute():
    limiter = FailureLimiter(2)
    limiter.record("10.0.0.1", 100.0)
    assert not limiter.blocked("10.0.0.1", 100.0)
    limiter.record("10.0.0.1", 130.0)
    assert limiter.blocked("10.0.0.1", 131.0)
    assert not limiter.blocked("10.0.0.2", 131.0)
    assert limiter.retry_after("10.0.0.1", 131.0) == 30
    assert not limiter.blocked("10.0.0.1", 160.5)


def test_envelope_bytes_become_hex():
    out = encode_envelope({"hash": b"\x01\xff", "data": {"nested": [b"\x02"]}, "seq": 3})
    assert out == {"hash": "01ff", "data": {"nested": ["02"]}, "seq": 3}
    json.dumps(out)


DEEP = "[" * 1200 + "]" * 1200


@pytest.mark.parametrize("frame", [
    '{"type":"auth","token":' + DEEP + "}",
    '{"type":"auth","token":"a-secret","x":' + "{\"a\":" * 1200 + "1" + "}" * 1200 + "}",
])
def test_deep_json_before_auth_is_refused_not_raised(frame):
    actions = FeedSession(TABLE, commands_enabled=False).receive(frame)
    assert errors(actions) == ["auth_required"]
    assert actions[-1] == Close(1008, "authentication required")


@pytest.mark.parametrize("frame", [
    '{"type":"subscribe","channels":' + DEEP + "}",
    DEEP,
    '{"type":"ack","alert_seq":' + "9" * 5000 + "}",
    '{"type":"ack","alert_seq":1e999}',
    '{"type":"ack","alert_seq":NaN}',
])
def test_deep_or_oversized_json_after_login_is_an_error_not_a_crash(frame):
    actions = session().receive(frame)
    assert errors(actions) == ["bad_json"]
    assert not any(isinstance(a, Close) for a in actions)
