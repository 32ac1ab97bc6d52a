"""The uplink wire protocol, version 1 (pure: no I/O, no clock, no randomness of its own).

Every WebSocket message is one binary frame holding one msgpack map with a "type" key:

    gateway -> platform   {"type": "hello", "proto": 1, "gateway_id": str, "epoch": str, "kids": [str]}
    platform -> gateway   {"type": "welcome", "epoch": str, "high_water": int}
    gateway -> platform   {"type": "events", "events": [bin, ...]}      # 1..batch_max envelopes
    platform -> gateway   {"type": "ack", "epoch": str, "seq": int}     # cumulative, after commit
    platform -> gateway   {"type": "command", "id": str, "name": str, "target": map | nil,
                           "args": map}
    gateway -> platform   {"type": "command_result", "id": str, "result": "ok" | "rejected" |
                           "failed", "reason": str, "data": map}
    either way            {"type": "error", "code": int, "message": str}

Each element of "events" is the stored envelope, `gateway.signing.canonical(envelope)`, byte for
byte, carried as msgpack bin: the platform verifies the signature over exactly what the gateway
signed. `high_water` is the last seq the platform durably stored for (gateway_id, epoch), 0 if none;
the gateway resumes with the event after it. An ack covers every seq <= ack.seq.

A command frame is decoded leniently: only its "type" makes it a `Command`; `id` is "" when it is
missing or not a non-empty string (the gateway answers that with a rejection, never a close), and
`name`, `target`, `args` are passed on as sent, for gateway.commands to check and audit.

Close codes (RFC 6455 private range 4000-4999 for ours):
    1000 normal, 1001 going away, 1009 message too big,
    4001 auth refused (unknown gateway, wrong token), 4002 protocol violation,
    4003 integrity failure (bad signature, bad hash, unknown key),
    4004 superseded (a newer connection of the same gateway took over; plain backoff).
A refusal (HTTP 401/403 at the handshake, or 4001/4002/4003) is not cured by reconnecting at once:
the gateway waits `rejected_backoff_s`. Everything else reconnects with capped exponential backoff
and full jitter (`backoff_delay`).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

__all__ = [
    "CLOSE_AUTH",
    "CLOSE_GOING_AWAY",
    "CLOSE_INTEGRITY",
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL",
    "CLOSE_SUPERSEDED",
    "CLOSE_TOO_BIG",
    "COMMAND_RESULTS",
    "PROTO",
    "REFUSAL_CLOSE_CODES",
    "Ack",
    "Command",
    "CommandResult",
    "Error",
    "Events",
    "Hello",
    "Message",
    "ProtocolViolation",
    "Welcome",
    "Window",
    "backoff_delay",
    "close_reason",
    "command_result",
    "decode",
    "encode",
    "is_epoch",
]

PROTO = 1
MAX_HELLO_KIDS = 16  # section 3's limit: the newest ones when a long run rotated more often
_EPOCH = re.compile(r"[0-9a-f]{16}")  # 8 random bytes as lowercase hex (section 5)


def is_epoch(value: str) -> bool:
    """True if `value` has the shape of an epoch: 16 lowercase hex characters, nothing else."""
    return _EPOCH.fullmatch(value) is not None

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
CLOSE_AUTH = 4001
CLOSE_PROTOCOL = 4002
CLOSE_INTEGRITY = 4003
CLOSE_SUPERSEDED = 4004  # platform: a newer connection of this gateway took over
REFUSAL_CLOSE_CODES = frozenset({CLOSE_AUTH, CLOSE_PROTOCOL, CLOSE_INTEGRITY})


class ProtocolViolation(Exception):
    """The peer sent something this protocol does not allow; `code` is the close code to use."""

    def __init__(self, message: str, code: int = CLOSE_PROTOCOL) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Hello:
    gateway_id: str
    epoch: str
    kids: tuple[str, ...]
    proto: int = PROTO


@dataclass(frozen=True, slots=True)
class Welcome:
    epoch: str
    high_water: int


@dataclass(frozen=True, slots=True)
class Events:
    events: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class Ack:
    epoch: str
    seq: int


@dataclass(frozen=True, slots=True)
class Error:
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class Command:
    """platform -> gateway. Fields other than `id` are as sent (checked by gateway.commands)."""

    id: str
    name: Any
    target: Any = None
    args: Any = None

    def request(self) -> dict[str, Any]:
        """The request dict gateway.commands.CommandRouter.handle takes."""
        return {"id": self.id, "name": self.name, "target": self.target,
                "args": {} if self.args is None else self.args}


COMMAND_RESULTS = frozenset({"ok", "rejected", "failed"})


@dataclass(frozen=True, slots=True)
class CommandResult:
    """gateway -> platform: the answer to the command `id` (stored, so a repeat gets the same)."""

    id: str
    result: str
    reason: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def command_result(command_id: str, result: str, reason: str = "",
                   data: dict[str, Any] | None = None) -> CommandResult:
    """The answer frame; a refusal or failure also says why in `data.reason`, so a platform
    that stores only `data` still learns it."""
    body = dict(data or {})
    if result != "ok" and reason:
        body.setdefault("reason", reason)
    return CommandResult(command_id, result, reason, body)


Message = Hello | Welcome | Events | Ack | Error | Command | CommandResult


def encode(message: Message) -> bytes:
    """The binary frame for `message`."""
    body: dict[str, Any]
    match message:
        case Hello():
            body = {"type": "hello", "proto": message.proto, "gateway_id": message.gateway_id,
                    "epoch": message.epoch, "kids": list(message.kids)}
        case Welcome():
            body = {"type": "welcome", "epoch": message.epoch, "high_water": message.high_water}
        case Events():
            body = {"type": "events", "events": list(message.events)}
        case Ack():
            body = {"type": "ack", "epoch": message.epoch, "seq": message.seq}
        case Error():
            body = {"type": "error", "code": message.code, "message": message.message}
        case Command():
            body = {"type": "command", "id": message.id, "name": message.name,
                    "target": message.target, "args": {} if message.args is None else message.args}
        case CommandResult():
            body = {"type": "command_result", "id": message.id, "result": message.result,
                    "reason": message.reason, "data": dict(message.data)}
        case _:
            raise TypeError(f"not a protocol message: {message!r}")
    return msgpack.packb(body, use_bin_type=True)


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    # bool is an int in Python; never accept it where a number is meant.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ProtocolViolation(f"{body.get('type')}: field {name!r} missing or not "
                                f"{getattr(kind, '__name__', kind)}")
    return value


def _hello(body: dict[str, Any]) -> Hello:
    proto = _field(body, "proto", int)
    if proto != PROTO:
        raise ProtocolViolation(f"unsupported protocol version {proto} (this side speaks "
                                f"{PROTO})")
    kids = _field(body, "kids", list)
    if not all(isinstance(k, str) for k in kids):
        raise ProtocolViolation("hello: kids must be strings")
    if len(kids) > MAX_HELLO_KIDS:
        raise ProtocolViolation(f"hello: {len(kids)} kids, at most {MAX_HELLO_KIDS}")
    epoch = _field(body, "epoch", str)
    if not is_epoch(epoch):  # not echoed: it is the peer's text, of any length
        raise ProtocolViolation(f"hello: epoch must be 16 lowercase hex characters (got "
                                f"{len(epoch)} characters)")
    return Hello(_field(body, "gateway_id", str), epoch, tuple(kids), proto)


def decode(frame: bytes | str, *, max_events: int | None = None) -> Message:
    """Parse one frame; raise ProtocolViolation (with the close code to use) if it is not valid."""
    if isinstance(frame, str):
        raise ProtocolViolation("text frame; this protocol uses binary frames only")
    try:
        body = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as err:  # msgpack raises several unrelated types on garbage
        raise ProtocolViolation(f"frame is not msgpack: {type(err).__name__}") from None
    if not isinstance(body, dict):
        raise ProtocolViolation("frame is not a msgpack map")
    kind = body.get("type")
    if kind == "hello":
        return _hello(body)
    if kind == "welcome":
        high_water = _field(body, "high_water", int)
        if high_water < 0:
            raise ProtocolViolation("welcome: negative high_water")
        return Welcome(_field(body, "epoch", str), high_water)
    if kind == "events":
        events = _field(body, "events", list)
        if not events:
            raise ProtocolViolation("events: empty batch")
        if max_events is not None and len(events) > max_events:
            raise ProtocolViolation(f"events: {len(events)} in one frame (max {max_events})",
                                    CLOSE_TOO_BIG)
        if not all(isinstance(e, bytes) for e in events):
            raise ProtocolViolation("events: every event must be msgpack bin")
        return Events(tuple(events))
    if kind == "ack":
        seq = _field(body, "seq", int)
        if seq < 0:
            raise ProtocolViolation("ack: negative seq")
        return Ack(_field(body, "epoch", str), seq)
    if kind == "error":
        return Error(_field(body, "code", int), _field(body, "message", str))
    if kind == "command":
        command_id = body.get("id")
        return Command(command_id if isinstance(command_id, str) and command_id else "",
                       body.get("name"), body.get("target"), body.get("args"))
    if kind == "command_result":
        result = _field(body, "result", str)
        if result not in COMMAND_RESULTS:
            raise ProtocolViolation(f"command_result: result {result!r} is not one of "
                                    f"{sorted(COMMAND_RESULTS)}")
        reason = body.get("reason", "")
        data = body.get("data", {})
        if not isinstance(reason, str) or not isinstance(data, dict):
            raise ProtocolViolation("command_result: reason must be a string, data a map")
        return CommandResult(_field(body, "id", str), result, reason, data)
    raise ProtocolViolation(f"unknown message type {kind!r}")


# A close frame's payload is at most 125 bytes: 2 for the code, the rest for the reason.
CLOSE_REASON_MAX_BYTES = 123


def close_reason(message: str) -> str:
    """`message` cut to fit a close frame (UTF-8, at most 123 bytes, never a split character)."""
    raw = message.encode("utf-8")[:CLOSE_REASON_MAX_BYTES]
    return raw.decode("utf-8", errors="ignore")


def backoff_delay(attempt: int, *, initial: float, maximum: float,
                  random: Callable[[], float]) -> float:
    """Capped exponential backoff with full jitter: uniform in [0, min(maximum, initial * 2**n)).

    `attempt` counts failures since the last good connection, from 0. `random` returns a float in
    [0, 1) (e.g. `random.random`); tests inject a fixed one.
    """
    ceiling = maximum if attempt >= 64 else min(maximum, initial * (2 ** attempt))
    return ceiling * random()


class Window:
    """Frames in flight: at most `size` event frames sent and not yet covered by an ack.

    The sender calls `sent(last_seq)` per frame; the receiver calls `acked(seq)` per ack, which
    returns True if that ack moved the window. `next_after` is the seq the next batch follows.
    """

    def __init__(self, size: int, start_after: int) -> None:
        if size < 1:
            raise ValueError("window size must be >= 1")
        self.size = size
        self.acked_seq = start_after
        self.next_after = start_after
        self._frames: deque[int] = deque()

    @property
    def in_flight(self) -> int:
        return len(self._frames)

    @property
    def can_send(self) -> bool:
        return len(self._frames) < self.size

    def sent(self, last_seq: int) -> None:
        if not self.can_send:
            raise RuntimeError("window is full")  # local bug: the sender must check can_send
        if last_seq <= self.next_after:
            raise RuntimeError(f"frame ending at {last_seq} does not advance past "
                               f"{self.next_after}")
        self._frames.append(last_seq)
        self.next_after = last_seq

    def acked(self, seq: int) -> bool:
        """Account a cumulative ack; raise ProtocolViolation if it covers what was never sent."""
        if seq > self.next_after:
            raise ProtocolViolation(f"ack for seq {seq} but only up to {self.next_after} was sent")
        if seq <= self.acked_seq:
            return False  # a repeated or stale cumulative ack is harmless
        self.acked_seq = seq
        while self._frames and self._frames[0] <= seq:
            self._frames.popleft()
        return True
