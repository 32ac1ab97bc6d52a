"""Subjects, stream and bucket names of the platform on NATS JetStream (pure: no I/O).

Subject of an event: `casino.<region>.<venue>.<gateway>.<channel>.<type>`. Region, venue and
gateway come from the gateway's registration (the registry bucket), never from the envelope,
so a gateway cannot publish into another venue; channel and type come from the verified
envelope but are reduced to known shapes (an unknown channel or a malformed type is `unknown`).
"""

from __future__ import annotations

import hashlib
import re

from gateway.uplink.protocol import is_epoch

__all__ = ["CHAINS", "COMMANDS", "EVENTS_STREAM", "REGISTRY", "chain_key", "command_key",
           "event_subject", "gateway_filter", "label_ok", "token", "untoken"]

EVENTS_STREAM = "CASINO_EVENTS"
ROOT = "casino"
REGISTRY = "casino-registry"   # gw.<gateway> -> registration; tok.<sha256> -> gateway id
CHAINS = "casino-chains"       # <gateway>.<epoch> -> head (high_water, last_hash, counters)
COMMANDS = "casino-commands"   # <gateway>.<sha256(command id)[:40]> -> the command and its result
TAKEOVER = "casinoctl.takeover"  # core NATS request: stop your connection of <gateway>

CHANNELS = frozenset({"game", "cash", "alerts", "system", "player"})
TYPE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}\Z")
_LABEL = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


def token(gateway_id: str) -> str:
    """A gateway id as one subject token / KV key token: its dots (allowed in ids, separators in
    subjects) become `=2E` (`=` is not allowed in an id, so this cannot collide)."""
    return gateway_id.replace(".", "=2E")


def untoken(value: str) -> str:
    return value.replace("=2E", ".")


def label_ok(value: str) -> bool:
    """Region and venue labels: one subject token of letters, digits, `_`, `-` (`_` if none)."""
    return bool(_LABEL.match(value))


def event_subject(region: str, venue: str, gateway_id: str, channel: str, event: str) -> str:
    channel = channel if channel in CHANNELS else "unknown"
    event = event if TYPE.match(event) else "unknown"
    return f"{ROOT}.{region}.{venue}.{token(gateway_id)}.{channel}.{event}"


def gateway_filter(region: str, venue: str, gateway_id: str) -> str:
    return f"{ROOT}.{region}.{venue}.{token(gateway_id)}.>"


def chain_key(gateway_id: str, epoch: str) -> str:
    """The chains bucket key of a stream. The epoch is one key token only because it is 16
    lowercase hex (checked in the hello, `protocol.decode`); anything else could name another
    key (`.`) or a wildcard (`*`, `>`), so it is refused here too."""
    if not is_epoch(epoch):
        raise ValueError("an epoch is 16 lowercase hex characters")
    return f"{token(gateway_id)}.{epoch}"


def command_key(gateway_id: str, command_id: str) -> str:
    return f"{token(gateway_id)}.{hashlib.sha256(command_id.encode()).hexdigest()[:40]}"
