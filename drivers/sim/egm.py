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
  * Faults (faults.py) corrupt, drop, truncate, split, delay answers, put junk around or inside
    them (one-byte ones too), answer busy, power-cycle the machine, duplicate or burst exceptions.
  * Profile (`EgmProfile`, the behaviours the reference leaves to the vendor): whether a power
    cycle keeps RTE mode, and whether a poll met with silence starts a repeat chain (the repeat
    gets the stored silence) or not (every repeat of a silent poll is a fresh poll).
  * Exceptions wait in a FIFO of `fifo_size` (20); on overflow the oldest unsent one is lost
    and 70 is reported ahead of the queue.
  * RTE mode (LP 0E): a GP or any long poll is answered with the oldest pending event as
    `addr FF code data crc`; a GP with nothing pending gets silence.
  * A type S poll with a bad CRC is NACKed (`addr|0x80`) and changes no state. Unknown long polls
    get silence. Answered: LP 01, 02, 06, 07, 0E, 0F, 10-1C, 1E, 1F, 20, 21 (ACK), 2F, 3D, 48,
    51, 53-57, 6F/AF, 7E, 7F, 94, A0 (messages.POLL_SPECS); 4C, 4D, 58 and B0 get silence.
  * Meters: honest (the play model's, Table C-7 codes of drivers/sas/meters.py; a machine
    without AFT, `asset=None`, has no transfer meters 17/18) unless told to
    lie (`Lies`): swallow the next exceptions of a code while the meters still move, move a
    meter with no exception, or zero the meters at power-up as some machines do.
  * Chirp (reference 1): with `chirp` on, after `chirp_after_s` (5 s) without an address byte the
    machine sends its address with the wakeup bit every 200 ms until polled (`take_words`).
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass, field, replace

from drivers.sas import bcd, messages
from drivers.sas.codes import Exc, LongPoll
from drivers.sas.crc import check_crc
from drivers.sas.errors import SasRemoteProtocolError
from drivers.sas.meters import METERS, TRANSFER_METER_CODES
from drivers.sim.faults import FaultInjector, FaultPlan
from drivers.sim.ledger import Ledger, LedgerEntry
from drivers.sim.machine import PlayModel

__all__ = ["PROFILES", "EgmProfile", "Lies", "SasEgm"]

_WAKEUP = 0x100
_S_TYPE = {c for c, spec in messages.POLL_SPECS.items() if spec.kind != "R"}
_CLOCK_EPOCH = dt.datetime(2026, 1, 1)
_CHIRP_EVERY_S = 0.2


@dataclass(frozen=True, slots=True)
class EgmProfile:
    """Machine behaviours that vary by vendor (sas-reference.md 2.3, "Where real machines and
    lines differ"); a host must be correct for every combination.

    `rte_after_power`: the machine comes back from a power cycle still in RTE mode (else in
    normal mode). `silence_fresh`: a poll the machine met with silence starts no repeat chain,
    so an identical poll after it is a fresh poll and gets whatever is pending by then (else the
    repeat gets the stored silence, and the third identical poll is the final one)."""

    rte_after_power: bool = False
    silence_fresh: bool = False

    @property
    def name(self) -> str:
        flags = [n for n, on in (("rte_after_power", self.rte_after_power),
                                 ("silence_fresh", self.silence_fresh)) if on]
        return "+".join(flags) or "default"


PROFILES = {p.name: p for p in (EgmProfile(), EgmProfile(rte_after_power=True),
                                EgmProfile(silence_fresh=True),
                                EgmProfile(rte_after_power=True, silence_fresh=True))}


@dataclass(slots=True)
class Lies:
    """Controlled lies for tests: what a faulty machine does to its own accounting.
    `swallow`: exception code -> how many of its next play exceptions to drop (the meters
    move, nothing is reported); `offset`: meter -> amount added with no exception;
    `reset_at_power`: the meters read zero after each power cycle."""

    swallow: dict[int, int] = field(default_factory=dict)
    offset: dict[str, int] = field(default_factory=dict)
    reset_at_power: bool = False
    told: list[tuple[float, str]] = field(default_factory=list)  # (when, what): for tests

    def swallows(self, code: int, now: float) -> bool:
        if self.swallow.get(code, 0) > 0:
            self.swallow[code] -= 1
            self.told.append((now, f"swallowed {code:02X}"))
            return True
        return False


@dataclass(slots=True)
class _Last:
    key: tuple[int | None, bytes]
    answer: bytes
    entry: LedgerEntry | None
    repeats: int = 0


_ANSWERED = frozenset({*messages.METER_NAMES, 0x1B, 0x2F, 0x3D, 0x48, 0x51, 0x53, 0x55, 0x56,
                       0x57, 0x6F, 0xAF, 0x7E, 0x94, 0xA0})


class SasEgm:
    def __init__(self, address: int, ledger: Ledger, *, play: PlayModel | None = None,
                 config: messages.GameConfig | None = None, serial: str = "SIM0001",
                 sas_version: str = "602", fifo_size: int = 20,
                 rte_capable: bool = True, faults: FaultPlan | None = None,
                 chirp: bool = True, chirp_after_s: float = 5.0,
                 unsupported: frozenset[int] = frozenset(), asset: int | None = 0,
                 profile: EgmProfile | None = None) -> None:
        self.address = address
        # LP 74 (interrogate) reports it (0: none set); None: no AFT, LP 74 gets silence.
        self.asset = asset
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
        self.profile = profile or EgmProfile()
        self.faults = FaultInjector(faults or FaultPlan())
        # (index, gap_s): the runner sends the next answer in two parts ("split" fault).
        self.answer_split: tuple[int, float] | None = None
        # Seconds the runner should hold the next answer back ("slow" fault); consumed by it.
        self.answer_delay = 0.0
        self.powered_until: float | None = None
        self.chirp = chirp
        self.chirp_after_s = chirp_after_s
        self.chirps_sent = 0
        self._last_address_at = 0.0
        self._next_chirp: float | None = chirp_after_s if chirp else None
        self._out_words: list[int] = []
        self._lone_before = 0
        self.clock_offset_s = 0.0
        # Long polls this machine ignores (silence, reference 2.2), e.g. {0x6F, 0xAF}.
        self.unsupported = unsupported
        self.lies = Lies()

    # ---- play --------------------------------------------------------------------------------

    @property
    def credits(self) -> int:
        return self.play.credits if self.play else 0

    def raise_exception(self, code: int, data: bytes, now: float) -> LedgerEntry:
        entry = self._enqueue(code, data, now)
        if self.faults.roll("duplicate"):
            # A genuine second report with identical code and data (two equal bills).
            self._enqueue(code, data, now)
            if self.play:
                self.play.repeat(code, data)
        if self.faults.roll("overflow"):
            for _ in range(self.fifo_size + 5):
                self._enqueue(Exc.GENERAL_TILT, b"", now)
        if self.faults.roll("power"):
            self.power_cycle(now)
        return entry

    def power_cycle(self, now: float) -> None:
        """Power off for `power_off_s`: silent, then unsynced, RTE off (kept with the profile's
        `rte_after_power`), 18 and 17 queued. The FIFO is in NVRAM and survives; an
        unacknowledged answer is simply not acknowledged."""
        self.powered_until = now + self.faults.plan.power_off_s
        self._last = None
        self._msg = None
        self.synced = False
        self.rte = self.rte and self.profile.rte_after_power
        if self.lies.reset_at_power:
            raw = self._meters(honest=True)
            self.lies.offset = {k: -v for k, v in raw.items()}
            self.lies.told.append((now, "meters reset at power-up"))
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
        due = [t for t in (self.play.due() if self.play else None, self._next_chirp)
               if t is not None]
        return min(due) if due else None

    def handle_timer(self, now: float) -> None:
        if self.play:
            for code, data in self.play.advance(now, rte=self.rte):
                if not self.lies.swallows(code, now):
                    self.raise_exception(code, data, now)
        if self._next_chirp is not None and now >= self._next_chirp:
            off = self.powered_until is not None and now < self.powered_until
            if not off:
                self._out_words.append(_WAKEUP | self.address)
                self.chirps_sent += 1
            self._next_chirp = now + _CHIRP_EVERY_S

    def take_words(self) -> list[int]:
        """Unsolicited words to send (chirps), 9-bit: bit 8 is the wakeup bit."""
        words, self._out_words = self._out_words, []
        return words

    def clock(self, now: float) -> dt.datetime:
        return (_CLOCK_EPOCH + dt.timedelta(seconds=now + self.clock_offset_s)).replace(
            microsecond=0)

    # ---- link --------------------------------------------------------------------------------

    def receive_words(self, words: list[int] | tuple[int, ...], now: float) -> bytes:
        """Feed received words; returns the bytes to send back (possibly empty)."""
        out = b""
        self._lone_before = self.ledger.lone_bytes
        for word in words:
            if word & _WAKEUP:
                self._msg = [word & 0xFF]
                self._last_address_at = now
                if self.chirp:
                    self._next_chirp = now + self.chirp_after_s
            elif self._msg is None:
                continue
            else:
                self._msg.append(word & 0xFF)
            msg = self._msg
            if msg[0] & 0x80:
                need: int | None = 1
            elif len(msg) >= 2:
                need = messages.request_length(msg[1], msg[2] if len(msg) > 2 else None)
            else:
                need = None
            if need is not None and len(msg) >= need:
                self._msg = None
                out = self._handle(bytes(msg), now)
        return out

    def answer_late(self) -> None:
        """The answer `receive_words` just returned could not go out within the answer window
        (reference 2.1: 20 ms): the process running this machine was not scheduled in time, as
        on a loaded test host. A machine answering that late breaks the timing every host relies
        on (docs/sas.md, "Known limit"), and real hardware does not: so the answer is lost on the
        line instead, as with the `silence` fault, which every host must survive. Counted in
        `ledger.late_answers`."""
        self.ledger.late_answers += 1
        self.ledger.lone_bytes = self._lone_before   # no byte of it reached the host
        self.answer_delay = 0.0
        self.answer_split = None

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
        if not answer:
            return answer
        if self._last is not None and self._last.entry is not None:
            self._last.entry.sent += 1
            self._last.entry.sent_bare += len(answer) == 1
        f = self.faults
        if f.roll("silence"):
            return b""
        clean = answer
        long = len(answer) >= 2
        # Could a host take one byte alone for this poll's answer (a GP's, or a lone ACK)?
        spec = None if msg[0] & 0x80 else messages.POLL_SPECS.get(msg[1])
        one_byte = spec is None or spec.answer == "ack"
        if long and f.roll("crc"):
            answer = f.corrupt(answer)
        if long and f.roll("truncate"):
            answer = f.truncate(answer)
            if len(answer) == 1 and one_byte:
                self.ledger.lone_bytes += 1  # e.g. the address alone: a lone ACK to the host
        if f.roll("junk"):
            answer = f.junk(answer)
        if long and f.roll("garbage"):
            answer = f.garbage(self.address) + answer
        if len(answer) >= 2 and f.roll("split"):
            cut = f.split_point(answer)
            self.answer_split = (cut, f.plan.split_gap_s)
            if cut == 1 and answer[:1] != clean and one_byte:
                # A lone well-formed byte, then silence, standing in for the answer: no host can
                # tell it from a one-byte answer (docs/sas.md, "Residual risk").
                self.ledger.lone_bytes += 1
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
        answer, entry = self._answer(command, data, now)
        if answer or not self.profile.silence_fresh:
            self._last = _Last(key, answer, entry)
        return answer

    def _answer(self, command: int | None, data: bytes,
                now: float) -> tuple[bytes, LedgerEntry | None]:
        a = self.address
        head = self._head()
        if self.rte and head is not None:
            return messages.encode_event(a, head.code, head.data), head
        if command is None:
            if self.rte:
                return b"", None
            return bytes([head.code if head else 0]), head
        if command in self.unsupported:
            return b"", None
        match command:
            case LongPoll.CURRENT_CREDITS:
                return messages.encode_current_credits(a, self.credits), None
            case LongPoll.GAME_CONFIGURATION:
                return messages.encode_game_config(a, self.config), None
            case LongPoll.VERSION_AND_SERIAL:
                return messages.encode_version(a, self.version), None
            case LongPoll.AFT_STATUS if self.asset is not None:
                return messages.encode_answer(a, command, messages.AftStatus(self.asset)), None
            case LongPoll.RTE_MODE if self.rte_capable:
                self.rte = data == b"\x01"
            case LongPoll.ROM_SIGNATURE:
                pass  # ACK now; the signature itself is never delivered (not simulated)
            case LongPoll.SET_CLOCK:
                self._set_clock(data, now)
            case LongPoll.ENABLE_BILL_ACCEPTOR | LongPoll.DISABLE_BILL_ACCEPTOR:
                pass
            case _ if command in _ANSWERED:
                value = self._typed_answer(command, data, now)
                return messages.encode_answer(a, command, value), None
            case LongPoll.SHUTDOWN:
                self.enabled = False
            case LongPoll.STARTUP:
                self.enabled = True
            case _:
                return b"", None
        return bytes([a]), None

    def _meters(self, *, honest: bool = False) -> dict[str, int]:
        base = dict.fromkeys((m.name for m in METERS.values()), 0)
        if self.play:
            base.update(self.play.meters())
        if not honest:
            for name, amount in self.lies.offset.items():
                base[name] = (base.get(name, 0) + amount) % 10**8
        return base

    def _typed_answer(self, command: int, data: bytes, now: float) -> messages.LongPollAnswer:
        meters = self._meters()
        play = self.play
        if command in messages.METER_NAMES:
            counts = play.bill_counts if play else {}
            extra = {"games_since_power_up": meters["games_played"] % 10**4,
                     "games_since_door_closed": meters["games_played"] % 10**4,
                     "slot_door_opened_count": 0, "power_resets": 0,
                     "bills_total_dollars": sum(c * n for c, n in counts.items()) // 100}
            names = messages.METER_NAMES[command]
            return messages.MeterReading(command, {n: {**meters, **extra}[n] for n, _ in names})
        match command:
            case LongPoll.HANDPAY_INFO:
                cents = play.handpay_cents if play else 0
                return messages.HandpayInfo(0, 0x40 if cents else 0, cents, 0, 0)
            case LongPoll.SELECTED_METERS | LongPoll.EXTENDED_METERS | LongPoll.EXTENDED_METERS_ALT:
                game = bcd.decode(data[1:3])
                step = 1 if command == LongPoll.SELECTED_METERS else 2
                codes = [int.from_bytes(data[i:i + step], "little")
                         for i in range(3, len(data), step)]
                # A machine without AFT (no asset number, LP 74 silent) keeps no transfer
                # meters: it leaves them out of the answer.
                kept = {c for c in codes if c in METERS and (
                    self.asset is not None or c not in TRANSFER_METER_CODES)}
                return messages.SelectedMeters(command, game, {
                    c: meters[METERS[c].name] for c in codes if c in kept})
            case LongPoll.CASHOUT_TICKET:
                return messages.CashoutTicket(0, 0)
            case LongPoll.LAST_BILL:
                code, count = (play.last_bill if play and play.last_bill else (0, 0))
                return messages.BillAccepted(1 if count else 0, code, count)
            case LongPoll.GAME_COUNT:
                return messages.GameCount(1)
            case LongPoll.GAME_N_CONFIGURATION:
                return replace(self.config, game_number=bcd.decode(data))
            case LongPoll.SELECTED_GAME:
                return messages.SelectedGame(1)
            case LongPoll.ENABLED_GAMES:
                return messages.EnabledGames((1,))
            case LongPoll.PENDING_CASHOUT:
                return messages.PendingCashout(0x80, 0)
            case LongPoll.READ_CLOCK:
                return messages.MachineClock(self.clock(now))
            case LongPoll.REMOTE_HANDPAY_RESET:
                if play and play.handpay_cents:
                    play.handpay_cents = 0
                    return messages.HandpayResetResult(0)
                return messages.HandpayResetResult(2)
            case LongPoll.ENABLED_FEATURES:
                return messages.EnabledFeatures(bcd.decode(data), b"\x00\x00\x00")
        raise AssertionError(f"LP {command:02X} listed as answered")  # pragma: no cover

    def _set_clock(self, data: bytes, now: float) -> None:
        try:
            when = messages.decode_clock(data)
        except SasRemoteProtocolError:
            return
        self.clock_offset_s = (when - _CLOCK_EPOCH).total_seconds() - now
