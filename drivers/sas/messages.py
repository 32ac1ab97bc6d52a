"""Encoders and decoders for the SAS messages the host and the simulator use (reference 2.2, 4, 6).

Host -> machine messages are returned as `(first_byte, rest)` pairs: the first byte goes out with the
wakeup bit set, the rest without (reference section 1). Machine -> host messages are plain bytes.
Both roles share this module, so tests check it against the golden vectors of reference section 7.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from drivers.sas import bcd
from drivers.sas.codes import BILL_DENOMINATION_CENTS, RTE_DATA_LENGTH, Exc, LongPoll
from drivers.sas.crc import append_crc, check_crc
from drivers.sas.errors import SasLocalProtocolError, SasRemoteProtocolError

__all__ = [
    "POLL_SPECS", "Acked", "AftStatus", "BillAccepted", "CardHeld", "CashoutTicket", "EnabledFeatures",
    "EnabledGames", "EnhancedValidationRecord", "EventData", "GameConfig", "GameCount",
    "GameEnded", "GameRecall", "GameSelectedData", "GameStarted", "HandpayInfo",
    "HandpayResetResult", "LastBill", "LegacyBonus", "LongPollAnswer", "MachineClock",
    "MeterReading", "NoData", "PendingCashout", "Poll", "PollSpec", "ReelStopped",
    "RomSignature", "SelectedGame", "SelectedMeters", "ValidationId", "ValidationStatus",
    "VersionInfo", "aft_status", "decode_answer", "decode_clock", "decode_current_credits", "decode_event",
    "decode_event_data", "decode_game_config", "decode_rom_signature", "decode_version",
    "enabled_features", "encode_answer", "encode_current_credits", "encode_event",
    "encode_event_data", "encode_game_config", "encode_version", "enhanced_validation",
    "exception_name", "extended_meters", "game_n_configuration", "general_poll", "long_poll",
    "multi_denom", "request_length", "rom_signature", "rte_mode", "selected_meters",
    "set_clock", "set_validation_id", "validation_number",
]


@dataclass(frozen=True, slots=True)
class Poll:
    """One host message. `command` is None for a general poll; `data` excludes address/cmd/CRC."""

    address: int
    command: int | None = None
    data: bytes = b""
    crc: bool = False

    def wire(self) -> bytes:
        """The bytes on the wire; the first one carries the wakeup bit."""
        if self.command is None:
            return bytes([0x80 | self.address])
        body = bytes([self.address, self.command]) + self.data
        return append_crc(body) if self.crc else body

    @property
    def key(self) -> tuple[int, int | None, bytes]:
        """What the machine compares to decide implied ACK vs NACK (address + command)."""
        return (self.address, self.command, self.data)


def _check_address(address: int) -> None:
    if not 0 <= address <= 127:
        raise SasLocalProtocolError(f"SAS address {address} outside 0..127")


def general_poll(address: int) -> Poll:
    _check_address(address)
    return Poll(address)


def long_poll(address: int, command: int, data: bytes = b"") -> Poll:
    """Long poll `command` with `data` (after the command, before the CRC). Type S/M/G polls
    carry a CRC, type R reads do not (reference 2.2); address 0 is only for global polls."""
    _check_address(address)
    spec = POLL_SPECS.get(command)
    crc = spec is not None and spec.kind != "R"
    if not crc and data:
        raise SasLocalProtocolError(f"LP {command:02X} is a read and takes no data")
    if spec is not None and spec.data is not None and len(data) != spec.data:
        raise SasLocalProtocolError(f"LP {command:02X} takes {spec.data} data bytes")
    if spec is not None and spec.data is None and (not data or data[0] != len(data) - 1):
        raise SasLocalProtocolError(f"LP {command:02X} needs a correct length byte")
    if address == 0 and command != LongPoll.SET_CLOCK:
        raise SasLocalProtocolError(f"LP {command:02X} cannot be sent to address 0")
    return Poll(address, command, data, crc=crc)


def _payload(frame: bytes, address: int, command: int, length: int) -> bytes:
    if len(frame) != length or frame[0] != address or frame[1] != command:
        raise SasRemoteProtocolError(f"unexpected answer {frame.hex()} to LP {command:02X}")
    if not check_crc(frame):
        raise SasRemoteProtocolError(f"bad CRC in {frame.hex()}")
    return frame[2:-2]


# LP 1A current credits: `a 1A credits(4 BCD) crc`, 8 bytes.
def encode_current_credits(address: int, credits: int) -> bytes:
    return append_crc(bytes([address, LongPoll.CURRENT_CREDITS]) + bcd.encode(credits, 4))


def decode_current_credits(frame: bytes, address: int) -> int:
    return bcd.decode(_payload(frame, address, LongPoll.CURRENT_CREDITS, 8))


@dataclass(frozen=True, slots=True)
class GameConfig:
    """LP 1F answer. `denomination_code` is the accounting denomination (codes.DENOMINATION_CENTS)."""

    game_id: str = "AT"
    additional_id: str = "000"
    denomination_code: int = 0x01
    max_bet: int = 5
    progressive_group: int = 0
    game_options: int = 0
    paytable_id: str = "SIM001"
    base_percent: str = "9500"
    game_number: int = 0  # LP 53 only (LP 1F describes the whole machine)


def _game_config_body(config: GameConfig) -> bytes:
    return (config.game_id.encode("ascii")[:2].ljust(2)
            + config.additional_id.encode("ascii")[:3].ljust(3)
            + bytes([config.denomination_code, config.max_bet, config.progressive_group])
            + config.game_options.to_bytes(2, "little")
            + config.paytable_id.encode("ascii")[:6].ljust(6)
            + config.base_percent.encode("ascii")[:4].ljust(4))


def encode_game_config(address: int, config: GameConfig) -> bytes:
    return append_crc(bytes([address, LongPoll.GAME_CONFIGURATION]) + _game_config_body(config))


def _game_config(p: bytes) -> GameConfig:
    return GameConfig(_ascii(p[0:2]), _ascii(p[2:5]), p[5], p[6], p[7],
                      int.from_bytes(p[8:10], "little"), _ascii(p[10:16]), _ascii(p[16:20]))


def decode_game_config(frame: bytes, address: int) -> GameConfig:
    return _game_config(_payload(frame, address, LongPoll.GAME_CONFIGURATION, 24))


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """LP 54 answer: SAS version ("602") and the machine's serial number."""

    sas_version: str
    serial: str


def encode_version(address: int, info: VersionInfo) -> bytes:
    text = info.sas_version.encode("ascii")[:3].ljust(3) + info.serial.encode("ascii")[:40]
    return append_crc(bytes([address, LongPoll.VERSION_AND_SERIAL, len(text)]) + text)


def decode_version(frame: bytes, address: int) -> VersionInfo:
    if len(frame) < 3:
        raise SasRemoteProtocolError("short LP 54 answer")
    p = _payload(frame, address, LongPoll.VERSION_AND_SERIAL, 3 + frame[2] + 2)
    try:
        text = p[1:].decode("ascii")
    except UnicodeDecodeError as exc:
        raise SasRemoteProtocolError("non-ASCII serial in LP 54 answer") from exc
    return VersionInfo(text[:3], text[3:].strip())


# RTE event frame: `a FF code data crc` (reference section 4).
def encode_event(address: int, code: int, data: bytes = b"") -> bytes:
    return append_crc(bytes([address, 0xFF, code]) + data)


def decode_event(frame: bytes, address: int) -> tuple[int, bytes]:
    if len(frame) < 5 or frame[0] != address or frame[1] != 0xFF:
        raise SasRemoteProtocolError(f"not an RTE event frame: {frame.hex()}")
    if not check_crc(frame):
        raise SasRemoteProtocolError(f"bad CRC in {frame.hex()}")
    return frame[2], bytes(frame[3:-2])


# ---- Long-poll shapes (reference section 6) ----------------------------------------------------

@dataclass(frozen=True, slots=True)
class PollSpec:
    """`kind` is the poll type of reference 2.2 (R, S, M; G = S sent to address 0). `data` is the
    request's data length (None = variable, with a length byte). `answer` is the total length of a
    fixed answer, "ack" (the lone address byte) or "length" (a length byte at offset 2)."""

    kind: str
    data: int | None
    answer: int | str


_METER_LP = {c: PollSpec("R", 0, 8) for c in range(0x10, 0x18)}
POLL_SPECS: dict[int, PollSpec] = {
    0x01: PollSpec("S", 0, "ack"), 0x02: PollSpec("S", 0, "ack"),
    0x06: PollSpec("S", 0, "ack"), 0x07: PollSpec("S", 0, "ack"),
    0x0E: PollSpec("S", 1, "ack"), 0x0F: PollSpec("R", 0, 28), **_METER_LP,
    0x18: PollSpec("R", 0, 8), 0x19: PollSpec("R", 0, 24), 0x1A: PollSpec("R", 0, 8),
    0x1B: PollSpec("R", 0, 24), 0x1C: PollSpec("R", 0, 36), 0x1E: PollSpec("R", 0, 28),
    0x1F: PollSpec("R", 0, 24), 0x20: PollSpec("R", 0, 8), 0x21: PollSpec("S", 2, "ack"),
    0x2F: PollSpec("M", None, "length"), 0x3D: PollSpec("R", 0, 13), 0x48: PollSpec("R", 0, 10),
    0x4C: PollSpec("S", 6, 10), 0x4D: PollSpec("S", 1, 35), 0x51: PollSpec("R", 0, 6),
    0x53: PollSpec("M", 2, 26), 0x54: PollSpec("R", 0, "length"), 0x55: PollSpec("R", 0, 6),
    0x56: PollSpec("R", 0, "length"), 0x57: PollSpec("R", 0, 10), 0x58: PollSpec("S", 9, 5),
    0x6F: PollSpec("M", None, "length"), 0xAF: PollSpec("M", None, "length"),
    0x74: PollSpec("S", 4, "length"),
    0x7E: PollSpec("R", 0, 11), 0x7F: PollSpec("S", 7, "ack"), 0x94: PollSpec("S", 0, 5),
    0xA0: PollSpec("M", 2, 15), 0xB0: PollSpec("S", None, "length"),
}


def request_length(command: int, length_byte: int | None = None) -> int | None:
    """Total length of a request (address to CRC), as the machine needs to know it; None if
    the command is unknown or the length byte has not arrived yet."""
    spec = POLL_SPECS.get(command)
    if spec is None or spec.kind == "R":
        return 2
    if spec.data is not None:
        return 2 + spec.data + 2
    return None if length_byte is None else 3 + length_byte + 2


# ---- Typed requests ---------------------------------------------------------------------------

def rte_mode(address: int, enable: bool) -> Poll:
    return long_poll(address, LongPoll.RTE_MODE, b"\x01" if enable else b"\x00")


def rom_signature(address: int, seed: int) -> Poll:
    return long_poll(address, LongPoll.ROM_SIGNATURE, seed.to_bytes(2, "little"))


def selected_meters(address: int, game: int, codes: Sequence[int]) -> Poll:
    """LP 2F: up to 10 one-byte meter codes of `game` (0 = whole machine)."""
    if not 1 <= len(codes) <= 10:
        raise SasLocalProtocolError("LP 2F takes 1 to 10 meter codes")
    body = bcd.encode(game, 2) + bytes(codes)
    return long_poll(address, LongPoll.SELECTED_METERS, bytes([len(body)]) + body)


def extended_meters(address: int, game: int, codes: Sequence[int], *, alternate: bool = False,
                    ) -> Poll:
    """LP 6F (or AF with `alternate`): up to 10 two-byte meter codes, LSB first (ref 6: 10 or 12
    [unsure], so 10)."""
    if not 1 <= len(codes) <= 10:
        raise SasLocalProtocolError("LP 6F/AF takes 1 to 10 meter codes")
    body = bcd.encode(game, 2) + b"".join(c.to_bytes(2, "little") for c in codes)
    command = LongPoll.EXTENDED_METERS_ALT if alternate else LongPoll.EXTENDED_METERS
    return long_poll(address, command, bytes([len(body)]) + body)


def set_validation_id(address: int, machine_id: int, sequence: int) -> Poll:
    return long_poll(address, LongPoll.SET_VALIDATION_ID,
                     machine_id.to_bytes(3, "little") + sequence.to_bytes(3, "little"))


def enhanced_validation(address: int, function: int) -> Poll:
    return long_poll(address, LongPoll.ENHANCED_VALIDATION, bytes([function]))


def game_n_configuration(address: int, game: int) -> Poll:
    return long_poll(address, LongPoll.GAME_N_CONFIGURATION, bcd.encode(game, 2))


def validation_number(address: int, system_id: int, number: int) -> Poll:
    return long_poll(address, LongPoll.VALIDATION_NUMBER,
                     bcd.encode(system_id, 1) + bcd.encode(number, 8))


def set_clock(address: int, when: dt.datetime) -> Poll:
    """LP 7F; address 0 makes it the global broadcast (type G, nobody answers)."""
    return long_poll(address, LongPoll.SET_CLOCK, _encode_date(when.date()) + _encode_time(
        when.time()))


def aft_status(address: int) -> Poll:
    """LP 74 with lock code FF (interrogate only: locks nothing), condition 00, timeout 0000:
    the answer carries the machine's asset number (reference 6)."""
    return long_poll(address, LongPoll.AFT_STATUS, b"\xff\x00\x00\x00")


def enabled_features(address: int, game: int = 0) -> Poll:
    return long_poll(address, LongPoll.ENABLED_FEATURES, bcd.encode(game, 2))


def multi_denom(address: int, denomination_code: int, base: Poll) -> Poll:
    """LP B0 preamble: `a B0 len denom basecmd data crc` around the base poll `base`."""
    if base.command is None or base.address != address:
        raise SasLocalProtocolError("the B0 preamble wraps a long poll to the same address")
    body = bytes([denomination_code, base.command]) + base.data
    return long_poll(address, LongPoll.MULTI_DENOM, bytes([len(body)]) + body)


# ---- Typed answers ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class MeterReading:
    """LP 0F, 10-18, 19, 1A, 1C, 1E, 20: named meters (credits unless the name says otherwise;
    `bills_*` and `*_count` are quantities, `bills_total_dollars` whole dollars)."""

    command: int
    meters: Mapping[str, int]


METER_NAMES: dict[int, tuple[tuple[str, int], ...]] = {
    0x0F: (("cancelled_credits", 4), ("coin_in", 4), ("coin_out", 4), ("drop", 4),
           ("jackpot", 4), ("games_played", 4)),
    0x10: (("cancelled_credits", 4),), 0x11: (("coin_in", 4),), 0x12: (("coin_out", 4),),
    0x13: (("drop", 4),), 0x14: (("jackpot", 4),), 0x15: (("games_played", 4),),
    0x16: (("games_won", 4),), 0x17: (("games_lost", 4),),
    0x18: (("games_since_power_up", 2), ("games_since_door_closed", 2)),
    0x19: (("coin_in", 4), ("coin_out", 4), ("drop", 4), ("jackpot", 4), ("games_played", 4)),
    0x1A: (("current_credits", 4),),
    0x1C: (("coin_in", 4), ("coin_out", 4), ("drop", 4), ("jackpot", 4), ("games_played", 4),
           ("games_won", 4), ("slot_door_opened_count", 4), ("power_resets", 4)),
    0x1E: (("bills_1", 4), ("bills_5", 4), ("bills_10", 4), ("bills_20", 4), ("bills_50", 4),
           ("bills_100", 4)),
    0x20: (("bills_total_dollars", 4),),
}


@dataclass(frozen=True, slots=True)
class HandpayInfo:
    """LP 1B. `level`: 01-20 progressive level, 40 non-progressive, 80 cancelled credits."""

    progressive_group: int
    level: int
    amount_cents: int
    partial_pay_cents: int
    reset_id: int


@dataclass(frozen=True, slots=True)
class RomSignature:
    signature: int


@dataclass(frozen=True, slots=True)
class SelectedMeters:
    """LP 2F (1-byte codes) and LP 6F/AF (2-byte codes): meter code -> value for `game`."""

    command: int
    game: int
    meters: Mapping[int, int]


@dataclass(frozen=True, slots=True)
class CashoutTicket:
    validation_number: int
    amount_cents: int


@dataclass(frozen=True, slots=True)
class LastBill:
    country_code: int
    denomination_code: int
    count: int

    @property
    def amount_cents(self) -> int:
        return BILL_DENOMINATION_CENTS.get(self.denomination_code, 0)


@dataclass(frozen=True, slots=True)
class ValidationId:
    machine_id: int
    sequence: int


@dataclass(frozen=True, slots=True)
class EnhancedValidationRecord:
    validation_type: int
    index: int
    when: dt.datetime | None
    validation_number: int
    amount_cents: int
    ticket_number: int
    system_id: int
    expiration: int
    pool_id: int


@dataclass(frozen=True, slots=True)
class GameCount:
    count: int


@dataclass(frozen=True, slots=True)
class SelectedGame:
    game: int


@dataclass(frozen=True, slots=True)
class EnabledGames:
    games: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class PendingCashout:
    """LP 57: `cashout_type` 00 cashable, 01 restricted, 80 not waiting."""

    cashout_type: int
    amount_cents: int


@dataclass(frozen=True, slots=True)
class ValidationStatus:
    """LP 58: 00 ok, 80 not in cash-out, 81 rejected."""

    status: int


@dataclass(frozen=True, slots=True)
class MachineClock:
    when: dt.datetime


@dataclass(frozen=True, slots=True)
class HandpayResetResult:
    """LP 94: 00 reset, 01 unable, 02 not in handpay."""

    code: int


@dataclass(frozen=True, slots=True)
class EnabledFeatures:
    """LP A0. Layout [unsure] (reference 10): game, 3 feature bytes, 6 reserved bytes."""

    game: int
    features: bytes


@dataclass(frozen=True, slots=True)
class AftStatus:
    """LP 74 answer (`a 74 len(23) asset(4, LSB first) lock-status ...`): the asset number
    (0 = none set) and the game lock status (FF not locked, 40 pending, 00 locked). The rest of
    the 35 bytes (AFT amounts and limits) is kept raw: a monitoring host does not use it."""

    asset_number: int
    lock_status: int = 0xFF
    rest: bytes = bytes(30)


@dataclass(frozen=True, slots=True)
class Acked:
    """The lone address byte (type S polls without data in their answer)."""


LongPollAnswer = (MeterReading | HandpayInfo | GameConfig | RomSignature | SelectedMeters
                  | CashoutTicket | LastBill | ValidationId | EnhancedValidationRecord
                  | GameCount | VersionInfo | SelectedGame | EnabledGames | PendingCashout
                  | ValidationStatus | MachineClock | HandpayResetResult | EnabledFeatures
                  | AftStatus | Acked)

# BCD size of each LP 2F meter (ref 5: mostly 4, 5 for cents meters [unsure]).
_2F_CENTS_METERS = frozenset({0x0D, 0x0E, 0x0F, 0x10, *range(0x80, 0x94, 2), *range(0xA0, 0xBE, 2)})


def meter_2f_size(code: int) -> int:
    return 5 if code in _2F_CENTS_METERS else 4


def _encode_date(d: dt.date) -> bytes:
    return bcd.encode(d.month, 1) + bcd.encode(d.day, 1) + bcd.encode(d.year, 2)


def _encode_time(t: dt.time) -> bytes:
    return bcd.encode(t.hour, 1) + bcd.encode(t.minute, 1) + bcd.encode(t.second, 1)


def _decode_datetime(date: bytes, time: bytes) -> dt.datetime:
    try:
        return dt.datetime(bcd.decode(date[2:4]), bcd.decode(date[0:1]), bcd.decode(date[1:2]),
                           bcd.decode(time[0:1]), bcd.decode(time[1:2]), bcd.decode(time[2:3]))
    except ValueError as exc:
        raise SasRemoteProtocolError(f"impossible date/time {date.hex()} {time.hex()}") from exc


def decode_clock(data: bytes) -> dt.datetime:
    """`MM DD YYYY HH MM SS` (7 BCD bytes, LP 7E answer and LP 7F data)."""
    if len(data) != 7:
        raise SasRemoteProtocolError(f"clock field of {len(data)} bytes")
    return _decode_datetime(data[0:4], data[4:7])


def _ascii(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise SasRemoteProtocolError(f"non-ASCII field {raw.hex()}") from exc


def _checked_frame(frame: bytes, address: int, command: int) -> bytes:
    """Payload (after command, before CRC) of a well-formed answer to `command`."""
    spec = POLL_SPECS[command]
    if len(frame) < 4 or frame[0] != address or frame[1] != command:
        raise SasRemoteProtocolError(f"unexpected answer {frame.hex()} to LP {command:02X}")
    expected = spec.answer if isinstance(spec.answer, int) else 3 + frame[2] + 2
    if len(frame) != expected:
        raise SasRemoteProtocolError(f"answer to LP {command:02X} has {len(frame)} bytes")
    if not check_crc(frame):
        raise SasRemoteProtocolError(f"bad CRC in {frame.hex()}")
    return bytes(frame[2:-2])


def decode_answer(command: int, frame: bytes, address: int) -> LongPollAnswer:
    """The typed answer to long poll `command` from the machine at `address`. Raises
    SasRemoteProtocolError (BcdError included) for anything malformed."""
    if command not in POLL_SPECS or command == LongPoll.MULTI_DENOM:
        raise SasLocalProtocolError(f"no decoder for LP {command:02X}")
    if POLL_SPECS[command].answer == "ack":
        if bytes(frame) != bytes([address]):
            raise SasRemoteProtocolError(f"expected ACK, got {frame.hex()}")
        return Acked()
    p = _checked_frame(frame, address, command)
    if command in METER_NAMES:
        meters, at = {}, 0
        for name, size in METER_NAMES[command]:
            meters[name] = bcd.decode(p[at:at + size])
            at += size
        return MeterReading(command, meters)
    match command:
        case 0x1B:
            return HandpayInfo(p[0], p[1], bcd.decode(p[2:7]), bcd.decode(p[7:9]), p[9])
        case 0x1F:
            return decode_game_config(frame, address)
        case 0x53:
            return replace(_game_config(p[2:]), game_number=bcd.decode(p[0:2]))
        case 0x2F | 0x6F | 0xAF:
            return _decode_selected_meters(command, p)
        case 0x3D:
            return CashoutTicket(bcd.decode(p[0:4]), bcd.decode(p[4:9]))
        case 0x48:
            return LastBill(bcd.decode(p[0:1]), bcd.decode(p[1:2]), bcd.decode(p[2:6]))
        case 0x4C:
            return ValidationId(int.from_bytes(p[0:3], "little"), int.from_bytes(p[3:6], "little"))
        case 0x4D:
            when = None if not any(p[2:9]) else _decode_datetime(p[2:6], p[6:9])
            return EnhancedValidationRecord(
                p[0], p[1], when, bcd.decode(p[9:17]), bcd.decode(p[17:22]),
                int.from_bytes(p[22:24], "little"), bcd.decode(p[24:25]), bcd.decode(p[25:29]),
                int.from_bytes(p[29:31], "little"))
        case 0x51:
            return GameCount(bcd.decode(p))
        case 0x54:
            return decode_version(frame, address)
        case 0x55:
            return SelectedGame(bcd.decode(p))
        case 0x56:
            count = p[1] if len(p) >= 2 else -1
            if len(p) != 2 + 2 * count:
                raise SasRemoteProtocolError(f"LP 56 answer length does not match {count} games")
            return EnabledGames(tuple(bcd.decode(p[i:i + 2]) for i in range(2, len(p), 2)))
        case 0x57:
            return PendingCashout(p[0], bcd.decode(p[1:6]))
        case 0x58:
            return ValidationStatus(p[0])
        case 0x7E:
            return MachineClock(_decode_datetime(p[0:4], p[4:7]))
        case 0x94:
            return HandpayResetResult(p[0])
        case 0xA0:
            return EnabledFeatures(bcd.decode(p[0:2]), p[2:5])
        case 0x74:
            if p[0] != 0x23 or len(p) != 36:
                raise SasRemoteProtocolError(f"LP 74 answer of length {p[0]:02X}")
            return AftStatus(int.from_bytes(p[1:5], "little"), p[5], bytes(p[6:]))
    raise SasLocalProtocolError(f"no decoder for LP {command:02X}")  # pragma: no cover


def _decode_selected_meters(command: int, p: bytes) -> SelectedMeters:
    body = p[1:]
    if len(body) < 2:
        raise SasRemoteProtocolError(f"short LP {command:02X} answer")
    game, at, meters = bcd.decode(body[0:2]), 2, {}
    while at < len(body):
        if command == 0x2F:
            code = body[at]
            size, at = meter_2f_size(code), at + 1
        else:
            if at + 3 > len(body):
                raise SasRemoteProtocolError(f"truncated LP {command:02X} meter")
            code, size = int.from_bytes(body[at:at + 2], "little"), body[at + 2]
            at += 3
        if at + size > len(body) or size > 9:
            raise SasRemoteProtocolError(f"truncated LP {command:02X} meter {code:02X}")
        meters[code] = bcd.decode(body[at:at + size])
        at += size
    return SelectedMeters(command, game, meters)


def encode_answer(address: int, command: int, answer: LongPollAnswer) -> bytes:
    """The machine's answer frame (the simulator's side of decode_answer)."""
    head = bytes([address, command])
    match answer:
        case Acked():
            return bytes([address])
        case MeterReading(_, meters):
            body = b"".join(bcd.encode(meters[n], s) for n, s in METER_NAMES[command])
        case HandpayInfo():
            a = answer
            body = (bytes([a.progressive_group, a.level]) + bcd.encode(a.amount_cents, 5)
                    + bcd.encode(a.partial_pay_cents, 2) + bytes([a.reset_id]) + bytes(10))
        case GameConfig():
            if command == LongPoll.GAME_CONFIGURATION:
                return encode_game_config(address, answer)
            body = bcd.encode(answer.game_number, 2) + _game_config_body(answer)
        case SelectedMeters(_, game, meters):
            body = bcd.encode(game, 2)
            for code, value in meters.items():
                if command == 0x2F:
                    body += bytes([code]) + bcd.encode(value, meter_2f_size(code))
                else:
                    size = max(4, (len(str(value)) + 1) // 2)
                    body += code.to_bytes(2, "little") + bytes([size]) + bcd.encode(value, size)
            body = bytes([len(body)]) + body
        case CashoutTicket(number, cents):
            body = bcd.encode(number, 4) + bcd.encode(cents, 5)
        case LastBill(country, denom, count):
            body = bcd.encode(country, 1) + bcd.encode(denom, 1) + bcd.encode(count, 4)
        case ValidationId(machine_id, sequence):
            body = machine_id.to_bytes(3, "little") + sequence.to_bytes(3, "little")
        case EnhancedValidationRecord():
            r = answer
            when = (_encode_date(r.when.date()) + _encode_time(r.when.time())
                    if r.when is not None else bytes(7))
            body = (bytes([r.validation_type, r.index]) + when + bcd.encode(r.validation_number, 8)
                    + bcd.encode(r.amount_cents, 5) + r.ticket_number.to_bytes(2, "little")
                    + bcd.encode(r.system_id, 1) + bcd.encode(r.expiration, 4)
                    + r.pool_id.to_bytes(2, "little"))
        case GameCount(count):
            body = bcd.encode(count, 2)
        case VersionInfo():
            return encode_version(address, answer)
        case SelectedGame(game):
            body = bcd.encode(game, 2)
        case EnabledGames(games):
            inner = bytes([len(games)]) + b"".join(bcd.encode(g, 2) for g in games)
            body = bytes([len(inner)]) + inner
        case PendingCashout(kind, cents):
            body = bytes([kind]) + bcd.encode(cents, 5)
        case ValidationStatus(status):
            body = bytes([status])
        case MachineClock(when):
            body = _encode_date(when.date()) + _encode_time(when.time())
        case HandpayResetResult(code):
            body = bytes([code])
        case EnabledFeatures(game, features):
            body = bcd.encode(game, 2) + features[:3].ljust(3, b"\x00") + bytes(6)
        case RomSignature(signature):
            body = signature.to_bytes(2, "little")
        case AftStatus(asset, lock, rest):
            body = bytes([0x23]) + asset.to_bytes(4, "little") + bytes([lock]) + rest[:30].ljust(
                30, b"\x00")
        case _:  # pragma: no cover
            raise SasLocalProtocolError(f"cannot encode {answer!r}")
    return append_crc(head + body)


def decode_rom_signature(frame: bytes, address: int) -> RomSignature:
    """The delayed LP 21 answer `a 21 sig(2) crc` (reference section 6)."""
    if len(frame) != 6 or frame[0] != address or frame[1] != LongPoll.ROM_SIGNATURE:
        raise SasRemoteProtocolError(f"not an LP 21 answer: {frame.hex()}")
    if not check_crc(frame):
        raise SasRemoteProtocolError(f"bad CRC in {frame.hex()}")
    return RomSignature(int.from_bytes(frame[2:4], "little"))


# ---- RTE event data (reference section 4) -----------------------------------------------------

@dataclass(frozen=True, slots=True)
class GameStarted:
    wager_credits: int
    coin_in_credits: int
    wager_type: int
    progressive_group: int


@dataclass(frozen=True, slots=True)
class GameEnded:
    win_credits: int


@dataclass(frozen=True, slots=True)
class BillAccepted:
    country_code: int
    denomination_code: int
    count: int

    @property
    def amount_cents(self) -> int:
        return BILL_DENOMINATION_CENTS.get(self.denomination_code, 0)


@dataclass(frozen=True, slots=True)
class ReelStopped:
    reel: int
    stop: int


@dataclass(frozen=True, slots=True)
class GameRecall:
    game: int
    index: int


@dataclass(frozen=True, slots=True)
class CardHeld:
    """Bit 7 = held [unsure: reference 4 says "card number with a held flag bit"]."""

    card: int
    held: bool


@dataclass(frozen=True, slots=True)
class GameSelectedData:
    game: int


@dataclass(frozen=True, slots=True)
class LegacyBonus:
    multiplier: int
    multiplied_win_credits: int
    tax_status: int
    bonus_credits: int


@dataclass(frozen=True, slots=True)
class NoData:
    """An event without data (5-byte frame)."""


EventData = (GameStarted | GameEnded | BillAccepted | ReelStopped | GameRecall | CardHeld
             | GameSelectedData | LegacyBonus | NoData)


def decode_event_data(code: int, data: bytes) -> EventData:
    """Typed RTE event data; SasRemoteProtocolError if its length or BCD is wrong."""
    if len(data) != RTE_DATA_LENGTH.get(code, 0):
        raise SasRemoteProtocolError(f"event {code:02X} with {len(data)} data bytes")
    match code:
        case 0x7E:
            return GameStarted(bcd.decode(data[0:2]), bcd.decode(data[2:6]), data[6], data[7])
        case 0x7F:
            return GameEnded(bcd.decode(data))
        case 0x4F:
            return BillAccepted(bcd.decode(data[0:1]), bcd.decode(data[1:2]),
                                bcd.decode(data[2:6]))
        case 0x88:
            return ReelStopped(data[0], data[1])
        case 0x8A:
            return GameRecall(bcd.decode(data[0:2]), bcd.decode(data[2:4]))
        case 0x8B:
            return CardHeld(data[0] & 0x7F, bool(data[0] & 0x80))
        case 0x8C:
            return GameSelectedData(bcd.decode(data))
        case 0x7C:
            return LegacyBonus(data[0], bcd.decode(data[1:5]), data[5], bcd.decode(data[6:10]))
    return NoData()


def encode_event_data(value: EventData) -> bytes:
    match value:
        case GameStarted(w, c, t, g):
            return bcd.encode(w, 2) + bcd.encode(c, 4) + bytes([t, g])
        case GameEnded(w):
            return bcd.encode(w, 4)
        case BillAccepted(country, denom, count):
            return bcd.encode(country, 1) + bcd.encode(denom, 1) + bcd.encode(count, 4)
        case ReelStopped(reel, stop):
            return bytes([reel, stop])
        case GameRecall(game, index):
            return bcd.encode(game, 2) + bcd.encode(index, 2)
        case CardHeld(card, held):
            return bytes([card | (0x80 if held else 0)])
        case GameSelectedData(game):
            return bcd.encode(game, 2)
        case LegacyBonus(m, win, tax, bonus):
            return bytes([m]) + bcd.encode(win, 4) + bytes([tax]) + bcd.encode(bonus, 4)
    return b""


def exception_name(code: int) -> str:
    """The `Exc` name of a general-poll exception code (reference section 3)."""
    try:
        return Exc(code).name
    except ValueError:
        return f"UNKNOWN_{code:02X}"
