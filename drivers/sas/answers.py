"""Typed long-poll answers (reference section 6): one codec per message and a command -> codec
registry, `ANSWERS` (as pymodbus' DecodePDU looks a function code up, rather than one match per
direction that must be kept in step by hand).

A codec works on the *body* of a frame: the bytes between the command and the CRC (the length
byte included, for answers that have one). Framing, addresses and CRCs stay in messages.py;
`messages.decode_answer` / `messages.encode_answer` are the lookups. Pure: no I/O.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from drivers.sas import bcd
from drivers.sas.codes import BILL_DENOMINATION_CENTS, LongPoll
from drivers.sas.errors import SasRemoteProtocolError

__all__ = [
    "ANSWERS", "METER_NAMES", "Acked", "AftStatus", "AnswerCodec", "BillAccepted",
    "CashoutTicket", "EnabledFeatures", "EnabledGames", "EnhancedValidationRecord", "GameConfig",
    "GameCount", "HandpayInfo", "HandpayResetResult", "LongPollAnswer", "MachineClock",
    "MeterReading", "PendingCashout", "RomSignature", "SelectedGame", "SelectedMeters",
    "ValidationId", "ValidationStatus", "VersionInfo", "decode_datetime", "encode_date",
    "encode_time", "game_config_body", "meter_2f_size",
]


# ---- Shared field helpers ----------------------------------------------------------------------

def encode_date(d: dt.date) -> bytes:
    return bcd.encode(d.month, 1) + bcd.encode(d.day, 1) + bcd.encode(d.year, 2)


def encode_time(t: dt.time) -> bytes:
    return bcd.encode(t.hour, 1) + bcd.encode(t.minute, 1) + bcd.encode(t.second, 1)


def decode_datetime(date: bytes, time: bytes) -> dt.datetime:
    try:
        return dt.datetime(bcd.decode(date[2:4]), bcd.decode(date[0:1]), bcd.decode(date[1:2]),
                           bcd.decode(time[0:1]), bcd.decode(time[1:2]), bcd.decode(time[2:3]))
    except ValueError as exc:
        raise SasRemoteProtocolError(f"impossible date/time {date.hex()} {time.hex()}") from exc


def _ascii(raw: bytes) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise SasRemoteProtocolError(f"non-ASCII field {raw.hex()}") from exc


# ---- The answers -------------------------------------------------------------------------------

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


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """LP 54 answer: SAS version ("602") and the machine's serial number."""

    sas_version: str
    serial: str


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
class BillAccepted:
    """A bill: the LP 48 answer (last bill accepted) and the data of RTE event 4F alike."""

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
                  | CashoutTicket | BillAccepted | ValidationId | EnhancedValidationRecord
                  | GameCount | VersionInfo | SelectedGame | EnabledGames | PendingCashout
                  | ValidationStatus | MachineClock | HandpayResetResult | EnabledFeatures
                  | AftStatus | Acked)


# ---- Codecs: body <-> value, one per message -----------------------------------------------------

@dataclass(frozen=True, slots=True)
class AnswerCodec:
    """How one answer's body (after the command, before the CRC) maps to its typed value.
    Both functions take the command: one codec serves a family (the meter reads, 2F/6F/AF)."""

    type: type
    decode: Callable[[int, bytes], Any]
    encode: Callable[[int, Any], bytes]


def _decode_meters(command: int, p: bytes) -> MeterReading:
    meters, at = {}, 0
    for name, size in METER_NAMES[command]:
        meters[name] = bcd.decode(p[at:at + size])
        at += size
    return MeterReading(command, meters)


def _encode_meters(command: int, value: MeterReading) -> bytes:
    return b"".join(bcd.encode(value.meters[n], s) for n, s in METER_NAMES[command])


def game_config_body(config: GameConfig) -> bytes:
    return (config.game_id.encode("ascii")[:2].ljust(2)
            + config.additional_id.encode("ascii")[:3].ljust(3)
            + bytes([config.denomination_code, config.max_bet, config.progressive_group])
            + config.game_options.to_bytes(2, "little")
            + config.paytable_id.encode("ascii")[:6].ljust(6)
            + config.base_percent.encode("ascii")[:4].ljust(4))


def _game_config(p: bytes) -> GameConfig:
    return GameConfig(_ascii(p[0:2]), _ascii(p[2:5]), p[5], p[6], p[7],
                      int.from_bytes(p[8:10], "little"), _ascii(p[10:16]), _ascii(p[16:20]))


def _decode_game_n(_: int, p: bytes) -> GameConfig:
    return replace(_game_config(p[2:]), game_number=bcd.decode(p[0:2]))


def _decode_version(_: int, p: bytes) -> VersionInfo:
    try:
        text = p[1:].decode("ascii")
    except UnicodeDecodeError as exc:
        raise SasRemoteProtocolError("non-ASCII serial in LP 54 answer") from exc
    return VersionInfo(text[:3], text[3:].strip())


def _encode_version(_: int, info: VersionInfo) -> bytes:
    text = info.sas_version.encode("ascii")[:3].ljust(3) + info.serial.encode("ascii")[:40]
    return bytes([len(text)]) + text


# BCD size of each LP 2F meter (ref 5: mostly 4, 5 for cents meters [unsure]).
_2F_CENTS_METERS = frozenset({0x0D, 0x0E, 0x0F, 0x10, *range(0x80, 0x94, 2), *range(0xA0, 0xBE, 2)})


def meter_2f_size(code: int) -> int:
    return 5 if code in _2F_CENTS_METERS else 4


def _decode_selected_meters(command: int, p: bytes) -> SelectedMeters:
    body = p[1:]
    if len(body) < 2:
        raise SasRemoteProtocolError(f"short LP {command:02X} answer")
    game, at, meters = bcd.decode(body[0:2]), 2, {}
    while at < len(body):
        if command == LongPoll.SELECTED_METERS:
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


def _encode_selected_meters(command: int, value: SelectedMeters) -> bytes:
    body = bcd.encode(value.game, 2)
    for code, number in value.meters.items():
        if command == LongPoll.SELECTED_METERS:
            body += bytes([code]) + bcd.encode(number, meter_2f_size(code))
        else:
            size = max(4, (len(str(number)) + 1) // 2)
            body += code.to_bytes(2, "little") + bytes([size]) + bcd.encode(number, size)
    return bytes([len(body)]) + body


def _decode_validation_record(_: int, p: bytes) -> EnhancedValidationRecord:
    when = None if not any(p[2:9]) else decode_datetime(p[2:6], p[6:9])
    return EnhancedValidationRecord(
        p[0], p[1], when, bcd.decode(p[9:17]), bcd.decode(p[17:22]),
        int.from_bytes(p[22:24], "little"), bcd.decode(p[24:25]), bcd.decode(p[25:29]),
        int.from_bytes(p[29:31], "little"))


def _encode_validation_record(_: int, r: EnhancedValidationRecord) -> bytes:
    when = encode_date(r.when.date()) + encode_time(r.when.time()) if r.when else bytes(7)
    return (bytes([r.validation_type, r.index]) + when + bcd.encode(r.validation_number, 8)
            + bcd.encode(r.amount_cents, 5) + r.ticket_number.to_bytes(2, "little")
            + bcd.encode(r.system_id, 1) + bcd.encode(r.expiration, 4)
            + r.pool_id.to_bytes(2, "little"))


def _decode_enabled_games(_: int, p: bytes) -> EnabledGames:
    count = p[1] if len(p) >= 2 else -1
    if len(p) != 2 + 2 * count:
        raise SasRemoteProtocolError(f"LP 56 answer length does not match {count} games")
    return EnabledGames(tuple(bcd.decode(p[i:i + 2]) for i in range(2, len(p), 2)))


def _encode_enabled_games(_: int, value: EnabledGames) -> bytes:
    inner = bytes([len(value.games)]) + b"".join(bcd.encode(g, 2) for g in value.games)
    return bytes([len(inner)]) + inner


def _decode_aft_status(_: int, p: bytes) -> AftStatus:
    if p[0] != 0x23 or len(p) != 36:
        raise SasRemoteProtocolError(f"LP 74 answer of length {p[0]:02X}")
    return AftStatus(int.from_bytes(p[1:5], "little"), p[5], bytes(p[6:]))


def _encode_aft_status(_: int, a: AftStatus) -> bytes:
    return (bytes([0x23]) + a.asset_number.to_bytes(4, "little") + bytes([a.lock_status])
            + a.rest[:30].ljust(30, b"\x00"))


def _bill_body(value: BillAccepted) -> bytes:
    return (bcd.encode(value.country_code, 1) + bcd.encode(value.denomination_code, 1)
            + bcd.encode(value.count, 4))


def _bill(p: bytes) -> BillAccepted:
    return BillAccepted(bcd.decode(p[0:1]), bcd.decode(p[1:2]), bcd.decode(p[2:6]))


def _one_bcd(kind: type, field: str, size: int) -> AnswerCodec:
    """An answer that is one BCD number of `size` bytes (LP 51, 55)."""
    return AnswerCodec(kind, lambda _, p: kind(bcd.decode(p)),
                       lambda _, v: bcd.encode(getattr(v, field), size))


def _one_byte(kind: type, field: str) -> AnswerCodec:
    """An answer that is one status byte (LP 58, 94)."""
    return AnswerCodec(kind, lambda _, p: kind(p[0]), lambda _, v: bytes([getattr(v, field)]))


_METERS = AnswerCodec(MeterReading, _decode_meters, _encode_meters)
_SELECTED = AnswerCodec(SelectedMeters, _decode_selected_meters, _encode_selected_meters)

#: command -> the codec of its answer (LP B0 wraps another poll and has none of its own).
ANSWERS: dict[int, AnswerCodec] = {
    **dict.fromkeys(METER_NAMES, _METERS),
    LongPoll.HANDPAY_INFO: AnswerCodec(
        HandpayInfo,
        lambda _, p: HandpayInfo(p[0], p[1], bcd.decode(p[2:7]), bcd.decode(p[7:9]), p[9]),
        lambda _, a: (bytes([a.progressive_group, a.level]) + bcd.encode(a.amount_cents, 5)
                      + bcd.encode(a.partial_pay_cents, 2) + bytes([a.reset_id]) + bytes(10))),
    LongPoll.GAME_CONFIGURATION: AnswerCodec(
        GameConfig, lambda _, p: _game_config(p), lambda _, c: game_config_body(c)),
    LongPoll.GAME_N_CONFIGURATION: AnswerCodec(
        GameConfig, _decode_game_n,
        lambda _, c: bcd.encode(c.game_number, 2) + game_config_body(c)),
    LongPoll.ROM_SIGNATURE: AnswerCodec(
        RomSignature, lambda _, p: RomSignature(int.from_bytes(p[0:2], "little")),
        lambda _, r: r.signature.to_bytes(2, "little")),
    LongPoll.SELECTED_METERS: _SELECTED,
    LongPoll.EXTENDED_METERS: _SELECTED,
    LongPoll.EXTENDED_METERS_ALT: _SELECTED,
    LongPoll.CASHOUT_TICKET: AnswerCodec(
        CashoutTicket, lambda _, p: CashoutTicket(bcd.decode(p[0:4]), bcd.decode(p[4:9])),
        lambda _, t: bcd.encode(t.validation_number, 4) + bcd.encode(t.amount_cents, 5)),
    LongPoll.LAST_BILL: AnswerCodec(BillAccepted, lambda _, p: _bill(p),
                                    lambda _, b: _bill_body(b)),
    LongPoll.SET_VALIDATION_ID: AnswerCodec(
        ValidationId,
        lambda _, p: ValidationId(int.from_bytes(p[0:3], "little"),
                                  int.from_bytes(p[3:6], "little")),
        lambda _, v: v.machine_id.to_bytes(3, "little") + v.sequence.to_bytes(3, "little")),
    LongPoll.ENHANCED_VALIDATION: AnswerCodec(
        EnhancedValidationRecord, _decode_validation_record, _encode_validation_record),
    LongPoll.GAME_COUNT: _one_bcd(GameCount, "count", 2),
    LongPoll.VERSION_AND_SERIAL: AnswerCodec(VersionInfo, _decode_version, _encode_version),
    LongPoll.SELECTED_GAME: _one_bcd(SelectedGame, "game", 2),
    LongPoll.ENABLED_GAMES: AnswerCodec(EnabledGames, _decode_enabled_games,
                                        _encode_enabled_games),
    LongPoll.PENDING_CASHOUT: AnswerCodec(
        PendingCashout, lambda _, p: PendingCashout(p[0], bcd.decode(p[1:6])),
        lambda _, c: bytes([c.cashout_type]) + bcd.encode(c.amount_cents, 5)),
    LongPoll.VALIDATION_NUMBER: _one_byte(ValidationStatus, "status"),
    LongPoll.READ_CLOCK: AnswerCodec(
        MachineClock, lambda _, p: MachineClock(decode_datetime(p[0:4], p[4:7])),
        lambda _, c: encode_date(c.when.date()) + encode_time(c.when.time())),
    LongPoll.REMOTE_HANDPAY_RESET: _one_byte(HandpayResetResult, "code"),
    LongPoll.ENABLED_FEATURES: AnswerCodec(
        EnabledFeatures, lambda _, p: EnabledFeatures(bcd.decode(p[0:2]), p[2:5]),
        lambda _, f: bcd.encode(f.game, 2) + f.features[:3].ljust(3, b"\x00") + bytes(6)),
    LongPoll.AFT_STATUS: AnswerCodec(AftStatus, _decode_aft_status, _encode_aft_status),
}
