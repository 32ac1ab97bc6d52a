"""Sans-I/O SAS host: one object per serial line, polling one or more machine addresses.

Theory of operation
-------------------
The line is half duplex, so at most one poll is in flight (`_inflight`). Each machine has a queue
of long polls (discovery LP 1F / LP 54 / LP 0E, commands, the periodic LP 1A); when its minimum
poll interval has passed it gets the head of that queue, or else a general poll (GP).

Implied ACK (reference 2.3). The machine learns that its answer arrived when the next poll it sees
differs from the last one; an identical poll is an implied NACK and makes it resend. So:
  * an identical poll is only ever sent as a retry, or as the next idle GP in RTE mode;
  * any other time the next poll would equal the last frame on the line, the host first sends a
    GP to an unused "sync" address, which is an implied ACK and sends nothing back;
  * after a non-zero exception to a GP the follow-up is LP 1A (the ACK, and a credits read);
    in RTE mode the sync GP is the ACK instead (an LP would be answered by the next event);
    after an RTE event in place of a long-poll answer that long poll stays queued, and re-sending
    it is preceded by the sync GP, so the event is ACKed and the poll re-issued.
Durable before acknowledged (docs/sas.md, "The answer contract"). An exception is reported as
`Report(event, token)`; from then on the host sends nothing on the whole line (any poll would ACK
it) until `durable(token)` is called. The next frames handed out by `frames_to_send()` are the
implied ACK, and `Acknowledged(event)` is queued right after them.
Undecoded answers (the answer contract, docs/sas.md). The host never sends a poll the machine
can take as an implied ACK unless the answer it acknowledges was decoded unambiguously and is
durable. Ambiguous bytes -- a bare byte with anything before or after it or without the quiet
gap (framing.Ambiguous), a bad CRC, a frame cut short, bytes that make no answer -- get the
identical poll again (implied NACK), after the minimum poll interval, and the machine re-sends.
A silence may be a lost answer too: a poll whose answer could carry an exception (a GP; in RTE
mode any poll) to a machine that was online -- or any poll the machine answered at all in this
series (it may be in RTE mode unbeknown to the host) -- is repeated until
`give_up_after_silences` (9) silences in a row -- the machine's final identical
poll is silent and keeps the exception queued (reference 2.3); three such chains survive a lost
busy answer shifting the count. Other polls, and machines that were offline, give up after
`max_attempts` (3) silences. While bytes keep coming the poll is repeated up to
`max_attempts_answering` (60) transmissions; giving up then, on a poll whose answer could carry
an exception (a GP's, any in RTE mode, or one where an event frame's start was seen), records a
`lossMarker` (reason `undecodedAnswer`, the poll in `detail`): the next
poll acknowledges what the machine sent. Late bytes after a failed attempt count only as a
CRC-checked frame (a lone byte there is the tail of a split answer). A give-up resynchronises
the line (sync GP). The first `max_attempts` silences of a run, and every garbled attempt, are
missed polls; `offline_after_misses` in a row make the machine offline, the first valid answer
online again.
Busy (`addr 00`) gets the identical poll again after the poll interval: any other poll would ACK
the previous answer, which may have been lost.
RTE silence. A silent GP means "no activity" -- or a lost event answer, so it is repeated
`rte_silence_retries` times first (the machine resends a lost event, and keeps it queued after the
final identical poll). While the host has nothing else for that machine, the next GP repeats it
as is, with no sync GP in between: some machines start no repeat chain on a silent poll and
answer the next identical one as a fresh poll, so an event answered to the last GP of a series
and lost would otherwise be acknowledged by the sync GP. Liveness in RTE mode comes from the
periodic LP 1A. (When another poll falls due right after such a lost answer, no host can know:
docs/sas.md, "Residual risk".)
Synchronisation. A machine ignores its own address after power-up or link loss until it sees a
poll to another address, so the sync GP is also sent at start and after any machine goes offline.
Restart. The first poll to each machine after the host starts repeats the last frame the previous
process sent it (`last_polls`, from drivers/sas/journal.py), or a plain GP if none is known, with
no sync GP in front. If the gateway died after the machine answered but before the answer was
made durable, the machine still waits for an implied ACK; any other poll (the sync GP, a
discovery LP) would be that ACK and the exception would be lost. The identical poll is an implied
NACK instead, so the machine re-sends its answer (and the sink recognises a redelivery of what it
already recorded). The machine that got the line's last frame (`first_probe`) is probed first:
any poll before it would be its implied ACK, while every other machine's answer was ACKed by a
later frame already. If the line's last frame was the sync GP (an ACK journaled, perhaps never
sent), it is sent again first, so the machine is acknowledged either way, as the journal says.
Silence means the machine is unsynchronised (or has nothing to say in RTE mode): the host syncs
and carries on, and the probe counts as no missed poll.
Machine resets. A machine deletes an exception only on its implied ACK (reference 2.3); powered
off before the ACK poll reached it, it reports the same exception again after power-up. So the
host keeps the last acknowledged exception `unconfirmed` until the machine shows it heard the ACK:
any bytes in answer to a poll sent after the ACK with no frame to another address in between (a
machine that reset ignores its address until such a frame resynchronises it). In RTE mode the
ACK (the sync GP) is therefore followed by LP 1A, whose answer, credits or the next event,
confirms at once. If the machine instead fell silent -- a poll abandoned without one byte, and
no byte from it for `reset_silence_s` (1.5 s; shorter silences happen on a noisy line while it
is up) -- and was resynchronised, its first queued exception settles it: the same code (and
data, unless it came bare) is the re-send, in RTE mode as well as out of it (some machines
restore RTE after power-up), reported as `Report(..., resent=True)` and acknowledged without a second record;
anything else is new. Left ambiguous: a reset in the milliseconds between the ACK and the
confirming answer, followed by a genuine identical exception (counted, `resent_after_reset`).
Discovery (first contact, after offline, and again on exception 3C): LP 1F, 54, A0, 51 (then 56
when the machine has games), then LP 0E when RTE is on; 3C re-reads all but LP 0E.
Periodic long polls: a meter read (LP 6F/AF alternating, or LP 1C + 0F with `meter_polls="1C"`
or once a machine has ignored 6F) every `meters_every_s`, the clock (LP 7E) every
`clock_every_s`, LP 1A every `credits_every_s`. A periodic poll only goes out when the previous
poll to that machine was a GP, so GPs get at least every other slot. A finished meter read is
reported as a `meterSnapshot` (source None: not an exception, nothing to acknowledge), with
`straddle`: how many exceptions were recorded between the read's first answer and the report --
events the machine may have counted in the meters before the host heard of them. The snapshot
is held until the machine shows an empty queue: a GP answered 00, or met with silence in RTE
mode -- or the meter answer itself, in RTE mode, once the machine has sent an event frame since
it last fell silent long enough to have reset (`reset_silence_s`): a machine back from a
power-up may answer in normal mode, queue or not. See docs/reconciliation.md. Exception 17 (power
applied) and a `machineReplaced` queue a meter read as 70 does.
Exception follow-ups, queued when the exception is reported and sent after it is durable (the
follow-up is the implied ACK, so never before): 51 -> LP 1B (result in `statistics()`
`last_handpay`; the event stays the one `handpayPending`), 47-4E/50 and non-RTE 4F -> LP 48
(`last_bill`), 70 -> a full meter read, 3C -> discovery. In RTE mode the sync GP goes first (ACK
poll is always a GP there, see "Restart").
Chirps (reference 1): a byte with the wakeup bit from the machine side (`receive_words`) while no
poll is outstanding is counted (`chirps`) and reported as a `LinkNote`; during a poll it is
discarded as garbage. Either way it never reaches the framer.
Poll interval: `poll_interval_s` per machine, never below `min_poll_interval_s` (40 ms, the fast
polling floor of reference 2.1) nor above 5 s; `timer_slack_s` (1 ms) early at most.
Line scheduling: an offline address that meets a poll with silence gets that one attempt and is
polled again after one interval, then 2x, 4x ... up to `offline_backoff_max_s`; any answer resets
it. Online machines never back off (a silent RTE GP is "nothing to report"). The wait for the
first byte of an answer is the wire time of the frames sent + `answer_window_s` (reference 2.1)
+ `port_latency_s` (p90 of the last 64 first-byte delays less wire time), capped by
`response_timeout_s`, which is also the wait until a first answer was measured. (The driver,
woken more than 5 ms after a deadline by a busy event loop, first reads what already arrived:
an answer in the kernel's buffer must not be retried over.)
Port lifecycle: `link_down()` (the driver calls it when the link breaks or will not open) reports
every machine not known offline (`deviceOffline` with the reason), fails queued commands, and
arms restart probes and discovery for the reconnect. Identity (serial from LP 54, asset from LP
74, game from LP 1F) is forgotten while a machine is offline; when discovery has read it again,
a difference from the identity confirmed before (parts both sides report) is a `machineReplaced`
report, and a serial or asset another online address has is a `LinkNote` "address conflict".
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from drivers.model import MachineEvent, MachineRef, TxFrame
from drivers.sas import framing, messages
from drivers.sas.codes import BILL_CODE_CENTS, DENOMINATION_CENTS, Exc, LongPoll
from drivers.sas.errors import SasLocalProtocolError, SasRemoteProtocolError
from drivers.sas.mapping import SILENT_CODES, exception_event
from drivers.sas.meters import METERS, READ_CHUNKS, digits_of

__all__ = ["Acknowledged", "CommandFinished", "HostConfig", "LinkNote", "Report", "SasHost"]


@dataclass(frozen=True, slots=True)
class HostConfig:
    poll_interval_s: float = 0.2
    response_timeout_s: float = 0.1
    # Silence that ends an answer (reference 2.1: at most 5 ms between bytes); it completes a lone
    # ACK or busy, and cuts short the wait for the rest of a broken frame.
    inter_byte_gap_s: float = 0.01
    offline_after_misses: int = 5
    rte: bool = True
    credits_every_s: float = 5.0
    # Silent transmissions of one poll in a row before it is given up, to a machine that was
    # offline when the poll went out (nothing of it can be in doubt)...
    max_attempts: int = 3
    # ...and to an online one. A silence may be a lost answer: the machine re-sends on the
    # repeat, and its final identical poll is silent and keeps the exception queued (reference
    # 2.3), so the run ends on a final silence unless every answer in it was lost. A lost busy
    # answer (the machine took no poll) shifts the chain, hence three chains, not one.
    give_up_after_silences: int = 9
    # A machine silent this long (not one byte) may have been reset: see "Machine resets". On a
    # noisy line shorter silences happen while it is up, and taking one for a reset would turn
    # its next genuine data-less exception into a "re-send" (a loss).
    reset_silence_s: float = 1.5
    sync_address: int | None = None
    # While the machine keeps answering (garbled, ambiguous) it has not taken our last attempt as
    # the final one, and a different poll would ACK an answer we never decoded: keep repeating
    # until it falls silent or answers cleanly, up to this many transmissions; giving up then
    # records a lossMarker (see "Undecoded answers" in the module docstring).
    max_attempts_answering: int = 60
    # In RTE mode silence after a GP means "no activity" -- or a lost event answer. Repeating the
    # GP (implied NACK) makes the machine resend a lost event, and on the final identical poll it
    # keeps the event queued (reference 2.3), so 2 closes the gap; 0 trusts the first silence.
    rte_silence_retries: int = 2
    meters_every_s: float = 60.0
    clock_every_s: float = 600.0
    # "6F": LP 6F/AF alternating with the codes of meters.READ_CHUNKS; "1C": LP 1C, 0F, 1E.
    meter_polls: str = "6F"
    min_poll_interval_s: float = 0.04
    # A poll due within this much is sent now, and get_timer() asks to be woken this early: the
    # event loop's timers are about 1 ms coarse (epoll), and waking late on every poll would cost
    # 2-3 % of the poll rate at 40 ms. Two polls to one machine may be this much closer.
    timer_slack_s: float = 0.001
    # How long to wait for the first byte of an answer (see "Line scheduling"): the poll's wire
    # time + the machine's answer window (reference 2.1: 20 ms) + the port's measured latency,
    # never more than response_timeout_s.
    answer_window_s: float = 0.020
    # An offline address is polled once per round, then at doubling intervals up to this.
    offline_backoff_max_s: float = 5.0
    # An offline address that has sent no byte for this long (or never did) gets one attempt a
    # turn; one heard more recently (back from a power cut, say) gets the full series.
    dead_after_silence_s: float = 30.0

    def __post_init__(self) -> None:
        if self.meter_polls not in ("6F", "1C"):
            raise SasLocalProtocolError(f"meter_polls must be 6F or 1C, not {self.meter_polls}")
        if self.poll_interval_s > 5.0:
            raise SasLocalProtocolError("poll interval above 5 s (reference 2.1)")

    @property
    def interval_s(self) -> float:
        """The poll interval actually used: the configured one, floored (reference 2.1)."""
        return max(self.poll_interval_s, self.min_poll_interval_s)


@dataclass(frozen=True, slots=True)
class Report:
    """An event for the sink. With a `token` the machine waits: call `SasHost.durable(token)`.
    `resent`: the machine re-sent the exception it last reported, whose implied ACK a reset of
    the machine cut off (see "Machine resets" in the module docstring). It was recorded
    already: acknowledge it without recording it again."""

    event: MachineEvent
    token: int | None = None
    resent: bool = False


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """The implied ACK for `event` was among the frames just handed out; `token` is the one it
    was reported with, so the driver can find its own copy of the event without an id() map."""

    event: MachineEvent
    token: int = 0


@dataclass(frozen=True, slots=True)
class CommandFinished:
    ticket: int
    ok: bool
    reason: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LinkNote:
    """Something on the line worth a log line, not an event: `kind` "chirp"."""

    address: int
    kind: str
    at: float


_LATENCY_WINDOW = 1000
# 11 bits per byte at 19,200 baud (reference 1).
BYTE_TIME_S = 11 / 19200
# First-byte delays kept to estimate the port's latency (adapter, pty, event loop).
_DELAY_WINDOW = 64
# Busy answers in a row to one poll before it is treated like a missed poll.
_MAX_BUSY = 10

HostEvent = Report | Acknowledged | CommandFinished | LinkNote

_BILL_EXCEPTIONS = frozenset(BILL_CODE_CENTS) | {Exc.BILL_ACCEPTED}
_LEGACY_METERS = (LongPoll.METERS_1C, LongPoll.METERS_0F, LongPoll.BILL_COUNTS)
# Long polls many machines do not support (LP 74 needs AFT): silence to them is no missed poll.
_OPTIONAL = frozenset({LongPoll.AFT_STATUS})


def _expectation(poll: messages.Poll, rte: bool) -> framing.Expectation:
    """What may answer `poll` (reference section 6 via messages.POLL_SPECS)."""
    if poll.command is None:
        return framing.Expectation(poll.address, None, rte)
    spec = messages.POLL_SPECS.get(poll.command)
    answer = spec.answer if spec is not None else "ack"
    return framing.Expectation(poll.address, poll.command, rte,
                               length=answer if isinstance(answer, int) else None,
                               length_byte=answer == "length")


@dataclass(slots=True)
class _MeterRead:
    """One meter read of one or more polls, reported together when the last one is done."""

    remaining: int
    ticket: int | None = None
    meters: dict[str, int] = field(default_factory=dict)
    started: bool = False  # a first answer came: count exceptions from here (`straddle`)


@dataclass(slots=True)
class _Request:
    poll: messages.Poll
    ticket: int | None = None
    read: _MeterRead | None = None
    # The LP 1A after an RTE-mode exception: any answer, an event included, serves it.
    confirm: bool = False


@dataclass(slots=True)
class _Stats:
    polls: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    ambiguous: int = 0
    loss_markers: int = 0
    nacks: int = 0
    busy: int = 0
    retries: int = 0
    exceptions: int = 0
    resent_after_reset: int = 0
    chirps: int = 0
    meter_reads: int = 0
    last_response_at: float | None = None
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))


@dataclass(slots=True)
class _Machine:
    address: int
    ref: MachineRef
    queue: deque[_Request] = field(default_factory=deque)
    online: bool = False
    misses: int = 0
    rte_on: bool = False
    denom_code: int | None = None
    credits: int | None = None
    sas_version: str | None = None
    next_due: float = 0.0
    credits_at: float = 0.0
    meters_due: float = math.inf
    clock_due: float = math.inf
    meter_mode: str = "6F"
    alternate: bool = False
    last_was_gp: bool = False
    game_count: int | None = None
    games: tuple[int, ...] = ()
    features: str | None = None
    clock: str | None = None
    clock_read_at: float | None = None
    last_meters: dict[str, int] | None = None
    last_handpay: dict[str, Any] | None = None
    last_bill: dict[str, Any] | None = None
    probe: bool = True  # the first poll after a (re)start: see "Restart" in the module docstring
    # Line scheduling: the current wait between polls to an offline address (0: not backing
    # off), and why the machine is offline (None while online or never seen).
    backoff_s: float = 0.0
    offline_reason: str | None = None
    # Identity (serial, asset, game) as last confirmed by a finished discovery; a new one that
    # differs is a replacement (see "Port lifecycle").
    identity: tuple[str | None, str | None, str | None] | None = None
    game: str | None = None
    # RTE mode: the last poll to it was a GP met with silence on every attempt; the next GP may
    # repeat it as is (see "RTE silence" in the module docstring).
    idle_gp: bool = False
    bytes_at: float = -math.inf  # when it last sent any byte in answer to a poll
    # The last exception (code, payload) whose implied ACK went out but is not yet known to have
    # reached the machine, the line's frame number of that ACK, and what happened since: a
    # frame to another address (which could have resynchronised a machine that had reset) and
    # a poll the machine met with silence. See "Machine resets" in the module docstring.
    unconfirmed: tuple[int, bytes] | None = None
    ack_frame: int = 0
    foreign_since_ack: bool = False
    silent_since_ack: bool = False
    stats: _Stats = field(default_factory=_Stats)
    # Exceptions recorded since the current meter read's first answer (None: no read open),
    # and a finished read's snapshot waiting for "no activity" (see "Periodic long polls").
    straddle: int | None = None
    held: dict[str, Any] | None = None
    # An event frame came since the machine last went silent long enough to have reset: its
    # long-poll answers then mean an empty queue (reference 4; see "Periodic long polls").
    rte_proven: bool = False

    @property
    def denom_cents(self) -> int:
        return DENOMINATION_CENTS.get(self.denom_code or 0x01, 1)


@dataclass(slots=True)
class _InFlight:
    machine: _Machine
    poll: messages.Poll
    request: _Request | None
    expect: framing.Expectation
    sent_at: float
    deadline: float
    attempts: int = 1
    received: bool = False
    ever_received: bool = False
    silent_run: int = 0      # transmissions in a row met with silence
    was_online: bool = False
    doubt: bool = False      # an attempt drew bytes that decoded to no answer
    saw_event: bool = False  # `addr FF` among them: an event frame, whatever mode we assumed
    failed_silent: bool = False  # the last failed attempt drew no byte before it timed out
    last_byte: int = -1
    busy: int = 0
    resend_at: float | None = None
    probe: bool = False
    wire_s: float = 0.0  # time the frames of this attempt take on the wire


class SasHost:
    """Polls the machines at `addresses` on one line. Feed it bytes and time; it returns frames,
    events and its next deadline."""

    def __init__(self, port: str, addresses: list[int] | tuple[int, ...],
                 config: HostConfig | None = None, *,
                 last_polls: dict[int, bytes] | None = None,
                 first_probe: int | None = None) -> None:
        if not addresses or len(set(addresses)) != len(addresses):
            raise SasLocalProtocolError("addresses must be distinct and non-empty")
        for a in addresses:
            messages.general_poll(a)
            if a == 0:
                raise SasLocalProtocolError("address 0 is the broadcast address")
        self.port = port
        self.config = config or HostConfig()
        sync = self.config.sync_address
        if sync is None:
            sync = next(a for a in range(1, 128) if a not in addresses)
        self._sync_poll = messages.general_poll(sync).wire()
        self._machines = {a: _Machine(a, MachineRef(port, a), meter_mode=self.config.meter_polls)
                          for a in addresses}
        for m in self._machines.values():
            self._queue_discovery(m)
        self._replay: bytes | None = None
        self._arm_probes(last_polls or {}, first_probe, 0.0)
        self._last_to: dict[int, bytes] = {}
        self._delays: deque[float] = deque(maxlen=_DELAY_WINDOW)
        self._framer = framing.Framer()
        self._inflight: _InFlight | None = None
        self._frames: list[TxFrame] = []
        self._events: deque[HostEvent] = deque()
        self._held: dict[int, MachineEvent] = {}
        self._to_ack: list[tuple[MachineEvent, int]] = []
        self._tokens = itertools.count(1)
        self._tickets = itertools.count(1)
        self._need_sync = True
        self._last_wire: bytes | None = None
        self._frame_no = 0

    # ---- inputs -------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        self._framer.feed(data)
        f = self._inflight
        if f is None:
            self._framer.clear()
            return
        if not f.received:
            self._delays.append(max(0.0, now - f.sent_at - f.wire_s))
        f.received = f.ever_received = True
        f.machine.bytes_at = now
        if bytes((f.machine.address, 0xFF)) in bytes((f.last_byte & 0xFF,)) + data:
            f.saw_event = True
        f.last_byte = data[-1] if data else f.last_byte
        if f.resend_at is not None:
            # Late bytes: the attempt taken for a silence was answered after all (even if the
            # framer throws every byte away as junk).
            f.silent_run, f.doubt = 0, True
        answer = self._framer.next_answer(f.expect)
        if answer is not None:
            self._answered(f, answer, now)
        elif self._framer.pending():
            f.deadline = now + self.config.inter_byte_gap_s

    def receive_words(self, words: list[int], now: float) -> None:
        """Like receive_data, for links that keep the ninth bit (bit 8 of each word): a byte with
        it set is a chirp (reference 1), never part of an answer."""
        if not words:
            return
        if max(words) < 0x100:
            return self.receive_data(bytes(words), now)
        plain = bytearray()
        for word in words:
            if not word & 0x100:
                plain.append(word)
                continue
            if plain:
                self.receive_data(bytes(plain), now)
                plain.clear()
            m = self._machines.get(word & 0x7F)
            if self._inflight is None and m is not None and word & 0x80 == 0:
                m.stats.chirps += 1
                self._events.append(LinkNote(m.address, "chirp", now))
            else:
                self._framer.discarded += 1
        if plain:
            self.receive_data(bytes(plain), now)

    def handle_timer(self, now: float) -> None:
        f = self._inflight
        if f is not None and f.resend_at is not None:
            if now + self.config.timer_slack_s >= f.resend_at:
                f.resend_at = None
                f.received = False
                self._framer.clear()
                self._send(f.poll.wire())
                f.sent_at, f.wire_s = now, len(f.poll.wire()) * BYTE_TIME_S
                f.deadline = now + self._answer_wait(f.wire_s)
            elif now >= f.deadline:
                # Bytes arrived while waiting to resend (a late answer) and then the line went
                # quiet: take them if they make an answer, else drop them and keep waiting.
                # After an attempt that drew bytes, only a CRC-checked frame: a bare byte then
                # is the tail of the answer that failed (split by a gap), not an answer of its
                # own. After a silent attempt it is a slow machine's (or adapter's) answer.
                answer = self._framer.next_answer(f.expect, quiet=True)
                if answer is not None and (f.failed_silent or isinstance(
                        answer, framing.Event | framing.Data | framing.Nack)):
                    f.resend_at = None
                    self._answered(f, answer, now)
                else:
                    # The machine did answer that attempt: not a silence after all.
                    f.silent_run, f.doubt = 0, True
                    self._framer.clear()
                    f.deadline = f.resend_at
        elif f is not None and now >= f.deadline:
            answer = self._framer.next_answer(f.expect, quiet=True)
            if answer is not None:
                self._answered(f, answer, now)
            elif f.poll.command is None and f.expect.rte and not f.ever_received:
                # RTE mode: a silent GP means "no activity", not a missed poll (bytes that made no
                # answer are a broken event: retried like any other error, and silences after
                # them are waited out like any doubt).
                self._framer.clear()
                self._release(f.machine, now)  # "no activity" (see "Periodic long polls")
                if now - f.machine.bytes_at >= self.config.reset_silence_s:
                    f.machine.rte_proven = False  # quiet, or off: it may come back in normal mode
                f.silent_run += 1
                f.failed_silent = True
                if f.silent_run <= self.config.rte_silence_retries:
                    self._resend(f, now)
                else:
                    f.machine.idle_gp = True
                    self._finish(f, now)
            else:
                if not f.probe:  # a silent restart probe is expected, not a fault
                    f.machine.stats.timeouts += 1
                f.doubt = f.doubt or f.received  # bytes that made no answer
                self._failed(f, now)
        if self._inflight is None and not self._held:
            self._poll_next(now)

    def durable(self, token: int) -> None:
        """The event reported with `token` is durable: the machine may now be acknowledged."""
        event = self._held.pop(token)
        self._to_ack.append((event, token))
        m = self._machines[event.machine.address]
        if event.source is not None:
            # The next frame on the line is this exception's implied ACK.
            m.unconfirmed = (event.source.code, event.source.payload)
            m.ack_frame = self._frame_no + 1
            m.foreign_since_ack = m.silent_since_ack = False

    def link_down(self, now: float, reason: str) -> None:
        """The link broke or would not open (see "Port lifecycle"): every machine not already
        known offline is reported offline with `reason`, commands waiting for an answer fail,
        and the next poll to each machine is a restart probe, followed by discovery."""
        self._inflight = None
        self._frames.clear()
        self._framer.clear()
        failed: set[int] = set()
        for m in self._machines.values():
            for r in m.queue:
                for ticket in (r.ticket, r.read.ticket if r.read is not None else None):
                    if ticket is not None and ticket not in failed:
                        failed.add(ticket)
                        self._events.append(CommandFinished(ticket, False, f"link down: {reason}"))
            m.queue.clear()
            if m.online or m.offline_reason is None:
                self._offline(m, now, f"link down: {reason}")
            else:
                self._queue_discovery(m)
                self._forget_identity(m)
            m.misses, m.backoff_s = 0, 0.0
        last = self._last_wire
        self._arm_probes(self._last_to, None if last is None else last[0] & 0x7F, now)
        self._need_sync = True

    @property
    def port_latency_s(self) -> float | None:
        """What the port adds to a machine's answer time (adapter latency timer, pty, event
        loop): the 90th percentile of the last 64 first-byte delays less the poll's wire time.
        It includes the machine's own turnaround, so the wait built on it errs long."""
        if not self._delays:
            return None
        ordered = sorted(self._delays)
        return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]

    def request(self, address: int, command: int, data: bytes = b"") -> int:
        """Queue long poll `command` for `address`; a `CommandFinished` with the returned ticket
        follows."""
        m = self._machine(address)
        ticket = next(self._tickets)
        m.queue.append(_Request(messages.long_poll(address, command, data), ticket))
        return ticket

    def request_meters(self, address: int) -> int:
        """Queue a full meter read; its `CommandFinished` carries {"meters": ...} and a
        `meterSnapshot` is reported as for periodic reads."""
        m = self._machine(address)
        ticket = next(self._tickets)
        self._queue_meter_read(m, ticket)
        return ticket

    # ---- outputs ------------------------------------------------------------------------------

    def frames_to_send(self) -> list[TxFrame]:
        frames, self._frames = self._frames, []
        if frames and self._to_ack:
            self._events.extend(Acknowledged(e, t) for e, t in self._to_ack)
            self._to_ack.clear()
        return frames

    def next_event(self) -> HostEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        if self._held:
            return None
        slack = self.config.timer_slack_s
        f = self._inflight
        if f is not None:
            # Waiting to resend: wake for the resend (slack early) or, if late bytes arrived
            # meanwhile, for the quiet gap that ends them (handle_timer acts on either exactly).
            return f.deadline if f.resend_at is None else min(f.resend_at - slack, f.deadline)
        return min(m.next_due for m in self._machines.values()) - slack

    def is_online(self, address: int) -> bool:
        return self._machine(address).online

    def machine_ref(self, address: int) -> MachineRef:
        return self._machine(address).ref

    def statistics(self) -> dict[int, dict[str, Any]]:
        out: dict[int, dict[str, Any]] = {}
        for a, m in self._machines.items():
            s = m.stats
            lat = sorted(s.latencies)
            out[a] = {
                "online": m.online, "offline_reason": m.offline_reason,
                "serial": m.ref.serial, "asset": m.ref.asset, "game": m.game,
                "poll_backoff_s": m.backoff_s, "sas_version": m.sas_version,
                "denomination_code": m.denom_code, "rte": m.rte_on, "credits": m.credits,
                "game_count": m.game_count, "games": list(m.games), "features": m.features,
                "machine_clock": m.clock, "machine_clock_read_at": m.clock_read_at,
                "meters": dict(m.last_meters) if m.last_meters is not None else None,
                "meter_polls": m.meter_mode, "last_handpay": m.last_handpay,
                "last_bill": m.last_bill, "poll_interval_s": self.config.interval_s,
                "polls": s.polls, "timeouts": s.timeouts, "crc_errors": s.crc_errors,
                "ambiguous": s.ambiguous, "loss_markers": s.loss_markers,
                "nacks": s.nacks, "busy": s.busy, "retries": s.retries, "chirps": s.chirps,
                "meter_reads": s.meter_reads,
                "exceptions": s.exceptions, "resent_after_reset": s.resent_after_reset,
                "last_response_at": s.last_response_at,
                "latency_p50_s": _percentile(lat, 0.50), "latency_p99_s": _percentile(lat, 0.99),
                "garbage_bytes": self._framer.discarded,
                "port_latency_s": self.port_latency_s,
            }
        return out

    # ---- internals ----------------------------------------------------------------------------

    def _machine(self, address: int) -> _Machine:
        try:
            return self._machines[address]
        except KeyError:
            raise SasLocalProtocolError(f"address {address} is not polled on {self.port}")

    def _discovery(self, m: _Machine) -> list[_Request]:
        a = m.address
        return [_Request(messages.long_poll(a, LongPoll.GAME_CONFIGURATION)),
                _Request(messages.long_poll(a, LongPoll.VERSION_AND_SERIAL)),
                _Request(messages.enabled_features(a, 0)),
                _Request(messages.long_poll(a, LongPoll.GAME_COUNT)),
                _Request(messages.aft_status(a))]

    def _queue_discovery(self, m: _Machine) -> None:
        discovery = self._discovery(m)
        if self.config.rte:
            discovery.append(_Request(messages.rte_mode(m.address, True)))
        keep = [r for r in m.queue
                if r.ticket is not None or (r.read is not None and r.read.ticket is not None)]
        m.queue = deque(discovery + keep)
        m.rte_on = False

    def _queue_meter_read(self, m: _Machine, ticket: int | None = None) -> None:
        a = m.address
        if m.meter_mode == "6F":
            m.alternate = not m.alternate
            polls = [messages.extended_meters(a, 0, list(chunk), alternate=not m.alternate)
                     for chunk in READ_CHUNKS]
        else:
            polls = [messages.long_poll(a, c) for c in _LEGACY_METERS]
        read = _MeterRead(len(polls), ticket)
        m.queue.extend(_Request(p, read=read) for p in polls)

    def _periodic(self, m: _Machine, now: float) -> None:
        """Queue the periodic long poll that is due, if any (one at a time, after a GP)."""
        if not m.online or not m.last_was_gp:
            return
        cfg = self.config
        if now >= m.meters_due:
            m.meters_due = now + cfg.meters_every_s
            self._queue_meter_read(m)
        elif now >= m.clock_due:
            m.clock_due = now + cfg.clock_every_s
            m.queue.append(_Request(messages.long_poll(m.address, LongPoll.READ_CLOCK)))
        elif now - m.credits_at >= cfg.credits_every_s:
            m.queue.append(_Request(messages.long_poll(m.address, LongPoll.CURRENT_CREDITS)))

    def _send(self, wire: bytes) -> None:
        self._frames.append(TxFrame(wire))
        self._last_wire = wire
        self._frame_no += 1
        address = wire[0] & 0x7F
        self._last_to[address] = wire
        for m in self._machines.values():
            if m.unconfirmed is None or self._frame_no <= m.ack_frame:
                continue
            if m.address != address:
                m.foreign_since_ack = True

    def _poll_next(self, now: float) -> None:
        m = min(self._machines.values(), key=lambda x: x.next_due)
        if m.next_due > now + self.config.timer_slack_s:
            return
        if self._replay is not None:
            self._send(self._replay)
            self._replay = None
        if m.probe:
            m.probe = False
            poll = self._probes.pop(m.address, None) or messages.general_poll(m.address)
            self._send(poll.wire())
            m.stats.polls += 1
            m.last_was_gp = poll.command is None
            wire_s = self._queued_wire_s()
            self._inflight = _InFlight(m, poll, None, _expectation(poll, m.rte_on), now,
                                       now + self._answer_wait(wire_s), probe=True, wire_s=wire_s)
            return
        if not m.queue:
            self._periodic(m, now)
        request = m.queue[0] if m.queue else None
        if request is not None and request.read is not None and request.read.started \
                and not m.last_was_gp:
            request = None  # a GP between the polls of one meter read, as between periodic ones
        poll = request.poll if request else messages.general_poll(m.address)
        wire = poll.wire()
        continuing, m.idle_gp = m.idle_gp and wire == self._last_wire, False
        if self._need_sync or (wire == self._last_wire and not continuing):
            self._send(self._sync_poll)
            self._need_sync = False
        self._send(wire)
        m.stats.polls += 1
        m.last_was_gp = poll.command is None
        wire_s = self._queued_wire_s()
        self._inflight = _InFlight(m, poll, request, _expectation(poll, m.rte_on), now,
                                   now + self._answer_wait(wire_s), wire_s=wire_s,
                                   was_online=m.online)

    def _queued_wire_s(self) -> float:
        """Wire time of the frames handed out with this poll (replay, sync GP, the poll)."""
        return sum(len(frame.data) for frame in self._frames) * BYTE_TIME_S

    def _answer_wait(self, wire_s: float) -> float:
        """How long to wait for the first byte of an answer (see "Line scheduling")."""
        cfg = self.config
        latency = self.port_latency_s
        if latency is None:
            return cfg.response_timeout_s
        return min(cfg.response_timeout_s, wire_s + cfg.answer_window_s + latency)

    def _finish(self, f: _InFlight, now: float) -> None:
        self._inflight = None
        f.machine.next_due = max(now, f.sent_at + self.config.interval_s)

    def _failed(self, f: _InFlight, now: float) -> None:
        m = f.machine
        if f.probe:
            # Nothing held for us (or not synchronised yet): sync and poll normally.
            self._need_sync = True
            self._framer.clear()
            return self._finish(f, now)
        f.silent_run = 0 if f.received else f.silent_run + 1
        f.failed_silent = not f.received
        # Silences beyond max_attempts in a row are the machine's doubt being waited out, not
        # evidence that it is down (see "Undecoded answers"); nor is an optional long poll that
        # an online machine never answers (see "Line scheduling").
        if f.silent_run <= self.config.max_attempts and not (
                m.online and f.poll.command in _OPTIONAL and not f.ever_received):
            m.misses += 1
        if f.received:
            self._heard(m)  # garbled, but an answer: the machine is up
        if m.online and m.misses >= self.config.offline_after_misses:
            self._offline(m, now, f"no answer to {m.misses} polls")
            self._need_sync = True
        self._framer.clear()
        cfg = self.config
        # An answer that can carry an exception (a GP's; in RTE mode any) from a machine that
        # was online may be in doubt; and any answer at all in this series is: a machine can
        # be in RTE mode while the host believes it is not (some restore it after power-up).
        doubtful = f.ever_received or (
            (f.poll.command is None or f.expect.rte) and f.was_online)
        # An address that was offline and stays silent is backed off (see "Line scheduling").
        # Once it has sent no byte for dead_after_silence_s (or never did) it gets one attempt a
        # turn, so dead addresses cannot starve live ones. Until then it gets the full series: a
        # machine back from a power cut may be answering, and a lost answer followed by a frame
        # to another address would be an implied ACK of an exception never seen.
        dead = not f.was_online and not f.ever_received
        long_dead = dead and now - m.bytes_at >= cfg.dead_after_silence_s
        settled = long_dead or f.silent_run >= (
            cfg.give_up_after_silences if doubtful else cfg.max_attempts)
        if not settled and f.attempts < cfg.max_attempts_answering:
            m.stats.retries += 1
            return self._resend(f, now)
        if f.doubt and not settled and (f.poll.command is None or f.expect.rte or f.saw_event):
            self._loss_marker(f, now)
        self._need_sync = True
        if not f.ever_received and now - m.bytes_at >= cfg.reset_silence_s:
            m.silent_since_ack = True  # not one byte for that long: down, or resetting
            m.rte_proven = False
        if f.request is not None and (
                f.request.ticket is not None or (f.was_online and not f.ever_received)):
            # An online machine that stays silent does not support this long poll (reference
            # 2.2): give up on it. Garbled answers and offline machines get it again later.
            self._drop(m, f.request, now, unsupported=not f.ever_received)
            if f.request.ticket is not None:
                self._events.append(CommandFinished(f.request.ticket, False, "no answer"))
        self._finish(f, now)
        if dead:
            cfg = self.config
            m.backoff_s = min(cfg.offline_backoff_max_s, max(cfg.interval_s, 2 * m.backoff_s))
            m.next_due = now + m.backoff_s

    def _resend(self, f: _InFlight, now: float, *, count: bool = True) -> None:
        """Identical retransmission = implied NACK: the machine resends the same data. It keeps
        the minimum poll interval; a late answer meanwhile is taken as the answer."""
        f.attempts += count
        f.received = False
        f.resend_at = f.sent_at + self.config.interval_s
        f.deadline = f.resend_at
        self.handle_timer(now)

    def _answered(self, f: _InFlight, answer: framing.Answer, now: float) -> None:
        m = f.machine
        match answer:
            case framing.Nack():
                m.stats.nacks += 1
                return self._failed(f, now)
            case framing.Corrupt():
                m.stats.crc_errors += 1
                f.doubt = True
                return self._failed(f, now)
            case framing.Ambiguous():
                m.stats.ambiguous += 1
                f.doubt = True
                return self._failed(f, now)
            case framing.Busy():
                # The machine did not take the poll: send the very same one again later. Any
                # other poll (even the sync GP) would acknowledge its previous answer, which may
                # have been lost on the line.
                m.stats.busy += 1
                f.silent_run = 0  # the machine started no repeat chain for this attempt
                self._alive(m, f, now)
                self._framer.clear()
                f.busy += 1
                if f.busy > _MAX_BUSY:
                    return self._failed(f, now)
                return self._resend(f, now, count=False)
        try:
            self._accept(f, answer, now)
        except SasRemoteProtocolError:
            m.stats.crc_errors += 1
            f.doubt = True
            return self._failed(f, now)
        self._framer.clear()
        self._finish(f, now)

    def _accept(self, f: _InFlight, answer: framing.Answer, now: float) -> None:
        m = f.machine
        match answer:
            case framing.ExceptionByte(code) | framing.Event(code, _):
                data = answer.data if isinstance(answer, framing.Event) else b""
                # The machine shows which mode it is in: trust that over what we last set, and
                # ask for RTE again if it dropped out of it.
                was_rte, m.rte_on = m.rte_on, isinstance(answer, framing.Event)
                m.rte_proven = m.rte_on  # an exception answer shows the mode it is in
                if was_rte and not m.rte_on and self.config.rte and not any(
                        r.poll.command == LongPoll.RTE_MODE for r in m.queue):
                    m.queue.append(_Request(messages.rte_mode(m.address, True)))
                event = None if code in SILENT_CODES else exception_event(
                    m.ref, code, data, m.denom_cents, now)
                resent = self._resent_after_reset(m, event)
                self._alive(m, f, now)
                if f.request is not None and f.request.confirm:
                    self._drop(m, f.request, now)  # answered: its work is done
                if event is not None:
                    self._hold(m, event, code, gp=f.poll.command is None, resent=resent)
                elif not m.rte_on:
                    self._release(m, now)  # "no activity": the queue is empty
            case framing.Ack():
                self._alive(m, f, now)
                self._completed(m, f, now)
                if f.poll.command == LongPoll.RTE_MODE:
                    m.rte_on = f.poll.data == b"\x01"
            case framing.Data(frame):
                assert f.poll.command is not None
                value = messages.decode_answer(f.poll.command, frame, m.address)
                self._alive(m, f, now)
                self._completed(m, f, now, self._absorb(m, f, value, now))

    def _absorb(self, m: _Machine, f: _InFlight, value: messages.LongPollAnswer,
                now: float) -> str | None:
        """Keep what a long-poll answer tells; returns a failure reason for a command."""
        match value:
            case messages.MeterReading(LongPoll.CURRENT_CREDITS, meters):
                m.credits = meters["current_credits"]
                m.credits_at = now
            case messages.MeterReading(_, meters):
                if f.request is not None and f.request.read is not None:
                    self._read_answered(m, f.request.read)
                    f.request.read.meters.update(meters)
            case messages.SelectedMeters(_, _, meters):
                if f.request is not None and f.request.read is not None:
                    self._read_answered(m, f.request.read)
                    f.request.read.meters.update(
                        {METERS[c].name: v for c, v in meters.items() if c in METERS})
            case messages.GameConfig(denomination_code=denom) if f.poll.command == 0x1F:
                m.denom_code = denom
                m.game = f"{value.game_id}/{value.paytable_id}".strip()
            case messages.AftStatus(asset):
                # Asset 0 is "not set" (SAS has no other way to say so).
                m.ref = replace(m.ref, asset=str(asset) if asset else None)
            case messages.VersionInfo(version, serial):
                m.sas_version = version
                m.ref = replace(m.ref, serial=serial or None)
            case messages.EnabledFeatures(_, features):
                m.features = features.hex()
            case messages.GameCount(count):
                m.game_count = count
                if count > 0:  # next, before the rest of the queue (LP 0E)
                    where = next((i + 1 for i, r in enumerate(m.queue) if r is f.request), 0)
                    m.queue.insert(where, _Request(
                        messages.long_poll(m.address, LongPoll.ENABLED_GAMES)))
            case messages.EnabledGames(games):
                m.games = games
            case messages.MachineClock(when):
                m.clock, m.clock_read_at = when.isoformat(), now
            case messages.HandpayInfo():
                m.last_handpay = {"amount_cents": value.amount_cents, "level": value.level,
                                  "partial_pay_cents": value.partial_pay_cents,
                                  "progressive_group": value.progressive_group,
                                  "reset_id": value.reset_id, "read_at": now}
            case messages.LastBill():
                m.last_bill = {"amount_cents": value.amount_cents, "count": value.count,
                               "denomination_code": value.denomination_code,
                               "country_code": value.country_code, "read_at": now}
            case messages.HandpayResetResult(code) if code != 0:
                return {1: "unable to reset", 2: "not in handpay"}.get(code, f"code {code:02X}")
            case messages.ValidationStatus(status) if status != 0:
                return f"status {status:02X}"
        return None

    def _completed(self, m: _Machine, f: _InFlight, now: float, failure: str | None = None,
                   ) -> None:
        if f.request is not None:
            self._drop(m, f.request, now)
            if f.request.ticket is not None:
                self._events.append(CommandFinished(f.request.ticket, failure is None,
                                                    failure or ""))

    def _drop(self, m: _Machine, request: _Request, now: float, *,
              unsupported: bool = False) -> None:
        """`request` is done (answered, or given up on)."""
        m.queue = deque(r for r in m.queue if r is not request)
        if request.poll.command == LongPoll.AFT_STATUS and request.ticket is None:
            self._settle_identity(m, now)
        read = request.read
        if read is None:
            return
        command = request.poll.command
        six_f = (LongPoll.EXTENDED_METERS, LongPoll.EXTENDED_METERS_ALT)
        if unsupported and command in six_f and m.meter_mode == "6F":
            # The machine ignores 6F/AF (reference 2.2: silence): use LP 1C + 0F from now on.
            m.meter_mode = "1C"
            rest = [r for r in m.queue if r.read is read and r.poll.command in six_f]
            m.queue = deque(r for r in m.queue if not any(r is x for x in rest))
            read.remaining += len(_LEGACY_METERS) - len(rest)
            m.queue.extend(_Request(messages.long_poll(m.address, c), read=read)
                           for c in _LEGACY_METERS)
        read.remaining -= 1
        if read.remaining:
            return
        if read.meters:
            m.stats.meter_reads += 1
            m.last_meters = dict(read.meters)
            m.held = {"meters": dict(read.meters), "denomination_cents": m.denom_cents,
                      "digits": {n: digits_of(n) for n in read.meters}}
            if m.rte_on and m.rte_proven:
                self._release(m, now)
        if read.ticket is not None:
            self._events.append(CommandFinished(
                read.ticket, bool(read.meters), "" if read.meters else "no meters",
                {"meters": dict(read.meters), "denomination_cents": m.denom_cents}))

    @staticmethod
    def _read_answered(m: _Machine, read: _MeterRead) -> None:
        if not read.started:
            # A new read: one still held merges into it (its window just gets longer).
            read.started, m.straddle, m.held = True, 0, None

    def _release(self, m: _Machine, now: float) -> None:
        """Report the held snapshot: the machine's queue is known empty (see "Periodic long
        polls"); every exception it counted before the read is recorded by now."""
        if m.held is not None:
            data, m.held = {**m.held, "straddle": m.straddle or 0}, None
            m.straddle = None
            self._events.append(Report(MachineEvent("meterSnapshot", m.ref, data,
                                                    monotonic=now)))

    def _resent_after_reset(self, m: _Machine, event: MachineEvent | None) -> bool:
        """Whether the exception just answered re-sends m.unconfirmed (see "Machine resets").
        The first queued exception after the ACK settles the question either way."""
        if m.unconfirmed is None or event is None or event.source is None:
            return False
        source = event.source
        unconfirmed, m.unconfirmed = m.unconfirmed, None
        if not (m.foreign_since_ack and m.silent_since_ack):
            return False  # the machine was up all along: it heard the ACK
        code, payload = unconfirmed
        if source.code == code and (not source.payload or source.payload == payload):
            m.stats.resent_after_reset += 1
            return True
        if source.priority:
            m.unconfirmed = unconfirmed  # sent ahead of the queue: the question stays open
        return False

    def _loss_marker(self, f: _InFlight, now: float) -> None:
        """The poll is given up while the machine still answers what we cannot decode: the next
        poll is its implied ACK, and what it held may be lost. Say so, signed, in the record."""
        m = f.machine
        m.stats.loss_markers += 1
        detail = (f"address {m.address} answered poll {f.poll.wire().hex(' ')} "
                  f"{f.attempts} times with bytes that made no answer; the next poll "
                  f"acknowledges what it sent")
        self._events.append(Report(MachineEvent(
            "lossMarker", m.ref, {"reason": "undecodedAnswer", "count": 1, "detail": detail},
            monotonic=now)))

    @staticmethod
    def _heard(m: _Machine) -> None:
        """Bytes from `m`. With no frame to another address since the ACK it has not been
        resynchronised since, so it was up and heard the ACK (see "Machine resets")."""
        if not m.foreign_since_ack:
            m.unconfirmed = None

    def _alive(self, m: _Machine, f: _InFlight, now: float) -> None:
        self._heard(m)
        m.misses = 0
        m.backoff_s = 0.0
        m.stats.last_response_at = now
        m.stats.latencies.append(now - f.sent_at)
        if not m.online:
            m.online = True
            m.offline_reason = None
            m.meters_due = now + self.config.meters_every_s
            m.clock_due = now + self.config.clock_every_s
            self._events.append(Report(MachineEvent("deviceOnline", m.ref, monotonic=now)))

    def _offline(self, m: _Machine, now: float, reason: str) -> None:
        """Report `m` offline (with the identity it had) and forget who it is until discovery
        has run again: whatever answers next at this address may be another machine."""
        m.online = False
        m.offline_reason = reason
        m.held = m.straddle = None  # the next read after it is back spans the gap
        m.rte_proven = False
        self._events.append(Report(MachineEvent("deviceOffline", m.ref, {"reason": reason},
                                                monotonic=now)))
        self._queue_discovery(m)
        self._forget_identity(m)

    @staticmethod
    def _forget_identity(m: _Machine) -> None:
        m.ref = MachineRef(m.ref.port, m.address)
        m.game = None

    def _settle_identity(self, m: _Machine, now: float) -> None:
        """Discovery read the identity (LP 1F game, LP 54 serial, LP 74 asset): compare it with
        the one confirmed before; a part either side could not report is not compared."""
        new = (m.ref.serial, m.ref.asset, m.game)
        old, m.identity = m.identity, new
        others = [o.address for o in self._machines.values() if o is not m and o.online and any(
            a is not None and a == b for a, b in zip(new[:2], (o.ref.serial, o.ref.asset),
                                                     strict=True))]
        for other in others:
            # One machine behind two addresses, or two set to one address (see "Port lifecycle").
            self._events.append(LinkNote(m.address, f"address conflict with {other}", now))
        if old is None:
            return
        changed = [name for name, a, b in zip(("serial", "asset", "game"), old, new, strict=True)
                   if a is not None and b is not None and a != b]
        if changed:
            self._queue_meter_read(m)
            self._events.append(Report(MachineEvent(
                "machineReplaced", m.ref,
                {"changed": changed, "previous_serial": old[0], "previous_asset": old[1],
                 "previous_game": old[2], "game": new[2]}, monotonic=now)))

    def _arm_probes(self, last_polls: Mapping[int, bytes], first_probe: int | None,
                    now: float) -> None:
        """Make the next poll to each machine a restart probe (see "Restart")."""
        self._probes = {a: p for a, wire in last_polls.items()
                        if a in self._machines and (p := _poll_from_wire(a, wire)) is not None}
        for m in self._machines.values():
            m.probe = True
            m.next_due = now
        if first_probe in self._machines:
            # The last frame on the line went to this machine: its answer is the only one a
            # probe can still NACK (any other poll first would be its implied ACK).
            self._machines[first_probe].next_due = now - 1.0
        elif first_probe is not None and last_polls.get(first_probe) == \
                messages.general_poll(first_probe).wire():
            # It was the sync GP (an ACK), journaled but perhaps never sent: send it first, so
            # the machine it acknowledged is acknowledged either way, as the journal says.
            self._replay = messages.general_poll(first_probe).wire()

    def _hold(self, m: _Machine, event: MachineEvent, code: int, *, gp: bool,
              resent: bool = False) -> None:
        m.stats.exceptions += 1
        if m.straddle is not None and not resent:
            m.straddle += 1
        token = next(self._tokens)
        self._held[token] = event
        self._events.append(Report(event, token, resent))
        # Follow-ups (reference 3) go out after durable(): each is the implied ACK or after it.
        a = m.address
        if code == Exc.HANDPAY_PENDING:
            m.queue.append(_Request(messages.long_poll(a, LongPoll.HANDPAY_INFO)))
        elif code in _BILL_EXCEPTIONS and not m.rte_on:
            m.queue.append(_Request(messages.long_poll(a, LongPoll.LAST_BILL)))
        elif code in (Exc.BUFFER_OVERFLOW, Exc.AC_POWER_APPLIED):
            self._queue_meter_read(m)
        elif code == Exc.OPERATOR_CHANGED_OPTIONS:
            m.queue.extend(self._discovery(m))
        if not m.queue and (gp or m.rte_on):
            # Follow a GP exception with a long poll (reference 2.3): the ACK, and a credits read.
            # In RTE mode it follows every exception, right after the sync GP (the ACK there),
            # and its answer, an event or the credits, shows that the machine heard the ACK
            # (see "Machine resets").
            m.queue.append(_Request(messages.long_poll(m.address, LongPoll.CURRENT_CREDITS),
                                    confirm=m.rte_on))
        if m.rte_on and m.queue:
            # The ACK poll in RTE mode is a GP (see "Restart"): the sync GP goes first.
            self._need_sync = True


def _poll_from_wire(address: int, wire: bytes) -> messages.Poll | None:
    """The poll whose wire form is `wire`, if it is a well-formed poll to `address`."""
    try:
        if len(wire) == 1:
            poll = messages.general_poll(address)
        elif len(wire) == 2:
            poll = messages.long_poll(address, wire[1])
        elif len(wire) >= 4:
            poll = messages.long_poll(address, wire[1], wire[2:-2])
        else:
            return None
    except SasLocalProtocolError:
        return None
    return poll if poll.wire() == wire else None


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]
