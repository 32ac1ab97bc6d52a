"""Sans-I/O SAS host: one object per serial line, polling one or more machine addresses.

Theory of operation
-------------------
The line is half duplex, so at most one poll is in flight (`_inflight`). Each machine has a queue
of long polls (discovery LP 1F / LP 54 / LP 0E, commands, the periodic LP 1A); when its minimum
poll interval has passed it gets the head of that queue, or else a general poll (GP).

Implied ACK (reference 2.3). The machine learns that its answer arrived when the next poll it sees
differs from the last one; an identical poll is an implied NACK and makes it resend. So:
  * an identical poll is only ever sent as a retry (at most `max_attempts` transmissions);
  * any other time the next poll would equal the last frame on the line, the host first sends a
    GP to an unused "sync" address, which is an implied ACK and sends nothing back;
  * after a non-zero exception to a GP the follow-up is LP 1A (the ACK, and a credits read);
    in RTE mode the sync GP is the ACK instead (an LP would be answered by the next event);
    after an RTE event in place of a long-poll answer that long poll stays queued, and re-sending
    it is preceded by the sync GP, so the event is ACKed and the poll re-issued.
Durable before acknowledged (design.md section 4 rule 1). An exception is reported as
`Report(event, token)`; from then on the host sends nothing on the whole line (any poll would ACK
it) until `durable(token)` is called. The next frames handed out by `frames_to_send()` are the
implied ACK, and `Acknowledged(event)` is queued right after them.
Failures. A timeout, bad CRC, NACK or bytes that make no answer lead to a retry of the identical
poll (after the minimum poll interval); after the last attempt the poll is abandoned, the line is
resynchronised (sync GP) and the machine polled later. The last attempt is the one the machine
met with silence (its sign that it keeps the data, reference 2.3): while it still answers, up to
`max_attempts_answering` transmissions are sent, since the resync poll would be an implied ACK.
Every failed attempt is a missed poll; `offline_after_misses` in a row make the machine offline,
the first valid answer online again.
Busy (`addr 00`) gets the identical poll again after the poll interval: any other poll would ACK
the previous answer, which may have been lost.
RTE mode. A silent GP means "no activity" -- or a lost event answer, so it is repeated
`rte_silence_retries` times first (the machine resends a lost event, and keeps it queued after the
final identical poll). Liveness in RTE mode comes from the periodic LP 1A.
Synchronisation. A machine ignores its own address after power-up or link loss until it sees a
poll to another address, so the sync GP is also sent at start and after any machine goes offline.
Restart. The first poll to each machine after the host starts repeats the last frame the previous
process sent it (`last_polls`, from drivers/sas/journal.py), or a plain GP if none is known, with
no sync GP in front. If the gateway died after the machine answered but before the answer was
made durable, the machine still waits for an implied ACK; any other poll (the sync GP, a
discovery LP) would be that ACK and the exception would be lost. The identical poll is an implied
NACK instead, so the machine re-sends its answer (and the sink recognises a redelivery of what it
already recorded).
Silence means the machine is unsynchronised (or has nothing to say in RTE mode): the host syncs
and carries on, and the probe counts as no missed poll.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from drivers.base import MachineEvent, MachineRef
from drivers.link import TxFrame
from drivers.sas import framing, messages
from drivers.sas.codes import DENOMINATION_CENTS, LongPoll
from drivers.sas.errors import SasLocalProtocolError, SasRemoteProtocolError
from drivers.sas.mapping import SILENT_CODES, exception_event

__all__ = ["Acknowledged", "CommandFinished", "HostConfig", "Report", "SasHost"]


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
    max_attempts: int = 3
    sync_address: int | None = None
    # While the machine keeps answering (garbled, NACK) it has not taken our last attempt as the
    # final one, and a different poll would ACK an answer we never decoded: keep repeating until
    # it falls silent, up to this many transmissions.
    max_attempts_answering: int = 6
    # In RTE mode silence after a GP means "no activity" -- or a lost event answer. Repeating the
    # GP (implied NACK) makes the machine resend a lost event, and on the final identical poll it
    # keeps the event queued (reference 2.3), so 2 closes the gap; 0 trusts the first silence.
    rte_silence_retries: int = 2


@dataclass(frozen=True, slots=True)
class Report:
    """An event for the sink. With a `token` the machine waits: call `SasHost.durable(token)`."""

    event: MachineEvent
    token: int | None = None


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """The implied ACK for `event` was among the frames just handed out."""

    event: MachineEvent


@dataclass(frozen=True, slots=True)
class CommandFinished:
    ticket: int
    ok: bool
    reason: str = ""


_LATENCY_WINDOW = 1000
# Busy answers in a row to one poll before it is treated like a missed poll.
_MAX_BUSY = 10

HostEvent = Report | Acknowledged | CommandFinished

# Answer shapes per long poll (reference section 6).
_EXPECT: dict[int, dict[str, Any]] = {
    LongPoll.CURRENT_CREDITS: {"length": 8},
    LongPoll.GAME_CONFIGURATION: {"length": 24},
    LongPoll.VERSION_AND_SERIAL: {"length_byte": True},
}


@dataclass(slots=True)
class _Request:
    poll: messages.Poll
    ticket: int | None = None


@dataclass(slots=True)
class _Stats:
    polls: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    nacks: int = 0
    busy: int = 0
    retries: int = 0
    exceptions: int = 0
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
    probe: bool = True  # the first poll after a (re)start: see "Restart" in the module docstring
    stats: _Stats = field(default_factory=_Stats)

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
    busy: int = 0
    resend_at: float | None = None
    probe: bool = False


class SasHost:
    """Polls the machines at `addresses` on one line. Feed it bytes and time; it returns frames,
    events and its next deadline."""

    def __init__(self, port: str, addresses: list[int] | tuple[int, ...],
                 config: HostConfig | None = None, *,
                 last_polls: dict[int, bytes] | None = None) -> None:
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
        self._machines = {a: _Machine(a, MachineRef(port, a)) for a in addresses}
        self._probes = {a: p for a, wire in (last_polls or {}).items()
                        if a in self._machines and (p := _poll_from_wire(a, wire)) is not None}
        for m in self._machines.values():
            self._queue_discovery(m)
        self._framer = framing.Framer()
        self._inflight: _InFlight | None = None
        self._frames: list[TxFrame] = []
        self._events: deque[HostEvent] = deque()
        self._held: dict[int, MachineEvent] = {}
        self._to_ack: list[MachineEvent] = []
        self._tokens = itertools.count(1)
        self._tickets = itertools.count(1)
        self._need_sync = True
        self._last_wire: bytes | None = None

    # ---- inputs -------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> None:
        self._framer.feed(data)
        f = self._inflight
        if f is None:
            self._framer.clear()
            return
        f.received = f.ever_received = True
        answer = self._framer.next_answer(f.expect)
        if answer is not None:
            self._answered(f, answer, now)
        elif self._framer.pending():
            f.deadline = now + self.config.inter_byte_gap_s

    def handle_timer(self, now: float) -> None:
        f = self._inflight
        if f is not None and f.resend_at is not None:
            if now >= f.resend_at:
                f.resend_at = None
                self._send(f.poll.wire())
                f.sent_at, f.deadline = now, now + self.config.response_timeout_s
        elif f is not None and now >= f.deadline:
            answer = self._framer.next_answer(f.expect, quiet=True)
            if answer is not None:
                self._answered(f, answer, now)
            elif f.poll.command is None and f.expect.rte and not f.received:
                # RTE mode: a silent GP means "no activity", not a missed poll (bytes that made no
                # answer are a broken event: retried like any other error).
                self._framer.clear()
                if f.attempts <= min(self.config.rte_silence_retries, self.config.max_attempts - 1):
                    self._resend(f, now)
                else:
                    self._finish(f, now)
            else:
                if not f.probe:  # a silent restart probe is expected, not a fault
                    f.machine.stats.timeouts += 1
                self._failed(f, now)
        if self._inflight is None and not self._held:
            self._poll_next(now)

    def durable(self, token: int) -> None:
        """The event reported with `token` is durable: the machine may now be acknowledged."""
        self._to_ack.append(self._held.pop(token))

    def request(self, address: int, command: int, data: bytes = b"") -> int:
        """Queue long poll `command` for `address`; a `CommandFinished` with the returned ticket
        follows."""
        m = self._machine(address)
        ticket = next(self._tickets)
        m.queue.append(_Request(messages.long_poll(address, command, data), ticket))
        return ticket

    # ---- outputs ------------------------------------------------------------------------------

    def frames_to_send(self) -> list[TxFrame]:
        frames, self._frames = self._frames, []
        if frames and self._to_ack:
            self._events.extend(Acknowledged(e) for e in self._to_ack)
            self._to_ack.clear()
        return frames

    def next_event(self) -> HostEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        if self._held:
            return None
        if self._inflight is not None:
            return self._inflight.deadline
        return min(m.next_due for m in self._machines.values())

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
                "online": m.online, "serial": m.ref.serial, "sas_version": m.sas_version,
                "denomination_code": m.denom_code, "rte": m.rte_on, "credits": m.credits,
                "polls": s.polls, "timeouts": s.timeouts, "crc_errors": s.crc_errors,
                "nacks": s.nacks, "busy": s.busy, "retries": s.retries,
                "exceptions": s.exceptions, "last_response_at": s.last_response_at,
                "latency_p50_s": _percentile(lat, 0.50), "latency_p99_s": _percentile(lat, 0.99),
                "garbage_bytes": self._framer.discarded,
            }
        return out

    # ---- internals ----------------------------------------------------------------------------

    def _machine(self, address: int) -> _Machine:
        try:
            return self._machines[address]
        except KeyError:
            raise SasLocalProtocolError(f"address {address} is not polled on {self.port}")

    def _queue_discovery(self, m: _Machine) -> None:
        polls = [LongPoll.GAME_CONFIGURATION, LongPoll.VERSION_AND_SERIAL]
        discovery = [_Request(messages.long_poll(m.address, c)) for c in polls]
        if self.config.rte:
            discovery.append(_Request(messages.long_poll(m.address, LongPoll.RTE_MODE, b"\x01")))
        keep = [r for r in m.queue if r.ticket is not None]
        m.queue = deque(discovery + keep)
        m.rte_on = False

    def _send(self, wire: bytes) -> None:
        self._frames.append(TxFrame(wire))
        self._last_wire = wire

    def _poll_next(self, now: float) -> None:
        m = min(self._machines.values(), key=lambda x: x.next_due)
        if m.next_due > now:
            return
        if m.probe:
            m.probe = False
            poll = self._probes.pop(m.address, None) or messages.general_poll(m.address)
            self._send(poll.wire())
            m.stats.polls += 1
            expect = framing.Expectation(m.address, poll.command, m.rte_on,
                                         **_EXPECT.get(poll.command or -1, {}))
            self._inflight = _InFlight(m, poll, None, expect, now,
                                       now + self.config.response_timeout_s, probe=True)
            return
        if m.queue:
            request: _Request | None = m.queue[0]
        elif now - m.credits_at >= self.config.credits_every_s:
            request = _Request(messages.long_poll(m.address, LongPoll.CURRENT_CREDITS))
            m.queue.append(request)
        else:
            request = None
        poll = request.poll if request else messages.general_poll(m.address)
        wire = poll.wire()
        if self._need_sync or wire == self._last_wire:
            self._send(self._sync_poll)
            self._need_sync = False
        self._send(wire)
        m.stats.polls += 1
        expect = framing.Expectation(m.address, poll.command, m.rte_on,
                                     **_EXPECT.get(poll.command or -1, {}))
        self._inflight = _InFlight(m, poll, request, expect, now,
                                   now + self.config.response_timeout_s)

    def _finish(self, f: _InFlight, now: float) -> None:
        self._inflight = None
        f.machine.next_due = max(now, f.sent_at + self.config.poll_interval_s)

    def _failed(self, f: _InFlight, now: float) -> None:
        m = f.machine
        if f.probe:
            # Nothing held for us (or not synchronised yet): sync and poll normally.
            self._need_sync = True
            self._framer.clear()
            return self._finish(f, now)
        m.misses += 1
        if m.online and m.misses >= self.config.offline_after_misses:
            m.online = False
            self._queue_discovery(m)
            self._need_sync = True
            self._events.append(Report(MachineEvent("deviceOffline", m.ref, monotonic=now)))
        self._framer.clear()
        limit = self.config.max_attempts_answering if f.received else self.config.max_attempts
        if f.attempts < max(limit, self.config.max_attempts):
            m.stats.retries += 1
            return self._resend(f, now)
        self._need_sync = True
        if f.request is not None and (
                f.request.ticket is not None or (m.online and not f.ever_received)):
            # An online machine that stays silent does not support this long poll (reference
            # 2.2): give up on it. Garbled answers and offline machines get it again later.
            _drop(m, f.request)
            if f.request.ticket is not None:
                self._events.append(CommandFinished(f.request.ticket, False, "no answer"))
        self._finish(f, now)

    def _resend(self, f: _InFlight, now: float, *, count: bool = True) -> None:
        """Identical retransmission = implied NACK: the machine resends the same data. It keeps
        the minimum poll interval; a late answer meanwhile is taken as the answer."""
        f.attempts += count
        f.received = False
        f.resend_at = f.sent_at + self.config.poll_interval_s
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
                return self._failed(f, now)
            case framing.Busy():
                # The machine did not take the poll: send the very same one again later. Any
                # other poll (even the sync GP) would acknowledge its previous answer, which may
                # have been lost on the line.
                m.stats.busy += 1
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
            return self._failed(f, now)
        self._framer.clear()
        self._finish(f, now)

    def _accept(self, f: _InFlight, answer: framing.Answer, now: float) -> None:
        m = f.machine
        match answer:
            case framing.ExceptionByte(code) | framing.Event(code, _):
                data = answer.data if isinstance(answer, framing.Event) else b""
                # The machine shows which mode it is in: trust that over what we last set.
                m.rte_on = isinstance(answer, framing.Event)
                event = None if code in SILENT_CODES else exception_event(
                    m.ref, code, data, m.denom_cents, now)
                self._alive(m, f, now)
                if event is not None:
                    self._hold(m, event, gp=f.poll.command is None)
            case framing.Ack():
                self._alive(m, f, now)
                self._completed(m, f)
                if f.poll.command == LongPoll.RTE_MODE:
                    m.rte_on = f.poll.data == b"\x01"
            case framing.Data(frame):
                command = f.poll.command
                if command == LongPoll.CURRENT_CREDITS:
                    m.credits = messages.decode_current_credits(frame, m.address)
                    m.credits_at = now
                elif command == LongPoll.GAME_CONFIGURATION:
                    m.denom_code = messages.decode_game_config(frame, m.address).denomination_code
                elif command == LongPoll.VERSION_AND_SERIAL:
                    info = messages.decode_version(frame, m.address)
                    m.sas_version = info.sas_version
                    m.ref = replace(m.ref, serial=info.serial or None)
                self._alive(m, f, now)
                self._completed(m, f)

    def _completed(self, m: _Machine, f: _InFlight) -> None:
        if f.request is not None:
            _drop(m, f.request)
            if f.request.ticket is not None:
                self._events.append(CommandFinished(f.request.ticket, True))

    def _alive(self, m: _Machine, f: _InFlight, now: float) -> None:
        m.misses = 0
        m.stats.last_response_at = now
        m.stats.latencies.append(now - f.sent_at)
        if not m.online:
            m.online = True
            self._events.append(Report(MachineEvent("deviceOnline", m.ref, monotonic=now)))

    def _hold(self, m: _Machine, event: MachineEvent, *, gp: bool) -> None:
        m.stats.exceptions += 1
        token = next(self._tokens)
        self._held[token] = event
        self._events.append(Report(event, token))
        if gp and not m.queue and not m.rte_on:
            # Follow a GP exception with a long poll (reference 2.3): the ACK, and a credits read.
            # Not in RTE mode: a long poll there is answered with the next pending event, which
            # a restart probe (a GP) could not recover. The next poll is the same GP again, so
            # the sync GP goes first and is the ACK; every event then answers a GP.
            m.queue.append(_Request(messages.long_poll(m.address, LongPoll.CURRENT_CREDITS)))


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


def _drop(m: _Machine, request: _Request) -> None:
    m.queue = deque(r for r in m.queue if r is not request)


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]
