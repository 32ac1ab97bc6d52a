"""Encoders and decoders for the SAS messages the host and the simulator use (reference 2.2, 4, 6).

Host -> machine messages are returned as `(first_byte, rest)` pairs: the first byte goes out with the
wakeup bit set, the rest without (reference section 1). Machine -> host messages are plain bytes.
Both roles share this module, so tests check it against the golden vectors of reference section 7.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.sas import bcd
from drivers.sas.codes import LongPoll
from drivers.sas.crc import append_crc, check_crc
from drivers.sas.errors import SasLocalProtocolError, SasRemoteProtocolError

__all__ = [
    "GameConfig",
    "Poll",
    "VersionInfo",
    "decode_current_credits",
    "decode_event",
    "decode_game_config",
    "decode_version",
    "encode_current_credits",
    "encode_event",
    "encode_game_config",
    "encode_version",
    "general_poll",
    "long_poll",
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


# Type S polls carry a CRC; type R polls (plain reads) do not (reference 2.2).
_S_TYPE = {LongPoll.SHUTDOWN, LongPoll.STARTUP, LongPoll.ENABLE_BILL_ACCEPTOR,
           LongPoll.DISABLE_BILL_ACCEPTOR, LongPoll.RTE_MODE, LongPoll.SET_CLOCK}


def long_poll(address: int, command: int, data: bytes = b"") -> Poll:
    _check_address(address)
    if data and command not in _S_TYPE:
        raise SasLocalProtocolError(f"LP {command:02X} is a read and takes no data")
    return Poll(address, command, data, crc=command in _S_TYPE)


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


def encode_game_config(address: int, config: GameConfig) -> bytes:
    body = (config.game_id.encode("ascii")[:2].ljust(2)
            + config.additional_id.encode("ascii")[:3].ljust(3)
            + bytes([config.denomination_code, config.max_bet, config.progressive_group])
            + config.game_options.to_bytes(2, "little")
            + config.paytable_id.encode("ascii")[:6].ljust(6)
            + config.base_percent.encode("ascii")[:4].ljust(4))
    return append_crc(bytes([address, LongPoll.GAME_CONFIGURATION]) + body)


def decode_game_config(frame: bytes, address: int) -> GameConfig:
    p = _payload(frame, address, LongPoll.GAME_CONFIGURATION, 24)
    try:
        return GameConfig(p[0:2].decode("ascii"), p[2:5].decode("ascii"), p[5], p[6], p[7],
                          int.from_bytes(p[8:10], "little"), p[10:16].decode("ascii"),
                          p[16:20].decode("ascii"))
    except UnicodeDecodeError as exc:
        raise SasRemoteProtocolError("non-ASCII field in LP 1F answer") from exc


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
