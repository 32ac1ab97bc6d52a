"""Sans-I/O simulated EGM: the machine side of SAS, the mirror of drivers.sas.host.

Theory of operation
-------------------
Input is a stream of 9-bit words (bit 8 = wakeup). A word with the wakeup bit starts a message; a
general poll is that one byte, a long poll's length follows from its command (reference 6).
  * Sync (reference 2.3): after power-up the machine ignores its own address until it has seen a
    poll to another address or to address 0.
  * Implied ACK/NACK: the machine remembers its last answer and the poll it answered. The same
    poll again is an implied NACK: the answer is resent once; the third identical poll (the host's
    final attempt) gets silence, as Aristocrat's EGM does, and the exception stays queued
    (reference 2.3). Anything else, including any poll to another address, ACKs the last answer,
    and an exception it carried leaves the queue.
  * Faults (faults.py) corrupt, drop, delay or prefix garbage to CRC-protected answers, answer
    busy, power-cycle the machine, duplicate or burst exceptions.
  * Exceptions wait in a FIFO of `fifo_size` (20); on overflow the oldest unsent one is lost
    and 70 is reported ahead of the queue.
  * RTE mode (LP 0E): a GP or any long poll is answered with the oldest pending event as
    `addr FF code data crc`; a GP with nothing pending gets silence.
  * A type S poll with a bad CRC is NACKed (`addr|0x80`) and changes no state. Unknown long polls
    get silence.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from drivers.sas import messages
from drivers.sas.codes import Exc, LongPoll
from drivers.sas.crc import check_crc
from drivers.sim.faults import FaultInjector, FaultPlan
from drivers.sim.ledger import Ledger, LedgerEntry
from drivers.sim.machine import PlayModel

__all__ = ["SasEgm"]

_WAKEUP = 0x100
# Total request lengths of the long polls we know (address + command + data + CRC).
_REQUEST_LENGTH = {0x01: 4, 0x02: 4, 0x06: 4, 0x07: 4, 0x0E: 5, 0x21: 6, 0x7F: 11, 0x94: 4}
_S_TYPE = set(_REQUEST_LENGTH)


@dataclass(slots=True)
class _Last:
    key: tuple[int | None, bytes]
    answer: bytes
    entry: LedgerEntry | None
    repeats: int = 0


class SasEgm:
    def __init__(self, address: int, ledger: Ledger, *, play: PlayModel | None = None,
                 config: messages.GameConfig | None = None, serial: str = "SIM0001",
                 sas_version: str = "602", fifo_size: int = 20,
                 rte_capable: bool = True, faults: FaultPlan | None = None) -> None:
        self.address = address
        self.ledger = ledger
        self.play = play
        self.config = config or messages.GameConfig()
        self.version = messages.VersionInfo(sas_version, serial)
        self.fifo_size = fifo_size
        self.rte_capable = rte_capable
        self.synced = False
        self.rte = False
        self.enabled = True
        self.fifo: deque[LedgerEntry] = deque()
        self._overflow: LedgerEntry | None = None
        self._last: _Last | None = None
        self._msg: list[int] | None = None
        self.polls_seen = 0
        self.nacks_sent = 0
        self.faults = FaultInjector(faults or FaultPlan())
        # Seconds the runner should hold the next answer back ("slow" fault); consumed by it.
        self.answer_delay = 0.0
        self.powered_until: float | None = None

    # ---- play --------------------------------------------------------------------------------

    @property
    def credits(self) -> int:
        return self.play.credits if self.play else 0

    def raise_exception(self, code: int, data: bytes, now: float) -> LedgerEntry:
        entry = self._enqueue(code, data, now)
        if self.faults.roll("duplicate"):
            # A genuine second report with identical code and data (two equal bills).
            self._enqueue(code, data, now)
        if self.faults.roll("overflow"):
            for _ in range(self.fifo_size + 5):
                self._enqueue(Exc.GENERAL_TILT, b"", now)
        if self.faults.roll("power"):
            self.power_cycle(now)
        return entry

    def power_cycle(self, now: float) -> None:
        """Power off for `power_off_s`: silent, then unsynced, RTE off, 18 and 17 queued. The
        FIFO is in NVRAM and survives; an unacknowledged answer is simply not acknowledged."""
        self.powered_until = now + self.faults.plan.power_off_s
        self._last = None
        self._msg = None
        self.synced = False
        self.rte = False
        self._enqueue(Exc.AC_POWER_LOST, b"", now)
        self._enqueue(Exc.AC_POWER_APPLIED, b"", now)

    def _enqueue(self, code: int, data: bytes, now: float) -> LedgerEntry:
        entry = self.ledger.raised(code, data, now)
        if len(self.fifo) >= self.fifo_size:
            outstanding = self._last.entry if self._last else None
            victim = next(e for e in self.fifo if e is not outstanding)
            self.fifo.remove(victim)
            self.ledger.lose(victim)
            if self._overflow is None:
                self._overflow = self.ledger.raised(Exc.BUFFER_OVERFLOW, b"", now)
        self.fifo.append(entry)
        return entry

    def get_timer(self) -> float | None:
        return self.play.due() if self.play else None

    def handle_timer(self, now: float) -> None:
        if self.play:
            for code, data in self.play.advance(now, rte=self.rte):
                self.raise_exception(code, data, now)

    # ---- link --------------------------------------------------------------------------------

    def receive_words(self, words: list[int] | tuple[int, ...], now: float) -> bytes:
        """Feed received words; returns the bytes to send back (possibly empty)."""
        out = b""
        for word in words:
            if word & _WAKEUP:
                self._msg = [word & 0xFF]
            elif self._msg is None:
                continue
            else:
                self._msg.append(word & 0xFF)
            msg = self._msg
            if msg[0] & 0x80 or (len(msg) >= 2 and len(msg) >= _REQUEST_LENGTH.get(msg[1], 2)):
                self._msg = None
                out = self._handle(bytes(msg), now)
        return out

    def _head(self) -> LedgerEntry | None:
        return self._overflow or (self.fifo[0] if self.fifo else None)

    def _ack_last(self, now: float) -> None:
        last, self._last = self._last, None
        if last is None or last.entry is None:
            return
        entry = last.entry
        if entry is self._overflow:
            self._overflow = None
        elif entry in self.fifo:
            self.fifo.remove(entry)
        self.ledger.acknowledge(entry, now)

    def _handle(self, msg: bytes, now: float) -> bytes:
        if self.powered_until is not None:
            if now < self.powered_until:
                return b""
            self.powered_until = None
        answer = self._process(msg, now)
        if len(answer) < 2:
            return answer
        f = self.faults
        if f.roll("silence"):
            return b""
        if f.roll("crc"):
            answer = f.corrupt(answer)
        if f.roll("garbage"):
            answer = f.garbage(self.address) + answer
        if f.roll("slow"):
            self.answer_delay = f.plan.slow_s
        return answer

    def _process(self, msg: bytes, now: float) -> bytes:
        address = msg[0] & 0x7F
        if address != self.address:
            self.synced = True
            self._ack_last(now)
            return b""
        if not self.synced:
            return b""
        self.polls_seen += 1
        is_gp = bool(msg[0] & 0x80)
        command = None if is_gp else msg[1]
        if command in _S_TYPE and not check_crc(msg):
            self.nacks_sent += 1
            return bytes([0x80 | self.address])
        key = (command, b"")
        last = self._last
        if command is not None and (last is None or last.key != key) and self.faults.roll("busy"):
            # Busy answers fresh long polls (a repeat only resends a stored answer, and a
            # normal-mode GP answer is one bare byte).
            return bytes([self.address, 0x00])
        if last is not None and last.key == key:
            last.repeats += 1
            if last.repeats < 2:
                return last.answer
            # Final identical poll: the host has given up on this answer. Stay silent, and keep
            # an exception it carried queued: the host's next, different poll is no ACK for it.
            self._last = None
            return b""
        self._ack_last(now)
        data = msg[2:-2] if command in _S_TYPE else b""
        answer, entry = self._answer(command, data)
        self._last = _Last(key, answer, entry)
        return answer

    def _answer(self, command: int | None, data: bytes) -> tuple[bytes, LedgerEntry | None]:
        a = self.address
        head = self._head()
        if self.rte and head is not None:
            return messages.encode_event(a, head.code, head.data), head
        if command is None:
            if self.rte:
                return b"", None
            return bytes([head.code if head else 0]), head
        match command:
            case LongPoll.CURRENT_CREDITS:
                return messages.encode_current_credits(a, self.credits), None
            case LongPoll.GAME_CONFIGURATION:
                return messages.encode_game_config(a, self.config), None
            case LongPoll.VERSION_AND_SERIAL:
                return messages.encode_version(a, self.version), None
            case LongPoll.RTE_MODE if self.rte_capable:
                self.rte = data == b"\x01"
            case LongPoll.SHUTDOWN:
                self.enabled = False
            case LongPoll.STARTUP:
                self.enabled = True
            case _:
                return b"", None
        return bytes([a]), None
