"""Line scheduling (drivers/sas/host.py, "Implied ACK", "Restart", "Periodic long polls",
"Line scheduling"): which machine gets the line next, with which poll, after which sync GP,
and how long to wait for its answer. Pure: no I/O."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from drivers.model import TxFrame
from drivers.sas import messages
from drivers.sas.codes import METER_CODES, LongPoll
from drivers.sas.line_state import (
    BYTE_TIME_S,
    LEGACY_METERS,
    HostCore,
    InFlight,
    Machine,
    MeterRead,
    Request,
    expectation,
    poll_from_wire,
)


class LineScheduling(HostCore):
    """Who gets the line next, with which poll, and how long its answer may take."""

    @property
    def port_latency_s(self) -> float | None:
        """What the port adds to a machine's answer time (adapter latency timer, pty, event
        loop): the 90th percentile of the last 64 first-byte delays less the poll's wire time.
        It includes the machine's own turnaround, so the wait built on it errs long."""
        if not self._delays:
            return None
        ordered = sorted(self._delays)
        return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]

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

    def _discovery(self, m: Machine) -> list[Request]:
        a = m.address
        return [Request(messages.long_poll(a, LongPoll.GAME_CONFIGURATION)),
                Request(messages.long_poll(a, LongPoll.VERSION_AND_SERIAL)),
                Request(messages.enabled_features(a, 0)),
                Request(messages.long_poll(a, LongPoll.GAME_COUNT)),
                Request(messages.aft_status(a))]

    def _queue_discovery(self, m: Machine) -> None:
        discovery = self._discovery(m)
        if self.config.rte:
            discovery.append(Request(messages.rte_mode(m.address, True)))
        keep = [r for r in m.queue
                if r.ticket is not None or (r.read is not None and r.read.ticket is not None)]
        m.queue = deque(discovery + keep)
        m.rte_on = False

    def _queue_meter_read(self, m: Machine, ticket: int | None = None) -> None:
        a = m.address
        if m.meter_mode == "6F":
            m.alternate = not m.alternate
            polls = [messages.extended_meters(a, 0, list(METER_CODES), alternate=not m.alternate)]
        else:
            polls = [messages.long_poll(a, c) for c in LEGACY_METERS]
        read = MeterRead(len(polls), ticket)
        m.queue.extend(Request(p, read=read) for p in polls)

    def _periodic(self, m: Machine, now: float) -> None:
        """Queue the periodic long poll that is due, if any (one at a time, after a GP)."""
        if not m.online or not m.last_was_gp:
            return
        cfg = self.config
        if now >= m.meters_due:
            m.meters_due = now + cfg.meters_every_s
            self._queue_meter_read(m)
        elif now >= m.clock_due:
            m.clock_due = now + cfg.clock_every_s
            m.queue.append(Request(messages.long_poll(m.address, LongPoll.READ_CLOCK)))
        elif now - m.credits_at >= cfg.credits_every_s:
            m.queue.append(Request(messages.long_poll(m.address, LongPoll.CURRENT_CREDITS)))

    def _send(self, wire: bytes) -> None:
        self._given_up = None  # any frame now decides the fate of a late answer
        self._frames.append(TxFrame(wire))
        self._last_wire = wire
        self._frame_no += 1
        address = wire[0] & 0x7F
        self._last_to[address] = wire
        for m in self._machines.values():
            m.reset.frame_sent(self._frame_no, to_this_machine=m.address == address)

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
            self._inflight = InFlight(m, poll, None, expectation(poll, m.rte_on), now,
                                       now + self._answer_wait(wire_s), probe=True, wire_s=wire_s)
            return
        if not m.queue:
            self._periodic(m, now)
        request = m.queue[0] if m.queue else None
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
        self._inflight = InFlight(m, poll, request, expectation(poll, m.rte_on), now,
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

    def _finish(self, f: InFlight, now: float) -> None:
        self._inflight = None
        f.machine.next_due = max(now, f.sent_at + self.config.interval_s)

    def _arm_probes(self, last_polls: Mapping[int, bytes], first_probe: int | None,
                    now: float) -> None:
        """Make the next poll to each machine a restart probe (see "Restart")."""
        self._probes = {a: p for a, wire in last_polls.items()
                        if a in self._machines and (p := poll_from_wire(a, wire)) is not None}
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
