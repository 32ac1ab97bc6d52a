"""Who is at which machine is for attendants and supervisors: a viewer may not subscribe to the
player channel or to any of its event types, so neither live events nor replays show it one."""

from __future__ import annotations

import json

import pytest

from gateway.events import CATALOGUE
from gateway.feed.protocol import FeedSession, Send, TokenEntry, TokenTable, hash_token

TABLE = TokenTable([TokenEntry("vic", "viewer", hash_token("v-secret")),
                    TokenEntry("ann", "attendant", hash_token("a-secret")),
                    TokenEntry("sue", "supervisor", hash_token("s-secret"))])
PLAYER_TYPES = sorted(t for t, s in CATALOGUE.items() if s.channel == "player")
CARD = {"event": "cardInserted", "channel": "player", "machine": {"port": "egm-1", "address": 1}}


def _session(token: str) -> FeedSession:
    s = FeedSession(TABLE, commands_enabled=False)
    s.receive(json.dumps({"type": "auth", "token": token}))
    return s


def _replies(s: FeedSession, message: dict) -> list[dict]:
    return [a.message for a in s.receive(json.dumps(message)) if isinstance(a, Send)]


def test_the_player_channel_has_the_card_events() -> None:
    assert PLAYER_TYPES == ["cardBadRead", "cardInserted", "cardRead", "cardRemoved"]


@pytest.mark.parametrize("subscription", [{"channels": ["player"]},
                                          *({"events": [t]} for t in PLAYER_TYPES),
                                          {"channels": ["alerts", "player"]}])
def test_a_viewer_may_not_see_players(subscription: dict) -> None:
    s = _session("v-secret")
    [reply] = _replies(s, {"type": "subscribe", "id": 7, **subscription})
    assert (reply["type"], reply["code"], reply["ref"]) == ("error", "forbidden", 7)
    assert not s.wants(CARD) and s.filter.channels == set()  # nothing of it was applied


@pytest.mark.parametrize("token", ["a-secret", "s-secret"])
def test_attendants_and_supervisors_see_players(token: str) -> None:
    s = _session(token)
    [reply] = _replies(s, {"type": "subscribe", "channels": ["player"]})
    assert reply["type"] == "subscribed" and s.wants(CARD)


def test_a_viewer_still_subscribes_to_everything_else() -> None:
    s = _session("v-secret")
    [reply] = _replies(s, {"type": "subscribe", "channels": ["alerts", "game"]})
    assert reply["type"] == "subscribed" and not s.wants(CARD)
    assert _replies(s, {"type": "unsubscribe", "channels": ["player"]})[0]["type"] == "subscribed"
