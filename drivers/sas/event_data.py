"""Typed data of RTE event frames (reference section 4): one codec per event code and a
code -> codec registry, `EVENTS`; codes absent from it carry no data (`NoData`). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.sas import bcd
from drivers.sas.answers import BillAccepted
from drivers.sas.codes import RTE_DATA_LENGTH, Exc
from drivers.sas.errors import SasRemoteProtocolError

__all__ = ["EVENTS", "CardHeld", "EventCodec", "EventData", "GameEnded", "GameRecall",
           "GameSelectedData", "GameStarted", "LegacyBonus", "NoData", "ReelStopped",
           "decode_event_data", "encode_event_data"]


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


@dataclass(frozen=True, slots=True)
class EventCodec:
    """How one event's data (after the code, before the CRC) maps to its typed value."""

    type: type
    decode: Callable[[bytes], Any]
    encode: Callable[[Any], bytes]


#: event code -> the codec of its data (RTE_DATA_LENGTH gives each one's length).
EVENTS: dict[int, EventCodec] = {
    Exc.GAME_STARTED: EventCodec(
        GameStarted,
        lambda d: GameStarted(bcd.decode(d[0:2]), bcd.decode(d[2:6]), d[6], d[7]),
        lambda v: (bcd.encode(v.wager_credits, 2) + bcd.encode(v.coin_in_credits, 4)
                   + bytes([v.wager_type, v.progressive_group]))),
    Exc.GAME_ENDED: EventCodec(GameEnded, lambda d: GameEnded(bcd.decode(d)),
                               lambda v: bcd.encode(v.win_credits, 4)),
    Exc.BILL_ACCEPTED: EventCodec(
        BillAccepted,
        lambda d: BillAccepted(bcd.decode(d[0:1]), bcd.decode(d[1:2]), bcd.decode(d[2:6])),
        lambda v: (bcd.encode(v.country_code, 1) + bcd.encode(v.denomination_code, 1)
                   + bcd.encode(v.count, 4))),
    Exc.REEL_STOPPED: EventCodec(ReelStopped, lambda d: ReelStopped(d[0], d[1]),
                                 lambda v: bytes([v.reel, v.stop])),
    Exc.GAME_RECALL_DISPLAYED: EventCodec(
        GameRecall, lambda d: GameRecall(bcd.decode(d[0:2]), bcd.decode(d[2:4])),
        lambda v: bcd.encode(v.game, 2) + bcd.encode(v.index, 2)),
    Exc.CARD_HELD: EventCodec(CardHeld, lambda d: CardHeld(d[0] & 0x7F, bool(d[0] & 0x80)),
                              lambda v: bytes([v.card | (0x80 if v.held else 0)])),
    Exc.GAME_SELECTED: EventCodec(GameSelectedData, lambda d: GameSelectedData(bcd.decode(d)),
                                  lambda v: bcd.encode(v.game, 2)),
    Exc.LEGACY_BONUS_AWARDED: EventCodec(
        LegacyBonus,
        lambda d: LegacyBonus(d[0], bcd.decode(d[1:5]), d[5], bcd.decode(d[6:10])),
        lambda v: (bytes([v.multiplier]) + bcd.encode(v.multiplied_win_credits, 4)
                   + bytes([v.tax_status]) + bcd.encode(v.bonus_credits, 4))),
}
_BY_TYPE = {codec.type: codec for codec in EVENTS.values()}


def decode_event_data(code: int, data: bytes) -> EventData:
    """Typed RTE event data; SasRemoteProtocolError if its length or BCD is wrong."""
    if len(data) != RTE_DATA_LENGTH.get(code, 0):
        raise SasRemoteProtocolError(f"event {code:02X} with {len(data)} data bytes")
    codec = EVENTS.get(code)
    return NoData() if codec is None else codec.decode(data)


def encode_event_data(value: EventData) -> bytes:
    codec = _BY_TYPE.get(type(value))
    return b"" if codec is None else codec.encode(value)
