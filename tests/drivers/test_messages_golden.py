"""Golden vectors for every message the host sends or decodes (reference sections 2.2, 3, 4, 6).

Frames were written by hand from the field tables of the reference; their CRCs come from a
bit-by-bit CRC-16/KERMIT checked against the reference's section 7 vectors (test_codecs.py runs
those), never from drivers.sas.crc. The section of the reference is in the comment of each row.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.sas import framing, messages
from drivers.sas.codes import Exc
from drivers.sas.errors import SasLocalProtocolError, SasRemoteProtocolError
from drivers.sas.messages import (
    Acked,
    BillAccepted,
    CardHeld,
    CashoutTicket,
    EnabledFeatures,
    EnabledGames,
    EnhancedValidationRecord,
    GameConfig,
    GameCount,
    GameEnded,
    GameRecall,
    GameSelectedData,
    GameStarted,
    HandpayInfo,
    HandpayResetResult,
    LegacyBonus,
    MachineClock,
    MeterReading,
    NoData,
    PendingCashout,
    ReelStopped,
    RomSignature,
    SelectedGame,
    SelectedMeters,
    ValidationId,
    ValidationStatus,
    VersionInfo,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "sas"
M = messages

# ---- requests: (section, poll, wire) ----------------------------------------------------------
REQUESTS = [
    ("2.2 GP", M.general_poll(1), "81"),
    ("2.2 GP", M.general_poll(0x7F), "ff"),
    ("7 LP 01", M.long_poll(1, 0x01), "01015108"),
    ("7 LP 02", M.long_poll(1, 0x02), "0102ca3a"),
    ("6 LP 06", M.long_poll(1, 0x06), "0106ee7c"),
    ("6 LP 07", M.long_poll(1, 0x07), "0107676d"),
    ("7 LP 0E on", M.rte_mode(1, True), "010e0145d1"),
    ("7 LP 0E off", M.rte_mode(1, False), "010e00ccc0"),
    *[(f"6 LP {c:02X} (R)", M.long_poll(1, c), f"01{c:02x}")
      for c in (0x0F, *range(0x10, 0x1D), 0x1E, 0x1F, 0x20, 0x3D, 0x48, 0x51, 0x54, 0x55,
                0x56, 0x57, 0x7E)],
    ("7 LP 21 seed 0", M.rom_signature(1, 0), "012100005c45"),
    ("6 LP 21 seed 1234", M.rom_signature(1, 0x1234), "012134120da7"),
    ("7 LP 2F 0C,00,01", M.selected_meters(1, 0, [0x0C, 0x00, 0x01]), "012f0500000c0001655b"),
    ("6 LP 2F 0C,00", M.selected_meters(1, 0, [0x0C, 0x00]), "012f0400000c008ca3"),
    ("6 LP 4C", M.set_validation_id(1, 1, 2), "014c010000020000b046"),
    ("6 LP 4D next", M.enhanced_validation(1, 0), "014d00c2ac"),
    ("6 LP 53 game 1", M.game_n_configuration(1, 1), "01530001b561"),
    ("6 LP 58", M.validation_number(1, 1, 12345678), "01580100000000123456789c95"),
    ("6 LP 6F 0000,0005", M.extended_meters(1, 0, [0x0000, 0x0005]), "016f060000000005003b09"),
    ("6 LP AF 0000,0005", M.extended_meters(1, 0, [0x0000, 0x0005], alternate=True),
     "01af0600000000050028a7"),
    ("7 LP 7F global", M.set_clock(0, dt.datetime(2024, 12, 31, 23, 59, 58)),
     "007f1231202423595811d3"),
    ("6 LP 7F addressed", M.set_clock(1, dt.datetime(2025, 1, 2, 13, 45, 30)),
     "017f010220251345308c01"),
    ("6 LP 94", M.long_poll(1, 0x94), "019475cb"),
    ("6 LP A0 game 0", M.enabled_features(1, 0), "01a000006c13"),
    ("6 LP B0 denom 01 + LP 1A", M.multi_denom(1, 0x01, M.long_poll(1, 0x1A)), "01b002011a6379"),
    ("6 LP B0 denom 01 + LP 6F", M.multi_denom(1, 0x01, M.long_poll(1, 0x6F, bytes.fromhex(
        "020000"))), "01b005016f0200008e50"),
]


@pytest.mark.parametrize(("section", "poll", "wire"), REQUESTS, ids=[r[0] for r in REQUESTS])
def test_request_golden(section: str, poll: messages.Poll, wire: str) -> None:
    assert poll.wire() == bytes.fromhex(wire)
    command = poll.command
    if command is not None:
        length = messages.request_length(command, poll.wire()[2] if len(poll.wire()) > 2 else None)
        assert length == len(poll.wire())


def test_request_rules() -> None:
    with pytest.raises(SasLocalProtocolError):
        M.long_poll(1, 0x1A, b"\x00")  # R type carries no data
    with pytest.raises(SasLocalProtocolError):
        M.long_poll(1, 0x0E)  # LP 0E needs its flag
    with pytest.raises(SasLocalProtocolError):
        M.long_poll(0, 0x01)  # only LP 7F may be global
    with pytest.raises(SasLocalProtocolError):
        M.long_poll(1, 0x6F, b"\x05\x00\x00")  # wrong length byte
    with pytest.raises(SasLocalProtocolError):
        M.selected_meters(1, 0, list(range(11)))
    with pytest.raises(SasLocalProtocolError):
        M.multi_denom(1, 1, M.general_poll(1))


# ---- answers: (section, command, frame, decoded) ----------------------------------------------
ANSWERS = [
    ("6 LP 01 ACK", 0x01, "01", Acked()),
    ("6 LP 0F", 0x0F, "010f0000001000123456000078900000111100000500000000426316",
     MeterReading(0x0F, {"cancelled_credits": 10, "coin_in": 123456, "coin_out": 7890,
                         "drop": 1111, "jackpot": 500, "games_played": 42})),
    ("6 LP 11", 0x11, "011100123456736d", MeterReading(0x11, {"coin_in": 123456})),
    ("6 LP 18", 0x18, "011812340056e0c2",
     MeterReading(0x18, {"games_since_power_up": 1234, "games_since_door_closed": 56})),
    ("6 LP 19", 0x19, "011900000001000000020000000300000004000000055cf4",
     MeterReading(0x19, {"coin_in": 1, "coin_out": 2, "drop": 3, "jackpot": 4,
                         "games_played": 5})),
    ("7 LP 1A", 0x1A, "011a00001234452d", MeterReading(0x1A, {"current_credits": 1234})),
    ("6 LP 1B", 0x1B, "011b00400000123456000001000000000000000000002769",
     HandpayInfo(0, 0x40, 123456, 0, 1)),
    ("6 LP 1C", 0x1C, "011c0000000100000002000000030000000400000005000000060000000700000008d38e",
     MeterReading(0x1C, {"coin_in": 1, "coin_out": 2, "drop": 3, "jackpot": 4, "games_played": 5,
                         "games_won": 6, "slot_door_opened_count": 7, "power_resets": 8})),
    ("6 LP 1E", 0x1E, "011e00000001000000020000000300000004000000050000000620d5",
     MeterReading(0x1E, {"bills_1": 1, "bills_5": 2, "bills_10": 3, "bills_20": 4, "bills_50": 5,
                         "bills_100": 6})),
    ("6 LP 20", 0x20, "0120000012009bc2", MeterReading(0x20, {"bills_total_dollars": 1200})),
    ("6 LP 2F", 0x2F, "012f0c00000c000012340000000100cedc",
     SelectedMeters(0x2F, 0, {0x0C: 1234, 0x00: 100})),
    ("6 LP 3D", 0x3D, "013d00001234000000250061d6", CashoutTicket(1234, 2500)),
    ("6 LP 48", 0x48, "014800030000000726f1", BillAccepted(0, 3, 7)),
    ("6 LP 4C", 0x4C, "014c010000020000b046", ValidationId(1, 2)),
    ("6 LP 4D", 0x4D,
     "014d00011121202610304500000000123456780000001000070001123120260000b4ce",
     EnhancedValidationRecord(0, 1, dt.datetime(2026, 11, 21, 10, 30, 45), 12345678, 1000, 7,
                              1, 12312026, 0)),
    ("6 LP 51", 0x51, "015100031ff7", GameCount(3)),
    ("6 LP 53", 0x53, "015300014154303030010500000053494d3030313935303054b0",
     GameConfig("AT", "000", 1, 5, 0, 0, "SIM001", "9500", game_number=1)),
    ("6 LP 54", 0x54, "015409363032414243313233d73a", VersionInfo("602", "ABC123")),
    ("6 LP 55", 0x55, "01550002f785", SelectedGame(2)),
    ("6 LP 56", 0x56, "01560502000100027cd0", EnabledGames((1, 2))),
    ("6 LP 56 none", 0x56, "015601005950", EnabledGames(())),
    ("6 LP 57", 0x57, "0157000000010000b46e", PendingCashout(0, 10000)),
    ("6 LP 58", 0x58, "015800eb47", ValidationStatus(0)),
    ("6 LP 6F", 0x6F, "016f110000000004000012340c000500000010004d9a",
     SelectedMeters(0x6F, 0, {0x0000: 1234, 0x000C: 1000})),
    ("6 LP AF", 0xAF, "01af090000050004000000422310", SelectedMeters(0xAF, 0, {0x0005: 42})),
    ("6 LP 7E", 0x7E, "017e11212026070509fa95",
     MachineClock(dt.datetime(2026, 11, 21, 7, 5, 9))),
    ("6 LP 94", 0x94, "019400e124", HandpayResetResult(0)),
    ("6 LP A0", 0xA0, "01a00000010203000000000000216e", EnabledFeatures(0, b"\x01\x02\x03")),
]


@pytest.mark.parametrize(("section", "command", "frame", "value"), ANSWERS,
                         ids=[a[0] for a in ANSWERS])
def test_answer_golden(section: str, command: int, frame: str, value: object) -> None:
    raw = bytes.fromhex(frame)
    assert messages.decode_answer(command, raw, 1) == value
    # The framer cuts exactly this frame for the poll's expectation (whole and after garbage).
    spec = messages.POLL_SPECS[command]
    exp = framing.Expectation(1, command, length=spec.answer if isinstance(spec.answer, int)
                              else None, length_byte=spec.answer == "length")
    f = framing.Framer()
    # A lone ACK counts only if nothing was discarded before it (framing.py docstring).
    f.feed(raw if value == Acked() else b"\x05\x06" + raw)
    answer = f.next_answer(exp, quiet=True)
    assert answer == (framing.Ack() if value == Acked() else framing.Data(raw))
    if command != 0x6F:  # the 6F vector uses a 5-byte meter where the encoder picks 4
        assert messages.encode_answer(1, command, value) == raw  # type: ignore[arg-type]


def test_rom_signature_answer() -> None:  # ref 6, LP 21 delayed answer
    frame = bytes.fromhex("0121cdab5724")
    assert messages.decode_rom_signature(frame, 1) == RomSignature(0xABCD)
    assert messages.encode_answer(1, 0x21, RomSignature(0xABCD)) == frame


@pytest.mark.parametrize(("command", "frame"), [
    (0x1A, "011a00001234452c"),  # CRC off by one
    (0x1A, "011b00001234452d"),  # wrong command
    (0x1A, "021a00001234"),  # wrong address, short
    (0x11, "01110012345a" + "0000"),  # bad CRC
    (0x56, "01560302000100"),  # count does not match length byte
    (0x7E, "017e13212026070509"),  # month 13 (CRC is wrong too: decoded either way)
    (0x01, "02"),  # ACK from someone else
])
def test_answer_rejects_garbage(command: int, frame: str) -> None:
    with pytest.raises(SasRemoteProtocolError):
        messages.decode_answer(command, bytes.fromhex(frame), 1)


def test_answer_rejects_invalid_bcd() -> None:
    frame = messages.encode_answer(1, 0x1A, MeterReading(0x1A, {"current_credits": 0}))
    body = frame[:2] + b"\x00\x00\x1a\x00"
    from drivers.sas.crc import append_crc
    with pytest.raises(SasRemoteProtocolError):
        messages.decode_answer(0x1A, append_crc(body), 1)


# ---- general poll exceptions (ref 3) ----------------------------------------------------------
def _exception_table() -> list[tuple[int, str]]:
    rows = []
    for line in (DATA / "exceptions.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            code, name = line.split()[:2]
            rows.append((int(code, 16), name))
    return rows


EXCEPTIONS = _exception_table()


def test_exception_table_is_complete() -> None:
    assert {c for c, _ in EXCEPTIONS} == {int(e) for e in Exc} - {0xFF}


@pytest.mark.parametrize(("code", "name"), EXCEPTIONS, ids=[f"{c:02X}" for c, _ in EXCEPTIONS])
def test_exception_code_golden(code: int, name: str) -> None:
    assert messages.exception_name(code) == name
    assert Exc[name] == code
    # Normal mode: the GP answer is the bare code byte (ref 2.2).
    f = framing.Framer()
    f.feed(bytes([code]))
    assert f.next_answer(framing.Expectation(1), quiet=True) == framing.ExceptionByte(code)
    # RTE mode: a data-less event frame `a FF code crc` (ref 4), except the codes with data.
    if code not in messages.RTE_DATA_LENGTH:
        frame = messages.encode_event(1, code)
        assert len(frame) == 5 and frame[:3] == bytes([1, 0xFF, code])
        assert messages.decode_event(frame, 1) == (code, b"")
        assert messages.decode_event_data(code, b"") == NoData()


def test_unknown_exception_name() -> None:
    assert messages.exception_name(0x26) == "UNKNOWN_26"


# ---- RTE events (ref 4): (section, frame, decoded) --------------------------------------------
EVENTS = [
    ("4 data-less 11", "01ff1114a4", NoData()),
    ("4 7E game started", "01ff7e000500001234000087af", GameStarted(5, 1234, 0, 0)),
    ("4 7F game ended", "01ff7f00000050754f", GameEnded(50)),
    ("4 4F bill", "01ff4f0003000000092be1", BillAccepted(0, 3, 9)),
    ("4 88 reel stopped", "01ff8802152470", ReelStopped(2, 0x15)),
    ("4 8A game recall", "01ff8a0001000345cc", GameRecall(1, 3)),
    ("4 8B card held", "01ff8b83bf04", CardHeld(3, True)),
    ("4 8C game selected", "01ff8c0002cb44", GameSelectedData(2)),
    ("4 7C legacy bonus", "01ff7c020000010000000000503a63", LegacyBonus(2, 100, 0, 50)),
]


@pytest.mark.parametrize(("section", "frame", "value"), EVENTS, ids=[e[0] for e in EVENTS])
def test_event_golden(section: str, frame: str, value: messages.EventData) -> None:
    raw = bytes.fromhex(frame)
    code, data = messages.decode_event(raw, 1)
    assert messages.decode_event_data(code, data) == value
    assert messages.encode_event(1, code, messages.encode_event_data(value)) == raw
    f = framing.Framer()
    for i in range(len(raw)):  # byte by byte
        f.feed(raw[i:i + 1])
        got = f.next_answer(framing.Expectation(1, rte=True))
        assert (got is None) == (i < len(raw) - 1)
    assert got == framing.Event(code, data)


def test_event_data_length_is_checked() -> None:
    with pytest.raises(SasRemoteProtocolError):
        messages.decode_event_data(0x7F, b"\x00")
    with pytest.raises(SasRemoteProtocolError):
        messages.decode_event_data(0x7F, b"\x00\x00\x00\xaa")  # invalid BCD


@given(st.integers(0, 99_999_999), st.integers(0, 9999), st.integers(0, 255))
def test_meter_and_event_round_trip(value: int, small: int, byte: int) -> None:
    reading = MeterReading(0x0F, dict.fromkeys(
        ("cancelled_credits", "coin_in", "coin_out", "drop", "jackpot", "games_played"), value))
    assert messages.decode_answer(0x0F, messages.encode_answer(1, 0x0F, reading), 1) == reading
    meters = SelectedMeters(0x6F, small, {0x0000: value, 0x000C: small})
    assert messages.decode_answer(0x6F, messages.encode_answer(1, 0x6F, meters), 1) == meters
    for ev in (GameStarted(small, value, byte, byte), GameEnded(value),
               LegacyBonus(byte, value, byte, value)):
        assert messages.decode_event_data(
            {GameStarted: 0x7E, GameEnded: 0x7F, LegacyBonus: 0x7C}[type(ev)],
            messages.encode_event_data(ev)) == ev


def test_every_answer_shape_has_one_codec_and_no_raw_codes_are_matched() -> None:
    """One codec per message in a code -> codec registry (answers.ANSWERS, event_data.EVENTS),
    not parallel matches by direction: each long poll with a data answer has exactly one codec,
    every RTE code with data has one, and no module matches on a raw code (`case 0x1B:`)."""
    import pathlib
    import re

    from drivers.sas import answers, event_data, messages
    from drivers.sas.codes import RTE_DATA_LENGTH

    data_answers = {c for c, spec in messages.POLL_SPECS.items()
                    if spec.answer != "ack" and c != 0xB0}
    assert data_answers == set(answers.ANSWERS) - {0x21}
    assert set(event_data.EVENTS) == set(RTE_DATA_LENGTH)
    root = pathlib.Path(messages.__file__).parent
    for path in root.glob("*.py"):
        assert not re.search(r"case 0x[0-9A-Fa-f]+", path.read_text()), path.name
