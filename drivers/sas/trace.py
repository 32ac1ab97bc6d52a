"""SAS frames in words for `diag trace` (the protocol's `TraceDecoder`, drivers/registry.py).

Best effort: a chunk of machine bytes may hold part of an answer, and is read against the last
poll the host sent (`sent` sees every host frame, traced or not). SAS carries nothing secret on
the line, so `redact` returns the frame unchanged.
"""

from __future__ import annotations

import enum

from drivers.sas import messages
from drivers.sas.codes import Exc, LongPoll
from drivers.sas.crc import check_crc
from drivers.sas.errors import SasRemoteProtocolError

__all__ = ["SasTraceDecoder", "describe_answer", "describe_poll"]


def _name(enum_cls: type[enum.IntEnum], code: int) -> str:
    try:
        return str(enum_cls(code).name)
    except ValueError:
        return f"{code:02X}"


def describe_poll(data: bytes) -> str:
    """A host frame in words: 'GP to 3', 'LP 1F GAME_CONFIGURATION to 1'."""
    if not data:
        return "empty frame"
    address = data[0] & 0x7F
    if len(data) == 1:
        return f"GP to {address}" if data[0] & 0x80 else f"byte {data[0]:02X}"
    return f"LP {data[1]:02X} {_name(LongPoll, data[1])} to {address}"


def describe_answer(data: bytes, last_poll: bytes | None) -> str:
    """A chunk of machine bytes in words, read against the poll it answers (best effort: a chunk
    may hold part of an answer; the hex is always there for the rest)."""
    if not data:
        return "nothing"
    address = last_poll[0] & 0x7F if last_poll else None
    command = last_poll[1] if last_poll and len(last_poll) > 1 else None
    if len(data) == 1:
        b = data[0]
        if address is not None and b == address | 0x80:
            return "NACK"
        if address is not None and b == address and command is not None:
            return f"ACK of LP {command:02X}"
        if command is None:
            return "no activity" if b == 0 else f"exception {b:02X} {_name(Exc, b)}"
        return f"byte {b:02X}"
    if address is not None and data[0] != address:
        return f"{len(data)} bytes, not from address {address}"
    if len(data) == 2 and data[1] == 0x00:
        return "busy"
    crc = "CRC ok" if check_crc(data) else "CRC bad or partial"
    if data[1] == 0xFF and len(data) >= 3:
        return f"RTE event {data[2]:02X} {_name(Exc, data[2])}, {crc}"
    if command is not None and data[1] == command:
        detail = _decode(data, command) if check_crc(data) else ""
        return f"answer to LP {command:02X}, {len(data)} bytes, {crc}{detail}"
    return f"{len(data)} bytes, {crc}"


def _decode(frame: bytes, command: int) -> str:
    try:
        if command == LongPoll.CURRENT_CREDITS:
            return f": {messages.decode_current_credits(frame, frame[0])} credits"
        if command == LongPoll.VERSION_AND_SERIAL:
            info = messages.decode_version(frame, frame[0])
            return f": SAS {info.sas_version}, serial {info.serial!r}"
        if command == LongPoll.GAME_CONFIGURATION:
            game = messages.decode_game_config(frame, frame[0])
            return (f": game {game.game_id}, denomination code {game.denomination_code:02X}, "
                    f"paytable {game.paytable_id}")
    except SasRemoteProtocolError as err:
        return f": undecodable ({err})"
    return ""


class SasTraceDecoder:
    """One port's decoder: remembers the last addressed poll, so an answer reads against it."""

    def __init__(self) -> None:
        self._last_poll: bytes | None = None

    def sent(self, data: bytes) -> None:
        if data and data[0] & 0x7F != 0:  # address 0 is a broadcast: nobody answers it
            self._last_poll = data

    def redact(self, data: bytes) -> bytes:
        return data

    def describe(self, direction: str, data: bytes, *, wakeup: bool = False) -> str:
        if direction == "tx":
            return describe_poll(data)
        text = describe_answer(data, self._last_poll)
        return f"with the wakeup bit (chirp): {text}" if wakeup else text
