"""The uplink wire format, backoff and window: pure, no I/O."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.uplink import protocol as proto

MESSAGES = [
    proto.Hello("gw-1", "ab" * 8, ("ed25519:0011223344556677",)),
    proto.Welcome("ab" * 8, 0),
    proto.Welcome("ab" * 8, 123456),
    proto.Events((b"\x81\xa1a\x01", b"")),
    proto.Ack("ab" * 8, 42),
    proto.Error(4003, "seq 5: bad-signature"),
    proto.Command("c-1", "disableMachine", {"port": "sas0", "address": 1}, {}),
    proto.Command("c-2", "acknowledgeAlert", {"alert_seq": 9}, {"note": "ok"}),
    proto.CommandResult("c-1", "ok"),
    proto.CommandResult("c-3", "failed", "machine offline", {"meters": {"coin_in": 5}}),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: proto.Message) -> None:
    frame = proto.encode(message)
    assert isinstance(frame, bytes)
    assert proto.decode(frame) == message


def test_events_are_bin_not_str() -> None:
    raw = msgpack.unpackb(proto.encode(proto.Events((b"xyz",))), raw=True)
    assert raw[b"events"] == [b"xyz"]


@pytest.mark.parametrize(("frame", "fragment"), [
    ("text", "text frame"),
    (b"\xc1", "not msgpack"),
    (msgpack.packb([1, 2]), "not a msgpack map"),
    (msgpack.packb({"type": "bogus"}), "unknown message type"),
    (msgpack.packb({"type": "ack", "epoch": "e", "seq": "7"}), "'seq'"),
    (msgpack.packb({"type": "ack", "epoch": "e", "seq": True}), "'seq'"),
    (msgpack.packb({"type": "ack", "epoch": "e", "seq": -1}), "negative"),
    (msgpack.packb({"type": "welcome", "epoch": "e"}), "high_water"),
    (msgpack.packb({"type": "hello", "proto": 2, "gateway_id": "g", "epoch": "e", "kids": []}),
     "unsupported protocol version"),
    (msgpack.packb({"type": "events", "events": []}), "empty"),
    (msgpack.packb({"type": "events", "events": ["str"]}, use_bin_type=True), "bin"),
    (msgpack.packb({"type": "command_result", "result": "ok"}), "'id'"),
    (msgpack.packb({"type": "command_result", "id": "c", "result": "maybe"}), "not one of"),
    (msgpack.packb({"type": "command_result", "id": "c", "result": "ok", "data": [1]}),
     "data a map"),
])
def test_decode_rejects(frame: bytes | str, fragment: str) -> None:
    with pytest.raises(proto.ProtocolViolation, match=fragment) as info:
        proto.decode(frame)
    assert info.value.code == proto.CLOSE_PROTOCOL


@pytest.mark.parametrize("epoch", ["attack-epoch", "AB" * 8, "ab" * 7 + "a", "ab" * 8 + "a",
                                   "ab" * 7 + "g0", "ab" * 7 + ".>", " " + "ab" * 7 + "a", "",
                                   "\u0660" * 16, "ab" * 8 + "\n"])
def test_a_hello_epoch_must_be_16_lowercase_hex(epoch: str) -> None:
    frame = msgpack.packb({"type": "hello", "proto": 1, "gateway_id": "g", "epoch": epoch,
                           "kids": []})
    with pytest.raises(proto.ProtocolViolation, match="16 lowercase hex") as info:
        proto.decode(frame)
    assert info.value.code == proto.CLOSE_PROTOCOL
    assert epoch.strip() == "" or epoch not in str(info.value)  # never echoed back


def test_a_hello_lists_at_most_16_kids() -> None:
    hello = {"type": "hello", "proto": 1, "gateway_id": "g", "epoch": "ab" * 8}
    kids = [f"k{i}" for i in range(proto.MAX_HELLO_KIDS)]
    assert proto.decode(msgpack.packb({**hello, "kids": kids})).kids == tuple(kids)
    with pytest.raises(proto.ProtocolViolation, match="at most 16") as info:
        proto.decode(msgpack.packb({**hello, "kids": [*kids, "k16"]}))
    assert info.value.code == proto.CLOSE_PROTOCOL


@given(st.binary(min_size=8, max_size=8))
def test_every_epoch_of_the_spec_is_a_valid_hello(raw: bytes) -> None:
    hello = proto.Hello("g", raw.hex(), ())
    assert proto.is_epoch(raw.hex()) and proto.decode(proto.encode(hello)) == hello


def test_too_many_events_is_too_big() -> None:
    frame = proto.encode(proto.Events(tuple(b"x" for _ in range(5))))
    with pytest.raises(proto.ProtocolViolation) as info:
        proto.decode(frame, max_events=4)
    assert info.value.code == proto.CLOSE_TOO_BIG


@given(st.binary(max_size=200))
def test_decode_garbage_only_raises_protocol_violation(frame: bytes) -> None:
    try:
        proto.decode(frame)
    except proto.ProtocolViolation:
        pass


def test_decode_one_byte_at_a_time_prefixes_are_violations() -> None:
    frame = proto.encode(MESSAGES[0])
    for cut in range(len(frame)):
        with pytest.raises(proto.ProtocolViolation):
            proto.decode(frame[:cut])


def test_backoff_capped_exponential_full_jitter() -> None:
    top = [proto.backoff_delay(n, initial=0.5, maximum=30, random=lambda: 1.0) for n in range(10)]
    assert top == [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30]
    assert proto.backoff_delay(3, initial=0.5, maximum=30, random=lambda: 0.0) == 0.0
    assert proto.backoff_delay(10_000, initial=0.5, maximum=30, random=lambda: 0.5) == 15


def test_window_bookkeeping() -> None:
    window = proto.Window(2, start_after=10)
    assert window.can_send and window.next_after == 10
    window.sent(15)
    window.sent(20)
    assert not window.can_send and window.in_flight == 2
    with pytest.raises(RuntimeError):
        window.sent(25)
    assert window.acked(12)  # partial ack of the first frame keeps it in flight
    assert window.in_flight == 2
    assert window.acked(15)
    assert window.in_flight == 1 and window.can_send
    assert not window.acked(14)  # stale cumulative ack: harmless
    with pytest.raises(proto.ProtocolViolation):
        window.acked(21)  # never sent
    assert window.acked(20)
    assert window.in_flight == 0 and window.acked_seq == 20


@pytest.mark.parametrize(("body", "expected"), [
    ({"type": "command"}, proto.Command("", None, None, None)),
    ({"type": "command", "id": 5, "name": "x"}, proto.Command("", "x", None, None)),
    ({"type": "command", "id": "", "name": "x"}, proto.Command("", "x", None, None)),
    ({"type": "command", "id": "c", "name": 7, "target": "t", "args": [1]},
     proto.Command("c", 7, "t", [1])),
])
def test_command_decode_is_lenient(body: dict, expected: proto.Command) -> None:
    # A malformed command is answered with a rejection by the gateway, never a close.
    assert proto.decode(msgpack.packb(body)) == expected


def test_command_request_defaults_args() -> None:
    assert proto.Command("c", "requestMeters", None, None).request() == {
        "id": "c", "name": "requestMeters", "target": None, "args": {}}
