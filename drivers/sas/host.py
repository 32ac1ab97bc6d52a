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
Late answers. A poll given up on a silence stays open for late bytes until the next frame goes
out: bytes that arrive meanwhile (a slow machine or adapter, after the series ended) are its
answer, taken as during a retry -- decoded, it is recorded; undecodable, the identical poll goes
again. Thrown away, the next poll would acknowledge what they carried.
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
The rule is decided in drivers/redelivery.py (`ResetWatch`, sans-I/O, beside the restart
rule's `RedeliveryBook`); the host feeds it the frames, the bytes and the silences it sees.
Discovery (first contact, after offline, and again on exception 3C): LP 1F, 54, A0, 51 (then 56
when the machine has games), then LP 0E when RTE is on; 3C re-reads all but LP 0E.
Periodic long polls: a meter read (three LP 6F/AF, alternating, or LP 1C + 0F + 1E with
`meter_polls="1C"` or once a machine has ignored 6F) every `meters_every_s`, the clock (LP 7E)
every `clock_every_s`, LP 1A every `credits_every_s`. A periodic poll only goes out when the
previous poll to that machine was a GP, so GPs get at least every other slot; so does each poll
of a meter read after its first. A finished meter read is reported as a `meterSnapshot` (source
None: not an exception, nothing to acknowledge), with `straddle`: how many exceptions were
recorded between the read's first answer and the report -- events the machine may have counted
in the meters before the host heard of them. The snapshot is held until the machine shows an
empty queue: a GP answered 00, or two GPs in a row met with silence in RTE mode -- per machine,
across polls (with `rte_silence_retries` 0 each poll is one silence), no byte from the machine in
between (the first silence may be a lost event answer: an identical GP re-sends it, any other
frame acknowledged it, lost either way: docs/sas.md, "Residual risk") -- or the meter answer
itself, in RTE mode, once the machine's next exception answer is an event frame (then released
just before that exception is reported: it came after the read). A machine in RTE mode answers
a long poll with data only when nothing is pending, but one that reset between two polls (no
silence for the host to see) is back in normal mode and answers with data whatever it holds;
only its next exception answer shows which it was: bare, the meter answer proved nothing and the
snapshot waits for 00 (everything recorded meanwhile in `straddle`). Exception 17 (power
applied) and a `machineReplaced` queue a meter read as 70 does.
See docs/reconciliation.md.
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
A confirmed identity that differs from the one before is reported as `IdentityConfirmed`; the
driver keeps it in the poll journal and passes it back at start (`identities`), so a machine
swapped while the gateway was stopped is a `machineReplaced` at the first discovery too.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping
from typing import Any

from drivers.model import MachineEvent, MachineRef, TxFrame
from drivers.sas import framing, messages
from drivers.sas.answer_contract import AnswerContract
from drivers.sas.answer_facts import AnswerFacts
from drivers.sas.errors import SasLocalProtocolError
from drivers.sas.host_api import (
    Acknowledged,
    CommandFinished,
    HostConfig,
    HostEvent,
    Identity,
    IdentityConfirmed,
    LinkNote,
    Report,
)
from drivers.sas.line_state import (
    BYTE_TIME_S,
    DELAY_WINDOW,
    InFlight,
    Machine,
    Request,
    percentile,
    poll_from_wire,
)
from drivers.sas.scheduling import LineScheduling

__all__ = ["BYTE_TIME_S", "Acknowledged", "CommandFinished", "HostConfig", "HostEvent",
           "Identity", "IdentityConfirmed", "LinkNote", "Report", "SasHost", "poll_from_wire"]


class SasHost(AnswerContract, AnswerFacts, LineScheduling):
    """Polls the machines at `addresses` on one line. Feed it bytes and time; it returns frames,
    events and its next deadline."""

    def __init__(self, port: str, addresses: list[int] | tuple[int, ...],
                 config: HostConfig | None = None, *,
                 last_polls: dict[int, bytes] | None = None,
                 first_probe: int | None = None,
                 identities: Mapping[int, Identity] | None = None) -> None:
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
        self._machines = {a: Machine(a, MachineRef(port, a), meter_mode=self.config.meter_polls)
                          for a in addresses}
        for m in self._machines.values():
            self._queue_discovery(m)
        for a, identity in (identities or {}).items():
            if a in self._machines:  # as confirmed before the restart (see "Port lifecycle")
                self._machines[a].identity = identity
        self._replay: bytes | None = None
        self._arm_probes(last_polls or {}, first_probe, 0.0)
        self._last_to: dict[int, bytes] = {}
        self._delays: deque[float] = deque(maxlen=DELAY_WINDOW)
        self._framer = framing.Framer()
        self._inflight: InFlight | None = None
        # The poll given up on a silence, while no frame has followed it (see "Late answers").
        self._given_up: InFlight | None = None
        self._frames: list[TxFrame] = []
        self._events: deque[HostEvent] = deque()
        self._held: dict[int, MachineEvent] = {}
        self._to_ack: list[tuple[MachineEvent, int]] = []
        self._tokens = itertools.count(1)
        self._tickets = itertools.count(1)
        self._need_sync = True
        self._last_wire: bytes | None = None
        self._frame_no = 0

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

    def durable(self, token: int) -> None:
        """The event reported with `token` is durable: the machine may now be acknowledged."""
        event = self._held.pop(token)
        self._to_ack.append((event, token))
        m = self._machines[event.machine.address]
        if event.source is not None:
            # The next frame on the line is this exception's implied ACK.
            m.reset.acknowledging((event.source.code, event.source.payload), self._frame_no + 1)

    def link_down(self, now: float, reason: str) -> None:
        """The link broke or would not open (see "Port lifecycle"): every machine not already
        known offline is reported offline with `reason`, commands waiting for an answer fail,
        and the next poll to each machine is a restart probe, followed by discovery."""
        self._inflight = self._given_up = None
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

    def request(self, address: int, command: int, data: bytes = b"") -> int:
        """Queue long poll `command` for `address`; a `CommandFinished` with the returned ticket
        follows."""
        m = self._machine(address)
        ticket = next(self._tickets)
        m.queue.append(Request(messages.long_poll(address, command, data), ticket))
        return ticket

    def request_meters(self, address: int) -> int:
        """Queue a full meter read; its `CommandFinished` carries {"meters": ...} and a
        `meterSnapshot` is reported as for periodic reads."""
        m = self._machine(address)
        ticket = next(self._tickets)
        self._queue_meter_read(m, ticket)
        return ticket

    def frames_to_send(self) -> list[TxFrame]:
        frames, self._frames = self._frames, []
        if frames and self._to_ack:
            self._events.extend(Acknowledged(e, t) for e, t in self._to_ack)
            self._to_ack.clear()
        return frames

    def next_event(self) -> HostEvent | None:
        return self._events.popleft() if self._events else None

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
                "latency_p50_s": percentile(lat, 0.50), "latency_p99_s": percentile(lat, 0.99),
                "garbage_bytes": self._framer.discarded,
                "port_latency_s": self.port_latency_s,
            }
        return out

    def _machine(self, address: int) -> Machine:
        try:
            return self._machines[address]
        except KeyError:
            raise SasLocalProtocolError(f"address {address} is not polled on {self.port}")
