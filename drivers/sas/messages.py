"""Encoders and decoders for the SAS messages the host and the simulator use (reference 2.2, 4, 6).

Host -> machine messages are returned as `(first_byte, rest)` pairs: the first byte goes out with the
wakeup bit set, the rest without (reference section 1). Machine -> host messages are plain bytes.
Both roles share this module, so tests check it against the golden vectors of reference section 7.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.sas import bcd
from drivers.sas.answers import (
    ANSWERS,
    METER_NAMES,
    Acked,
    AftStatus,
    BillAccepted,
    CashoutTicket,
    EnabledFeatures,
    EnabledGames,
    EnhancedValidationRecord,
    GameConfig,
    GameCount,
    HandpayInfo,
    HandpayResetResult,
    LongPollAnswer,
    MachineClock,
    MeterReading,
    PendingCashout,
    RomSignature,
    SelectedGame,
    SelectedMeters,
    ValidationId,
    ValidationStatus,
    VersionInfo,
    decode_datetime,
    encode_date,
    encode_time,
    game_config_body,
    meter_2f_size,
)
from drivers.sas.codes import RTE_DATA_LENGTH, Exc, LongPoll
from drivers.sas.crc import append_crc, check_crc
from drivers.sas.errors import SasLocalProtocolError, SasRemoteProtocolError
from drivers.sas.event_data import (
    CardHeld,
    EventData,
    GameEnded,
    GameRecall,
    GameSelectedData,
    GameStarted,
    LegacyBonus,
    NoData,
    ReelStopped,
    decode_event_data,
    encode_event_data,
)

__all__ = [
    "METER_NAMES", "POLL_SPECS", "RTE_DATA_LENGTH", "Acked", "AftStatus", "BillAccepted", "CardHeld",
    "CashoutTicket", "EnabledFeatures", "EnabledGames", "EnhancedValidationRecord", "EventData",
    "GameConfig", "GameCount", "GameEnded", "GameRecall", "GameSelectedData", "GameStarted",
    "HandpayInfo", "HandpayResetResult", "LegacyBonus", "LongPollAnswer", "MachineClock",
    "MeterReading", "NoData", "PendingCashout", "Poll", "PollSpec", "ReelStopped",
    "RomSignature", "SelectedGame", "SelectedMeters", "ValidationId", "ValidationStatus",
    "VersionInfo", "aft_status", "decode_answer", "decode_clock", "decode_current_credits",
    "decode_event", "decode_event_data", "decode_game_config", "decode_rom_signature",
    "decode_version", "enabled_features", "encode_answer", "encode_current_credits",
    "encode_event", "encode_event_data", "encode_game_config", "encode_version",
    "enhanced_validation", "exception_name", "extended_meters", "game_n_configuration",
    "general_poll", "long_poll", "meter_2f_size", "multi_denom", "request_length",
    "rom_signature", "rte_mode", "selected_meters", "set_clock", "set_validation_id",
    "validation_number",
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


# Framed answers the gateway decodes outside a poll cycle (diag, the trace): thin wrappers
# around the codec registry (answers.ANSWERS).
def encode_current_credits(address: int, credits: int) -> bytes:
    """LP 1A current credits: `a 1A credits(4 BCD) crc`, 8 bytes."""
    return append_crc(bytes([address, LongPoll.CURRENT_CREDITS]) + bcd.encode(credits, 4))


def decode_current_credits(frame: bytes, address: int) -> int:
    return bcd.decode(_payload(frame, address, LongPoll.CURRENT_CREDITS, 8))


def encode_game_config(address: int, config: GameConfig) -> bytes:
    return append_crc(bytes([address, LongPoll.GAME_CONFIGURATION]) + game_config_body(config))


def decode_game_config(frame: bytes, address: int) -> GameConfig:
    p = _payload(frame, address, LongPoll.GAME_CONFIGURATION, 24)
    return ANSWERS[LongPoll.GAME_CONFIGURATION].decode(LongPoll.GAME_CONFIGURATION, p)


def encode_version(address: int, info: VersionInfo) -> bytes:
    return encode_answer(address, LongPoll.VERSION_AND_SERIAL, info)


def decode_version(frame: bytes, address: int) -> VersionInfo:
    if len(frame) < 3:
        raise SasRemoteProtocolError("short LP 54 answer")
    p = _payload(frame, address, LongPoll.VERSION_AND_SERIAL, 3 + frame[2] + 2)
    return ANSWERS[LongPoll.VERSION_AND_SERIAL].decode(LongPoll.VERSION_AND_SERIAL, p)


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
    return long_poll(address, LongPoll.SET_CLOCK, encode_date(when.date()) + encode_time(
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


def decode_clock(data: bytes) -> dt.datetime:
    """`MM DD YYYY HH MM SS` (7 BCD bytes, LP 7E answer and LP 7F data)."""
    if len(data) != 7:
        raise SasRemoteProtocolError(f"clock field of {len(data)} bytes")
    return decode_datetime(data[0:4], data[4:7])


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
    codec = ANSWERS.get(command)
    if command not in POLL_SPECS or (codec is None and POLL_SPECS[command].answer != "ack"):
        raise SasLocalProtocolError(f"no decoder for LP {command:02X}")
    if POLL_SPECS[command].answer == "ack":
        if bytes(frame) != bytes([address]):
            raise SasRemoteProtocolError(f"expected ACK, got {frame.hex()}")
        return Acked()
    assert codec is not None
    return codec.decode(command, _checked_frame(frame, address, command))


def encode_answer(address: int, command: int, answer: LongPollAnswer) -> bytes:
    """The machine's answer frame (the simulator's side of decode_answer)."""
    if isinstance(answer, Acked):
        return bytes([address])
    codec = ANSWERS.get(command)
    if codec is None or not isinstance(answer, codec.type):
        raise SasLocalProtocolError(f"cannot encode {answer!r} as the answer to LP {command:02X}")
    return append_crc(bytes([address, command]) + codec.encode(command, answer))


def decode_rom_signature(frame: bytes, address: int) -> RomSignature:
    """The delayed LP 21 answer `a 21 sig(2) crc` (reference section 6)."""
    if len(frame) != 6 or frame[0] != address or frame[1] != LongPoll.ROM_SIGNATURE:
        raise SasRemoteProtocolError(f"not an LP 21 answer: {frame.hex()}")
    if not check_crc(frame):
        raise SasRemoteProtocolError(f"bad CRC in {frame.hex()}")
    return RomSignature(int.from_bytes(frame[2:4], "little"))


def exception_name(code: int) -> str:
    """The `Exc` name of a general-poll exception code (reference section 3)."""
    try:
        return Exc(code).name
    except ValueError:
        return f"UNKNOWN_{code:02X}"
