"""Expectation-driven framing of machine answers (house style 3.3).

Most SAS answers are not self-delimiting: a general poll answer in normal mode is one bare byte, a
long-poll answer has a length fixed by its command or given by a length byte, an ACK is the lone
address byte. So the host hands the framer an `Expectation` describing the outstanding poll, and the
framer decides when an answer is complete. Any expected answer may instead be a NACK (`addr|0x80`),
busy (`addr 00`) or, in RTE mode, an event frame (`addr FF code data crc`). Bytes that cannot start
an answer are discarded (resync), and counted.

The answers without a CRC -- a normal-mode general-poll answer (one bare byte), a lone ACK
(`addr`) and busy (`addr 00`) -- count only once the line has been quiet for the inter-byte gap
(`quiet=True`), and only if they are all there was: no byte discarded before them, none after.
Otherwise junk on the line could pass for one (`3C 2A 7E` is not exception 3C), or the tail of a
corrupted frame could, and the next poll would acknowledge the real answer nobody recorded. Such
bytes are `Ambiguous`: the host answers them like a bad CRC, with the identical poll (implied
NACK), and the machine re-sends. A CRC-checked frame is taken even with junk around it.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.sas.codes import RTE_DATA_LENGTH
from drivers.sas.crc import check_crc

__all__ = [
    "Ack",
    "Ambiguous",
    "Answer",
    "Busy",
    "Corrupt",
    "Data",
    "Event",
    "ExceptionByte",
    "Expectation",
    "Framer",
    "Nack",
]

# Sanity cap for length-byte answers; anything larger is garbage (LP 54 carries at most 43 bytes).
_MAX_LENGTH_BYTE = 250


@dataclass(frozen=True, slots=True)
class Expectation:
    """What may answer the outstanding poll. `command` None = general poll; `length` is the total
    length of a fixed-size answer, `length_byte` marks answers with a length at offset 2, neither
    means the answer is an ACK (the lone address byte)."""

    address: int
    command: int | None = None
    rte: bool = False
    length: int | None = None
    length_byte: bool = False

    @property
    def is_ack(self) -> bool:
        return self.command is not None and self.length is None and not self.length_byte


@dataclass(frozen=True, slots=True)
class ExceptionByte:
    code: int


@dataclass(frozen=True, slots=True)
class Event:
    code: int
    data: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    pass


@dataclass(frozen=True, slots=True)
class Data:
    frame: bytes


@dataclass(frozen=True, slots=True)
class Nack:
    pass


@dataclass(frozen=True, slots=True)
class Busy:
    pass


@dataclass(frozen=True, slots=True)
class Corrupt:
    """A frame of the right shape whose CRC failed."""

    frame: bytes


@dataclass(frozen=True, slots=True)
class Ambiguous:
    """Bytes that may hold an answer without a CRC but do not make exactly one: extra bytes
    around a one-byte answer, or no quiet gap after it. Nobody can say what the machine sent."""

    frame: bytes


Answer = ExceptionByte | Event | Ack | Data | Nack | Busy | Corrupt | Ambiguous


class Framer:
    """Buffers received bytes and cuts answers out of them for a given expectation."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.discarded = 0
        self._dirty = False

    def feed(self, data: bytes) -> None:
        self._buf += data

    def pending(self) -> int:
        return len(self._buf)

    def clear(self) -> int:
        """Drop whatever is buffered (stray bytes between polls); returns how many."""
        n = len(self._buf)
        self._buf.clear()
        self.discarded += n
        self._dirty = False
        return n

    def _discard(self) -> None:
        del self._buf[0]
        self.discarded += 1
        self._dirty = True

    def _take(self, n: int) -> bytes:
        frame = bytes(self._buf[:n])
        del self._buf[:n]
        return frame

    def _checked(self, n: int, ok: type[Event] | type[Data]) -> Answer | None:
        if len(self._buf) < n:
            return None
        frame = self._take(n)
        if not check_crc(frame):
            return Corrupt(frame)
        return Event(frame[2], frame[3:-2]) if ok is Event else Data(frame)

    def _ambiguous(self) -> Ambiguous:
        frame = self._take(len(self._buf))
        self.discarded += len(frame)
        self._dirty = False
        return Ambiguous(frame)

    def next_answer(self, exp: Expectation, *, quiet: bool = False) -> Answer | None:
        """The complete answer at the head of the buffer, or None if more bytes are needed.
        `quiet` means the line has been silent for the inter-byte gap, which completes a lone ACK."""
        buf = self._buf
        addr = exp.address
        if exp.command is None and not exp.rte:
            # Normal mode: one bare byte, alone on the line until the gap. But a machine may still
            # be in RTE mode when we think it is not (after a link loss), so the address followed
            # by FF is an event frame.
            if not buf:
                return None
            if not (buf[0] == addr and len(buf) > 1 and buf[1] == 0xFF):
                if not quiet:
                    return None
                if len(buf) == 1 and not self._dirty:
                    return ExceptionByte(self._take(1)[0])
                return self._ambiguous()
        if (exp.command is None and exp.rte and len(buf) == 1 and not self._dirty
                and buf[0] not in (addr, addr | 0x80)):
            # RTE mode, yet one bare byte answers the GP: the machine has left RTE mode (power
            # cycle, operator) and this is a normal-mode exception code. The host believes what
            # the machine shows; without this a host stuck in RTE would discard every exception.
            return ExceptionByte(self._take(1)[0]) if quiet else None
        while True:
            while buf and buf[0] not in (addr, addr | 0x80):
                self._discard()
            if not buf:
                return None
            if buf[0] == addr | 0x80:
                self._take(1)
                return Nack()
            if len(buf) == 1:
                if exp.is_ack and quiet and not self._dirty:
                    self._take(1)
                    return Ack()
                return None
            second = buf[1]
            if second == 0x00 and len(buf) == 2:
                if not quiet:
                    return None
                if not self._dirty:
                    self._take(2)
                    return Busy()
            if second == 0xFF:
                if len(buf) < 3:
                    return None
                return self._checked(5 + RTE_DATA_LENGTH.get(buf[2], 0), Event)
            if exp.command is not None and second == exp.command:
                if exp.length_byte:
                    if len(buf) < 3:
                        return None
                    if buf[2] <= _MAX_LENGTH_BYTE:
                        return self._checked(3 + buf[2] + 2, Data)
                elif exp.length is not None:
                    return self._checked(exp.length, Data)
            # The address byte was not the start of an answer: resync past it.
            self._discard()
