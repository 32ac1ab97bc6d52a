"""SAS -> catalogue mapping and framing fuzz (the import rule is tests/test_architecture.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.base import MachineRef
from drivers.sas import bcd, framing
from drivers.sas.mapping import exception_event

REF = MachineRef("p", 1)


@pytest.mark.parametrize(("code", "kind", "data"), [
    (0x11, "doorOpened", {"door": "main"}), (0x12, "doorClosed", {"door": "main"}),
    (0x13, "doorOpened", {"door": "drop"}), (0x16, "doorClosed", {"door": "card_cage"}),
    (0x19, "doorOpened", {"door": "cashbox"}), (0x1E, "doorClosed", {"door": "belly"}),
    (0x17, "powerApplied", {}), (0x18, "powerLost", {}),
    (0x20, "tilt", {"kind": "general_tilt"}), (0x61, "tilt", {"kind": "printer_paper_out"}),
    (0x3B, "tilt", {"kind": "low_backup_battery"}), (0x46, "tilt", {"kind": "reel_disconnected"}),
    (0x51, "handpayPending", {}), (0x52, "handpayReset", {}), (0x70, "bufferOverflow", {}),
    (0x3D, "ticketPrinted", {}), (0x67, "ticketInserted", {}),
    (0x4A, "billAccepted", {"amount_cents": 2000}), (0x50, "billAccepted", {"amount_cents": 20000}),
    (0x1B, "machineException", {"code": 0x1B, "name": "cashbox_removed"}),
    (0xE5, "machineException", {"code": 0xE5, "name": "exception_e5"}),
])
def test_exception_mapping(code: int, kind: str, data: dict[str, object]) -> None:
    event = exception_event(REF, code, b"", 1, 5.0)
    assert (event.type, dict(event.data)) == (kind, data)
    assert event.source is not None and event.source.code == code and event.monotonic == 5.0


def test_rte_payloads_in_cents_of_the_accounting_denomination() -> None:
    bet = exception_event(REF, 0x7E, bcd.encode(3, 2) + bytes(6), 5, 0.0)
    assert dict(bet.data) == {"wager_credits": 3, "wager_cents": 15}
    win = exception_event(REF, 0x7F, bcd.encode(40, 4), 5, 0.0)
    assert dict(win.data) == {"win_credits": 40, "win_cents": 200}
    bill = exception_event(REF, 0x4F, bytes.fromhex("010400000007"), 5, 0.0)
    assert bill.type == "billAccepted" and bill.data["amount_cents"] == 2000
    assert exception_event(REF, 0x8C, bcd.encode(2, 2), 1, 0.0).type == "gameSelected"


def test_bad_bcd_keeps_the_event() -> None:
    event = exception_event(REF, 0x7F, b"\xaa\x00\x00\x00", 1, 0.0)
    assert event.type == "machineException" and event.source.payload == b"\xaa\x00\x00\x00"


EXPECTATIONS = [framing.Expectation(1, 0x1A, rte=True, length=8),
                framing.Expectation(1, 0x54, length_byte=True),
                framing.Expectation(1, 0x01), framing.Expectation(1, None, rte=True),
                framing.Expectation(1, None)]


@given(st.binary(max_size=200), st.sampled_from(EXPECTATIONS), st.booleans())
def test_framer_never_raises_and_always_progresses(data: bytes, exp: framing.Expectation,
                                                   quiet: bool) -> None:
    framer = framing.Framer()
    framer.feed(data)
    for _ in range(len(data) + 1):
        before = framer.pending()
        if framer.next_answer(exp, quiet=quiet) is None:
            break
        assert framer.pending() < before
