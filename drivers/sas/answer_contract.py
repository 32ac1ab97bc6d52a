"""The answer contract (drivers/sas/host.py, "Undecoded answers", "Late answers", "Busy", "RTE
silence"; docs/sas.md, "The answer contract"): what the host does with the bytes and
silences that answer a poll -- accept, repeat the identical poll (implied NACK), give up, or
record a lossMarker. Pure: no I/O."""

from __future__ import annotations

from drivers.model import MachineEvent
from drivers.sas import framing
from drivers.sas.errors import SasRemoteProtocolError
from drivers.sas.host_api import CommandFinished, Report
from drivers.sas.line_state import (
    BYTE_TIME_S,
    MAX_BUSY,
    OPTIONAL_POLLS,
    HostCore,
    InFlight,
)


class AnswerContract(HostCore):
    """The host's inputs (bytes, time) and what they do to the poll in flight."""

    def receive_data(self, data: bytes, now: float) -> None:
        self._framer.feed(data)
        if self._inflight is None and self._given_up is not None:
            self._reopen(self._given_up, now)
        f = self._inflight
        if f is None:
            self._framer.clear()
            return
        if not f.received:
            self._delays.append(max(0.0, now - f.sent_at - f.wire_s))
        f.received = f.ever_received = True
        f.machine.bytes_at, f.machine.silent_gps = now, 0
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
                f.machine.silent_gps += 1
                if f.machine.silent_gps >= 2:
                    # "No activity" once the next GP is silent too, this poll's repeat or the
                    # next poll (rte_silence_retries 0): a first silence may be a lost event
                    # answer, which an identical GP re-sends and any other frame acknowledged
                    # (lost either way: docs/sas.md, "Residual risk"). See "Periodic long polls".
                    self._release(f.machine, now)
                f.silent_run += 1
                f.failed_silent = True
                if f.silent_run <= self.config.rte_silence_retries:
                    self._resend(f, now)
                else:
                    f.machine.idle_gp = True
                    self._finish(f, now)
                    self._given_up = f
            else:
                if not f.probe:  # a silent restart probe is expected, not a fault
                    f.machine.stats.timeouts += 1
                f.doubt = f.doubt or f.received  # bytes that made no answer
                self._failed(f, now)
        if self._inflight is None and not self._held:
            self._poll_next(now)

    def _failed(self, f: InFlight, now: float) -> None:
        m = f.machine
        if f.probe:
            # Nothing held for us (or not synchronised yet): sync and poll normally.
            self._need_sync = True
            self._framer.clear()
            self._finish(f, now)
            if not f.received:
                self._given_up = f
            return None
        f.silent_run = 0 if f.received else f.silent_run + 1
        f.failed_silent = not f.received
        # Silences beyond max_attempts in a row are the machine's doubt being waited out, not
        # evidence that it is down (see "Undecoded answers"); nor is an optional long poll that
        # an online machine never answers (see "Line scheduling").
        if f.silent_run <= self.config.max_attempts and not (
                m.online and f.poll.command in OPTIONAL_POLLS and not f.ever_received):
            m.misses += 1
        if f.received:
            m.reset.heard()  # garbled, but an answer: the machine is up
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
        self._give_up(f, now, dead=dead)
        return None

    def _give_up(self, f: InFlight, now: float, *, dead: bool) -> None:
        """End the poll's series: resynchronise the line, retire a request an online machine
        meets with silence, keep the poll open for a late answer, back a dead address off."""
        m, cfg = f.machine, self.config
        self._need_sync = True
        if not f.ever_received and now - m.bytes_at >= cfg.reset_silence_s:
            m.reset.fell_silent()  # not one byte for that long: down, or resetting
        if f.request is not None and (
                f.request.ticket is not None or (f.was_online and not f.ever_received)):
            # An online machine that stays silent does not support this long poll (reference
            # 2.2): give up on it. Garbled answers and offline machines get it again later.
            self._retire_request(m, f.request, now, unsupported=not f.ever_received)
            if f.request.ticket is not None:
                self._events.append(CommandFinished(f.request.ticket, False, "no answer"))
        self._finish(f, now)
        if not f.received:
            self._given_up = f
        if dead:
            m.backoff_s = min(cfg.offline_backoff_max_s, max(cfg.interval_s, 2 * m.backoff_s))
            m.next_due = now + m.backoff_s

    def _reopen(self, f: InFlight, now: float) -> None:
        """Bytes after `f` was given up on a silence, before any other frame: its late answer
        (see "Late answers"). Wait for it as during a retry: decoded, it is the answer;
        undecodable, the identical poll goes again (implied NACK), never another poll."""
        self._given_up = None
        self._inflight = f
        m = f.machine
        m.idle_gp = False
        if f.request is not None and not any(r is f.request for r in m.queue):
            f.request = None  # given up already: its work (a command's result) is settled
        f.received = False
        f.failed_silent = True
        f.resend_at = max(now, f.sent_at + self.config.interval_s, m.next_due)
        f.deadline = f.resend_at

    def _resend(self, f: InFlight, now: float, *, count: bool = True) -> None:
        """Identical retransmission = implied NACK: the machine resends the same data. It keeps
        the poll interval (an idle RTE GP's, `rte_repeat_spacing_s` if set); a late answer
        meanwhile is taken as the answer."""
        cfg = self.config
        f.attempts += count
        f.received = False
        idle_rte = f.poll.command is None and f.expect.rte and not f.ever_received
        spacing = cfg.rte_repeat_spacing_s if idle_rte else None
        f.resend_at = f.sent_at + (cfg.interval_s if spacing is None else spacing)
        f.deadline = f.resend_at
        self.handle_timer(now)

    def _answered(self, f: InFlight, answer: framing.Answer, now: float) -> None:
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
                if f.busy > MAX_BUSY:
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

    def _loss_marker(self, f: InFlight, now: float) -> None:
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
