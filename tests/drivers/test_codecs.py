"""CRC vectors (reference section 7), BCD, and message encode/decode against golden frames."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.sas import bcd, messages
from drivers.sas.bcd import BcdError
from drivers.sas.crc import append_crc, check_crc, crc16
from drivers.sas.errors import SasLocalProtocolError, SasRemoteProtocolError

CRC_VECTORS = [
    ("313233343536373839", 0x2189, "313233343536373839" + "8921"),
    ("0101", 0x0851, "01015108"),
    ("0102", 0x3ACA, "0102ca3a"),
    ("010e01", 0xD145, "010e0145d1"),
    ("010e00", 0xC0CC, "010e00ccc0"),
    ("01210000", 0x455C, "012100005c45"),
    ("007f123120242359 58".replace(" ", ""), 0xD311, "007f12312024235958" + "11d3"),
    ("012f050000 0c0001".replace(" ", ""), 0x5B65, "012f0500000c0001" + "655b"),
    ("011a00001234", 0x2D45, "011a00001234452d"),
    ("0174ff000000", 0xF91A, "0174ff0000001af9"),
    ("01", 0x1189, "018911"),
]


@pytest.mark.parametrize(("data", "crc", "wire"), CRC_VECTORS)
def test_crc_vectors(data: str, crc: int, wire: str) -> None:
    raw = bytes.fromhex(data)
    assert crc16(raw) == crc
    assert append_crc(raw) == bytes.fromhex(wire)
    assert check_crc(bytes.fromhex(wire))
    assert crc16(bytes.fromhex(wire)) == 0


def test_crc_detects_a_flipped_bit() -> None:
    frame = bytearray(append_crc(b"\x01\x1a\x00\x00\x12\x34"))
    frame[3] ^= 0x04
    assert not check_crc(frame)


@given(st.integers(min_value=1, max_value=8).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(min_value=0, max_value=10 ** (2 * n) - 1))))
def test_bcd_round_trip(case: tuple[int, int]) -> None:
    length, value = case
    encoded = bcd.encode(value, length)
    assert len(encoded) == length
    assert bcd.decode(encoded) == value


def test_bcd_known_values() -> None:
    assert bcd.encode(1234, 4) == bytes.fromhex("00001234")
    assert bcd.decode(bytes.fromhex("99999999")) == 99999999


@pytest.mark.parametrize("raw", ["0a", "a0", "1f", "ff", "00001a"])
def test_bcd_rejects_invalid_nibbles(raw: str) -> None:
    with pytest.raises(BcdError):
        bcd.decode(bytes.fromhex(raw))
    assert issubclass(BcdError, SasRemoteProtocolError)


def test_bcd_rejects_overflow() -> None:
    with pytest.raises(ValueError):
        bcd.encode(100, 1)


def test_host_messages_against_spec_frames() -> None:
    assert messages.general_poll(1).wire() == b"\x81"
    assert messages.long_poll(1, 0x01).wire() == bytes.fromhex("01015108")
    assert messages.long_poll(1, 0x02).wire() == bytes.fromhex("0102ca3a")
    assert messages.long_poll(1, 0x0E, b"\x01").wire() == bytes.fromhex("010e0145d1")
    assert messages.long_poll(1, 0x1A).wire() == b"\x01\x1a"  # type R: no CRC
    with pytest.raises(SasLocalProtocolError):
        messages.long_poll(1, 0x1A, b"\x00")
    with pytest.raises(SasLocalProtocolError):
        messages.general_poll(128)


def test_current_credits_golden() -> None:
    frame = bytes.fromhex("011a00001234452d")
    assert messages.encode_current_credits(1, 1234) == frame
    assert messages.decode_current_credits(frame, 1) == 1234
    with pytest.raises(SasRemoteProtocolError):
        messages.decode_current_credits(frame[:-1] + b"\x00", 1)


def test_game_config_round_trip() -> None:
    cfg = messages.GameConfig(denomination_code=0x02, max_bet=10, game_options=0x0102)
    frame = messages.encode_game_config(3, cfg)
    assert len(frame) == 24 and frame[:2] == b"\x03\x1f" and check_crc(frame)
    assert messages.decode_game_config(frame, 3) == cfg


def test_version_round_trip() -> None:
    info = messages.VersionInfo("602", "ABC123")
    frame = messages.encode_version(1, info)
    assert frame[:3] == bytes([1, 0x54, 9]) and len(frame) == 3 + 9 + 2
    assert messages.decode_version(frame, 1) == info


def test_event_frame() -> None:
    frame = messages.encode_event(1, 0x7F, bytes.fromhex("00000050"))
    assert frame[:3] == b"\x01\xff\x7f" and len(frame) == 9
    assert messages.decode_event(frame, 1) == (0x7F, bytes.fromhex("00000050"))
    assert messages.encode_event(1, 0x11) == append_crc(b"\x01\xff\x11")
    with pytest.raises(SasRemoteProtocolError):
        messages.decode_event(frame[:-1] + b"\x00", 1)
