"""The staff feed protocol, sans I/O: tokens, roles, one client's session and its filters.

`FeedSession.receive(text)` takes one WebSocket text frame and returns what the server must do
(`Send`, `Close`, `Authenticated`, `AuthFailed`, `Replay`, `Acknowledge`, `Command`); the server
(gateway/feed/server.py) does the I/O. Keeping every decision here lets the tests cover each
protocol path without a socket, and keeps a hostile client's input away from the I/O code.
docs/feed-protocol.md is the client-facing specification of the same rules.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from drivers.model import machine_key
from gateway.bounded import InputRejected, loads_json
from gateway.events import CATALOGUE, CHANNELS

__all__ = [
    "ALERT_ROLES",
    "EVENTS_FRAME_OVERHEAD",
    "EVENT_ROLES",
    "ROLES",
    "Acknowledge",
    "AuthFailed",
    "Authenticated",
    "Close",
    "Command",
    "FailureLimiter",
    "FeedSession",
    "History",
    "Identity",
    "LoginBook",
    "Replay",
    "Resync",
    "Send",
    "TokenEntry",
    "TokenTable",
    "dumps",
    "encode_envelope",
    "envelope_json",
    "error",
    "events_frame",
    "hash_token",
]

ROLES = ("viewer", "attendant", "supervisor")
SUBPROTOCOL = "casino-feed.v1"
TOKEN_PREFIX = "token."
NOTE_MAX = 500
# Who may see which player is at which machine (the `player` channel): attendants and above.
PLAYER_ROLE = "attendant"
# The reconciler's findings are the supervisor view (docs/reconciliation.md): the board's `meters`
# alert and the event that opens it are never sent to the floor view (viewer, attendant).
ALERT_ROLES = {"meters": "supervisor"}
EVENT_ROLES = {"meterDiscrepancy": "supervisor"}
POLICY_VIOLATION = 1008
_MACHINE = re.compile(r"^[^/]+/[0-9]{1,3}$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_LOGIN_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def hash_token(token: str) -> str:
    """What the configuration stores for a token: lowercase hex SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class TokenEntry:
    """A configured token: who holds it, their role, and the token's SHA-256 (never the token)."""

    name: str
    role: str
    sha256: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, not {self.role!r}")
        if not _SHA256_HEX.match(self.sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    role: str

    def may(self, role: str) -> bool:
        """True if this identity has `role` or a higher one (viewer < attendant < supervisor)."""
        return ROLES.index(self.role) >= ROLES.index(role)

    def hidden_alerts(self) -> frozenset[str]:
        """Alert kinds of the board this identity does not see (ALERT_ROLES)."""
        return frozenset(kind for kind, role in ALERT_ROLES.items() if not self.may(role))


class TokenTable:
    """Checks a presented token against the hashed ones. Every entry is compared, with
    `hmac.compare_digest`, so the time taken does not say which entry (or how much) matched."""

    def __init__(self, entries: tuple[TokenEntry, ...] | list[TokenEntry]) -> None:
        self._entries = tuple(entries)

    def authenticate(self, token: object) -> Identity | None:
        entry = self.entry_for(token)
        return None if entry is None else Identity(entry.name, entry.role)

    def entry_for(self, token: object) -> TokenEntry | None:
        """The configured entry this token matches, or None."""
        if not isinstance(token, str) or not token:
            return None
        digest = hash_token(token).encode("ascii")
        found = None
        for entry in self._entries:
            if hmac.compare_digest(digest, entry.sha256.encode("ascii")) and found is None:
                found = entry
        return found

    def holds(self, entry: TokenEntry) -> bool:
        """True if `entry` (name, role and hash) is still configured: a session authenticated
        with it may stay after a reload."""
        return entry in self._entries


class FailureLimiter:
    """Authentication attempts per remote address: failures in a sliding minute plus attempts
    still in flight (a WebSocket connected and not yet authenticated). Counting those in flight
    means opening 200 connections first buys no more guesses than opening them one by one.

    Guesses spread over many addresses (20 addresses x 10 each) are bounded too: once all
    addresses together failed `global_per_minute` times in the last minute, each address gets
    one attempt at a time and is blocked by its first failure. Staff typing the right token
    still get in at the first try, so nobody is locked out; only mistakes cost a minute then.
    `now` is monotonic seconds."""

    def __init__(self, per_minute: int, global_per_minute: int | None = None) -> None:
        self.per_minute = per_minute
        self.global_per_minute = global_per_minute or 3 * per_minute
        self._failures: dict[str, deque[float]] = {}
        self._in_flight: dict[str, int] = {}
        self._all: deque[float] = deque(maxlen=100_000)   # every failure, for the global budget

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._failures.get(address)
        if times is None:
            return deque()
        while times and times[0] <= now - 60.0:
            times.popleft()
        if not times:
            del self._failures[address]
        return times

    def under_attack(self, now: float) -> bool:
        """True while failures from all addresses together exceed the global budget."""
        while self._all and self._all[0] <= now - 60.0:
            self._all.popleft()
        return len(self._all) >= self.global_per_minute

    def blocked(self, address: str, now: float) -> bool:
        attempts = len(self._recent(address, now)) + self._in_flight.get(address, 0)
        return attempts >= (1 if self.under_attack(now) else self.per_minute)

    def retry_after(self, address: str, now: float) -> int:
        """Whole seconds until the oldest counted failure leaves the window (1 while only
        attempts in flight fill the budget)."""
        times = self._recent(address, now)
        return max(1, int(times[0] + 60.0 - now) + 1) if times else 1

    def begin(self, address: str) -> None:
        """An attempt starts (counted until `end`)."""
        self._in_flight[address] = self._in_flight.get(address, 0) + 1

    def end(self, address: str) -> None:
        """The attempt is over: authenticated, failed (also `record`) or disconnected."""
        left = self._in_flight.get(address, 0) - 1
        if left > 0:
            self._in_flight[address] = left
        else:
            self._in_flight.pop(address, None)

    def record(self, address: str, now: float) -> None:
        # Prune everyone now and then so a scan from many addresses cannot grow the table forever.
        if len(self._failures) > 10_000:
            for other in list(self._failures):
                self._recent(other, now)
        self._failures.setdefault(address, deque()).append(now)
        self._all.append(now)


def _json_ready(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def encode_envelope(envelope: dict[str, Any]) -> dict[str, Any]:
    """A sealed envelope as JSON-ready data: bytes fields (prev_hash, hash, sig) as lowercase hex."""
    return _json_ready(envelope)


def dumps(message: Any) -> str:
    """Compact JSON, as every server frame is written."""
    return json.dumps(message, separators=(",", ":"), default=str)


def envelope_json(envelope: dict[str, Any]) -> str:
    """One sealed envelope as JSON text: encoded once per event, then shared by every frame and
    every client that carries it."""
    return dumps(encode_envelope(envelope))


EVENTS_FRAME_OVERHEAD = len('{"type":"events","events":[]}')


def events_frame(texts: list[str]) -> str:
    """An `events` frame from envelopes already encoded by `envelope_json`, in seq order. Built by
    joining text, so a frame costs one copy of its bytes and no JSON encoding."""
    return '{"type":"events","events":[' + ",".join(texts) + "]}"


def error(code: str, message: str, ref: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if ref is not None:
        out["ref"] = ref
    return out


# -- what the session asks the server to do -------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Send:
    message: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Authenticated:
    """Send the welcome (with the alert state) and start delivering events. `login`: the login
    the client says it continues (the id from an earlier welcome), None for a fresh one."""

    identity: Identity
    login: str | None = None


@dataclass(frozen=True, slots=True)
class AuthFailed:
    """Count a failed authentication against the remote address."""


@dataclass(frozen=True, slots=True)
class Replay:
    from_seq: int


@dataclass(frozen=True, slots=True)
class Acknowledge:
    alert_seq: int
    note: str | None
    identity: Identity


@dataclass(frozen=True, slots=True)
class Command:
    request: dict[str, Any]
    identity: Identity


@dataclass(frozen=True, slots=True)
class Resync:
    """Send the whole alert state again (the client missed an `alerts_delta`)."""


@dataclass(frozen=True, slots=True)
class History:
    """Send a machine's open and recently closed alerts."""

    machine: str
    ref: Any = None


Action = Send | Close | Authenticated | AuthFailed | Replay | Acknowledge | Command | Resync \
    | History


@dataclass(slots=True)
class Filter:
    """Which events a client gets: those whose channel or type it subscribed to, restricted to
    `machines` when that is non-empty (events about no machine pass the machine restriction)."""

    channels: set[str] = field(default_factory=set)
    events: set[str] = field(default_factory=set)
    machines: set[str] = field(default_factory=set)

    def wants(self, envelope: dict[str, Any]) -> bool:
        if envelope["channel"] not in self.channels and envelope["event"] not in self.events:
            return False
        if self.machines and envelope.get("machine"):
            machine = envelope["machine"]
            return machine_key(machine.get("port"), machine.get("address")) in self.machines
        return True

    def as_dict(self) -> dict[str, Any]:
        return {"channels": sorted(self.channels), "events": sorted(self.events),
                "machines": sorted(self.machines)}

    def key(self) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
        """Equal for equal filters: the server selects events once per distinct filter, not once
        per client (most floor clients share one of a few filters)."""
        return frozenset(self.channels), frozenset(self.events), frozenset(self.machines)


class FeedSession:
    """One client's protocol state: unauthenticated until a valid token, then its filter."""

    def __init__(self, tokens: TokenTable, *, commands_enabled: bool,
                 max_message_bytes: int = 65536) -> None:
        self._tokens = tokens
        self._commands_enabled = commands_enabled
        self._max_bytes = max_message_bytes
        self.identity: Identity | None = None
        self.entry: TokenEntry | None = None   # the token entry it authenticated with
        self.filter = Filter()

    def wants(self, envelope: dict[str, Any]) -> bool:
        return self.identity is not None and self.identity.may(
            EVENT_ROLES.get(envelope["event"], ROLES[0])) and self.filter.wants(envelope)

    def view(self) -> tuple[Any, ...]:
        """Equal for sessions that get the same events and the same board (filter and role)."""
        return self.filter.key(), self.identity.role if self.identity else None

    def hidden_alerts(self) -> frozenset[str]:
        return self.identity.hidden_alerts() if self.identity else frozenset(ALERT_ROLES)

    def authenticate(self, token: str, login: object = None) -> list[Action]:
        """Authenticate with a token (from the first message or from the subprotocol);
        `login` is the auth message's `login` (a reconnect continuing that login)."""
        entry = self._tokens.entry_for(token)
        if entry is None:
            return [AuthFailed(), Send(error("auth_failed", "unknown token")),
                    Close(POLICY_VIOLATION, "authentication failed")]
        self.entry = entry
        self.identity = Identity(entry.name, entry.role)
        resumed = login if isinstance(login, str) and _LOGIN_ID.match(login) else None
        return [Authenticated(self.identity, resumed)]

    def receive(self, frame: str | bytes) -> list[Action]:
        if isinstance(frame, bytes):
            if self.identity is None:
                return self._need_auth()
            return [Send(error("bad_request", "send JSON in text frames, not binary"))]
        try:
            # Size, depth and number budgets (gateway/bounded.py): a hostile frame is an
            # InputRejected here, never a RecursionError or an OverflowError further on.
            message = loads_json(frame, max_bytes=self._max_bytes)
        except InputRejected:
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            if self.identity is None:
                return self._need_auth()
            return [Send(error("bad_json", "expected a JSON object with a string 'type'"))]
        kind, ref = message["type"], message.get("id")
        if self.identity is None:
            if kind != "auth":
                return self._need_auth()
            return self.authenticate(message.get("token"),  # type: ignore[arg-type]
                                     message.get("login"))
        handler = {"auth": self._again, "subscribe": self._subscribe,
                   "unsubscribe": self._subscribe, "replay": self._replay, "ack": self._ack,
                   "command": self._command, "resync": self._resync,
                   "history": self._history}.get(kind)
        if handler is None:
            return [Send(error("unknown_type", f"unknown message type {kind!r}", ref))]
        try:
            return handler(message, self.identity)
        except _BadRequest as bad:
            return [Send(error("bad_request", str(bad), ref))]

    @staticmethod
    def _need_auth() -> list[Action]:
        return [Send(error("auth_required", "the first message must be {\"type\": \"auth\"}")),
                Close(POLICY_VIOLATION, "authentication required")]

    @staticmethod
    def _again(message: dict[str, Any], identity: Identity) -> list[Action]:
        return [Send(error("bad_request", "already authenticated", message.get("id")))]

    def _subscribe(self, message: dict[str, Any], identity: Identity) -> list[Action]:
        channels = _names(message, "channels", lambda v: v in CHANNELS, "a channel")
        events = _names(message, "events", lambda v: v in CATALOGUE, "an event type")
        machines = _names(message, "machines", lambda v: bool(_MACHINE.match(v)),
                          "a machine as 'port/address'")
        if message["type"] == "subscribe" and not identity.may(PLAYER_ROLE) and (
                "player" in channels or any(CATALOGUE[e].channel == "player" for e in events)):
            return [Send(error("forbidden", f"role {identity.role} may not see players",
                               message.get("id")))]
        if message["type"] == "subscribe":
            self.filter.channels |= channels
            self.filter.events |= events
            self.filter.machines |= machines
        else:
            self.filter.channels -= channels
            self.filter.events -= events
            self.filter.machines -= machines
        return [Send({"type": "subscribed", **self.filter.as_dict()})]

    @staticmethod
    def _resync(message: dict[str, Any], identity: Identity) -> list[Action]:
        return [Resync()]

    @staticmethod
    def _history(message: dict[str, Any], identity: Identity) -> list[Action]:
        machine = message.get("machine")
        if not isinstance(machine, str) or not _MACHINE.match(machine):
            raise _BadRequest("machine must be a machine as 'port/address'")
        return [History(machine, message.get("id"))]

    @staticmethod
    def _replay(message: dict[str, Any], identity: Identity) -> list[Action]:
        return [Replay(_integer(message, "from_seq"))]

    @staticmethod
    def _ack(message: dict[str, Any], identity: Identity) -> list[Action]:
        if not identity.may("attendant"):
            return [Send(error("forbidden", f"role {identity.role} may not acknowledge alerts",
                               message.get("id")))]
        note = message.get("note")
        if note is not None and (not isinstance(note, str) or len(note) > NOTE_MAX):
            raise _BadRequest(f"note must be a string of at most {NOTE_MAX} characters")
        return [Acknowledge(_integer(message, "alert_seq"), note or None, identity)]

    def _command(self, message: dict[str, Any], identity: Identity) -> list[Action]:
        ref = message.get("id")
        if not identity.may("supervisor"):
            return [Send(error("forbidden", f"role {identity.role} may not send commands", ref))]
        if not self._commands_enabled:
            return [Send(error("commands_disabled", "commands not enabled", ref))]
        for key in ("id", "name"):
            if not isinstance(message.get(key), str) or not message[key]:
                raise _BadRequest(f"{key} must be a non-empty string")
        args = message.get("args", {})
        if not isinstance(args, dict):
            raise _BadRequest("args must be an object")
        request = {"id": message["id"], "name": message["name"],
                   "target": message.get("target"), "args": args}
        return [Command(request, identity)]


class _BadRequest(ValueError):
    pass


def _integer(message: dict[str, Any], key: str) -> int:
    value = message.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _BadRequest(f"{key} must be a positive integer")
    return value


def _names(message: dict[str, Any], key: str, valid: Any, what: str) -> set[str]:
    values = message.get(key, [])
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise _BadRequest(f"{key} must be a list of strings")
    for value in values:
        if not valid(value):
            raise _BadRequest(f"{key}: {value!r} is not {what}")
    return set(values)


class LoginBook:
    """When each login on a shared tablet began, so that the server, not only the page, ends a
    session `max_s` after the person typed the token, however often the page reconnected since.

    A welcome carries the login's id; the page sends it back in `auth` when it reconnects.
    `begin` answers with the login's id and the time it expires (a fresh login for no id, an
    unknown id, e.g. after a gateway restart, or another person's id), or None when that login
    has expired: the client must log in again. Pure: `now` is passed in. At most `capacity`
    live and `capacity` expired logins are remembered, the oldest forgotten first (logins are
    kept in the order they began, which is the order they end).
    """

    def __init__(self, max_s: float, capacity: int = 4096) -> None:
        self.max_s = max_s
        self.capacity = capacity
        self._live: OrderedDict[str, tuple[str, float]] = OrderedDict()  # id -> (name, end)
        self._expired: OrderedDict[str, str] = OrderedDict()             # id -> name

    def begin(self, name: str, login: str | None, now: float) -> tuple[str, float] | None:
        self._expire(now)
        if login is not None and self._expired.get(login) == name:
            return None
        known = self._live.get(login) if login is not None else None
        if login is not None and known is not None and known[0] == name:
            return login, known[1]
        fresh = secrets.token_urlsafe(18)
        self._live[fresh] = (name, now + self.max_s)
        while len(self._live) > self.capacity:
            self._live.popitem(last=False)
        return fresh, now + self.max_s

    def _expire(self, now: float) -> None:
        while self._live:
            login, (name, end) = next(iter(self._live.items()))
            if end > now:
                break
            del self._live[login]
            self._expired[login] = name
        while len(self._expired) > self.capacity:
            self._expired.popitem(last=False)
