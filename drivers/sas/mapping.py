"""SAS exception codes -> the gateway's catalogue event types (gateway/events.py)."""

from __future__ import annotations

from typing import Any

from drivers.model import MachineEvent, MachineRef, SourceRef
from drivers.sas import bcd
from drivers.sas.bcd import BcdError
from drivers.sas.codes import (
    BILL_CODE_CENTS,
    BILL_DENOMINATION_CENTS,
    PRIORITY_EXCEPTIONS,
    Exc,
)

__all__ = ["SILENT_CODES", "exception_event"]

# "No activity" codes never become events.
SILENT_CODES = frozenset({0x00, 0x1F})

_DOORS = {0x11: "main", 0x13: "drop", 0x15: "card_cage", 0x19: "cashbox", 0x1D: "belly"}
_TILTS = frozenset([*range(0x20, 0x2D), *range(0x31, 0x3C), *range(0x40, 0x47), 0x60, 0x61])
_SIMPLE = {0x17: "powerApplied", 0x18: "powerLost", 0x52: "handpayReset",
           0x70: "bufferOverflow", 0x8C: "gameSelected", 0x3D: "ticketPrinted",
           0x67: "ticketInserted", 0x51: "handpayPending"}


def _name(code: int) -> str:
    """The exception's name as events carry it (`machineException.name`, `tilt.kind`): the
    lower-case `Exc` name (messages.exception_name), `exception_<hex>` for an unlisted code."""
    try:
        return Exc(code).name.lower()
    except ValueError:
        return f"exception_{code:02x}"


def _classify(code: int, data: bytes, denom_cents: int) -> tuple[str, dict[str, Any]]:
    if code in _DOORS:
        return "doorOpened", {"door": _DOORS[code]}
    if code - 1 in _DOORS:
        return "doorClosed", {"door": _DOORS[code - 1]}
    if code in _TILTS:
        return "tilt", {"kind": _name(code)}
    if code in BILL_CODE_CENTS:
        return "billAccepted", {"amount_cents": BILL_CODE_CENTS[code]}
    if code == Exc.BILL_ACCEPTED:
        if len(data) == 6:
            denom = bcd.decode(data[1:2])
            return "billAccepted", {"amount_cents": BILL_DENOMINATION_CENTS.get(denom, 0),
                                    "denomination_code": denom,
                                    "country_code": bcd.decode(data[0:1])}
        return "billAccepted", {}
    if code == Exc.GAME_STARTED:
        if len(data) == 8:
            credits = bcd.decode(data[0:2])
            return "betPlaced", {"wager_credits": credits, "wager_cents": credits * denom_cents}
        return "betPlaced", {}
    if code == Exc.GAME_ENDED:
        if len(data) == 4:
            credits = bcd.decode(data)
            return "gameEnded", {"win_credits": credits, "win_cents": credits * denom_cents}
        return "gameEnded", {}
    if code in _SIMPLE:
        return _SIMPLE[code], {}
    return "machineException", {"code": code, "name": _name(code)}


def exception_event(machine: MachineRef, code: int, data: bytes, denom_cents: int,
                    now: float) -> MachineEvent:
    """The MachineEvent for exception `code` (with RTE `data`); raises BcdError on bad data."""
    try:
        kind, fields = _classify(code, data, denom_cents)
    except BcdError:
        # Keep the event (never lose it); the raw payload is in `source`.
        kind, fields = "machineException", {"code": code, "name": _name(code), "bad_data": True}
    source = SourceRef("sas", code, bytes(data), priority=code in PRIORITY_EXCEPTIONS)
    return MachineEvent(kind, machine, fields, source, monotonic=now)
