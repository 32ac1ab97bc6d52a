"""Framing: whole buffer, byte at a time, every split point, garbage prefix, bad CRC."""

from __future__ import annotations

import pytest

from drivers.sas import framing, messages
from drivers.sas.crc import append_crc
from drivers.sas.framing import Ack, Busy, Corrupt, Data, Event, ExceptionByte, Expectation, Nack

A = 1
CREDITS = Expectation(A, 0x1A, length=8)
VERSION = Expectation(A, 0x54, length_byte=True)
ACK = Expectation(A, 0x01)
GP_RTE = Expectation(A, None, rte=True)

CASES = [
    (CREDITS, messages.encode_current_credits(A, 1234), Data),
    (VERSION, messages.encode_version(A, messages.VersionInfo("602", "SER-9")), Data),
    (GP_RTE, messages.encode_event(A, 0x7E, bytes(8)), Event),
    (GP_RTE, messages.encode_event(A, 0x11), Event),
    (CREDITS, messages.encode_event(A, 0x4F, bytes(6)), Event),
    (CREDITS, bytes([A | 0x80]), Nack),
    (CREDITS, bytes([A, 0x00]), Busy),
    (ACK, bytes([A, 0x00]), Busy),
]


def _collect(framer: framing.Framer, exp: Expectation, chunks: list[bytes]) -> list[object]:
    out = []
    for chunk in chunks:
        framer.feed(chunk)
        while (answer := framer.next_answer(exp)) is not None:
            out.append(answer)
    while (answer := framer.next_answer(exp, quiet=True)) is not None:
        out.append(answer)
    return out


@pytest.mark.parametrize(("exp", "wire", "kind"), CASES)
def test_whole_and_byte_by_byte_and_every_split(exp: Expectation, wire: bytes, kind: type) -> None:
    whole = _collect(framing.Framer(), exp, [wire])
    assert len(whole) == 1 and isinstance(whole[0], kind)
    assert _collect(framing.Framer(), exp, [bytes([b]) for b in wire]) == whole
    for cut in range(1, len(wire)):
        assert _collect(framing.Framer(), exp, [wire[:cut], wire[cut:]]) == whole


@pytest.mark.parametrize(("exp", "wire", "kind"), CASES[:5])
def test_resync_after_garbage(exp: Expectation, wire: bytes, kind: type) -> None:
    framer = framing.Framer()
    out = _collect(framer, exp, [b"\x55\x99\x42" + wire])
    assert len(out) == 1 and isinstance(out[0], kind)
    assert framer.discarded == 3


def test_address_byte_followed_by_wrong_command_is_skipped() -> None:
    wire = messages.encode_current_credits(A, 7)
    framer = framing.Framer()
    out = _collect(framer, CREDITS, [bytes([A, 0x33]) + wire])
    assert out == [Data(wire)]


def test_bad_crc_is_corrupt() -> None:
    wire = bytearray(messages.encode_current_credits(A, 1234))
    wire[4] ^= 0x10
    assert _collect(framing.Framer(), CREDITS, [bytes(wire)]) == [Corrupt(bytes(wire))]


def test_lone_ack_needs_quiet() -> None:
    framer = framing.Framer()
    framer.feed(bytes([A]))
    assert framer.next_answer(ACK) is None
    assert framer.next_answer(ACK, quiet=True) == Ack()


def test_ack_followed_by_event_in_rte_mode() -> None:
    event = messages.encode_event(A, 0x7F, bytes(4))
    assert _collect(framing.Framer(), ACK, [event]) == [Event(0x7F, bytes(4))]


def test_non_rte_general_poll_answer_is_one_byte() -> None:
    exp = Expectation(A, None)
    assert _collect(framing.Framer(), exp, [b"\x11"]) == [ExceptionByte(0x11)]
    assert _collect(framing.Framer(), exp, [b"\x00"]) == [ExceptionByte(0)]


def test_implausible_length_byte_resyncs() -> None:
    framer = framing.Framer()
    good = append_crc(bytes([A, 0x54, 3]) + b"602")
    assert _collect(framer, VERSION, [bytes([A, 0x54, 0xFE]) + good]) == [Data(good)]


def test_busy_needs_quiet_and_a_clean_start() -> None:
    framer = framing.Framer()
    framer.feed(bytes([A, 0x00]))
    assert framer.next_answer(CREDITS) is None
    assert framer.next_answer(CREDITS, quiet=True) == Busy()
    framer.feed(bytes([0x42, A, 0x00]))  # tail of a broken frame, not a busy answer
    assert framer.next_answer(CREDITS, quiet=True) is None


def test_corrupted_event_is_never_an_ack() -> None:
    event = bytearray(messages.encode_event(A, 0x7F, bytes([0, 0, 1, 0])))
    event[1] = 0x00
    framer = framing.Framer()
    framer.feed(bytes(event))
    assert framer.next_answer(ACK) is None
    assert framer.next_answer(ACK, quiet=True) is None


def test_normal_mode_gp_still_recognises_an_event_frame() -> None:
    # After a link loss the host may not know the machine is still in RTE mode.
    exp = Expectation(A, None)
    event = messages.encode_event(A, 0x11)
    assert _collect(framing.Framer(), exp, [event]) == [Event(0x11, b"")]
    framer = framing.Framer()
    framer.feed(bytes([A]))  # exception code equal to the address: complete after the gap
    assert framer.next_answer(exp) is None
    assert framer.next_answer(exp, quiet=True) == ExceptionByte(A)


def test_lone_ack_followed_by_more_bytes_is_not_an_ack() -> None:
    framer = framing.Framer()
    framer.feed(bytes([A, 0x7F, 0x20, 0x1E, 0x84]))  # an event whose FF was corrupted
    assert framer.next_answer(ACK, quiet=True) is None
