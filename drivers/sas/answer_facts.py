"""What a decoded answer tells the host (drivers/sas/host.py, "Machine resets", "Discovery",
"Exception follow-ups", "Port lifecycle"): exceptions reported and their follow-ups queued,
long-poll answers kept, requests retired, a machine online or offline and who it is. Pure: no
I/O."""

from __future__ import annotations

from collections import deque
from dataclasses import replace

from drivers.model import MachineEvent, MachineRef
from drivers.sas import framing, messages
from drivers.sas.codes import Exc, LongPoll
from drivers.sas.host_api import CommandFinished, IdentityConfirmed, LinkNote, Report
from drivers.sas.line_state import (
    BILL_EXCEPTIONS,
    LEGACY_METERS,
    HostCore,
    InFlight,
    Machine,
    MeterRead,
    Request,
)
from drivers.sas.mapping import SILENT_CODES, exception_event
from drivers.sas.meters import METERS, digits_of


class AnswerFacts(HostCore):
    """What the host learns from decoded answers, and what it reports about its machines."""

    def _accept(self, f: InFlight, answer: framing.Answer, now: float) -> None:
        m = f.machine
        match answer:
            case framing.ExceptionByte(code) | framing.Event(code, _):
                data = answer.data if isinstance(answer, framing.Event) else b""
                # The machine shows which mode it is in: trust that over what we last set, and
                # ask for RTE again if it dropped out of it.
                was_rte, m.rte_on = m.rte_on, isinstance(answer, framing.Event)
                if m.read_in_rte:
                    # The first exception answer since the read's meter answer shows the mode
                    # the machine was in then (see "Periodic long polls"): in RTE mode its
                    # queue was empty, and this exception came after the read.
                    m.read_in_rte = False
                    if m.rte_on:
                        self._release(m, now)
                if was_rte and not m.rte_on and self.config.rte and not any(
                        r.poll.command == LongPoll.RTE_MODE for r in m.queue):
                    m.queue.append(Request(messages.rte_mode(m.address, True)))
                event = None if code in SILENT_CODES else exception_event(
                    m.ref, code, data, m.denom_cents, now)
                resent = self._resent_after_reset(m, event)
                self._alive(m, f, now)
                if f.request is not None and f.request.confirm:
                    self._retire_request(m, f.request, now)  # answered: its work is done
                if event is not None:
                    self._report_exception(m, event, code, gp=f.poll.command is None, resent=resent)
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
                self._completed(m, f, now, self._learn_from_answer(m, f, value, now))

    def _learn_from_answer(self, m: Machine, f: InFlight, value: messages.LongPollAnswer,
                           now: float) -> str | None:
        """Keep what a long-poll answer tells (credits, meters into the read in progress,
        identity, games, clock, handpay, bill), queue LP 56 when the machine has games; returns
        a failure reason for a command."""
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
                    m.queue.insert(where, Request(
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
            case messages.BillAccepted():
                m.last_bill = {"amount_cents": value.amount_cents, "count": value.count,
                               "denomination_code": value.denomination_code,
                               "country_code": value.country_code, "read_at": now}
            case messages.HandpayResetResult(code) if code != 0:
                return {1: "unable to reset", 2: "not in handpay"}.get(code, f"code {code:02X}")
            case messages.ValidationStatus(status) if status != 0:
                return f"status {status:02X}"
        return None

    def _completed(self, m: Machine, f: InFlight, now: float, failure: str | None = None,
                   ) -> None:
        if f.request is not None:
            self._retire_request(m, f.request, now)
            if f.request.ticket is not None:
                self._events.append(CommandFinished(f.request.ticket, failure is None,
                                                    failure or ""))

    def _retire_request(self, m: Machine, request: Request, now: float, *,
                        unsupported: bool = False) -> None:
        """`request` is done (answered, or given up on): take it off the queue, settle the
        identity after discovery's LP 74, switch to LP 1C + 0F when 6F is `unsupported`, and
        report a meter read whose last poll this was (meterSnapshot, CommandFinished)."""
        m.queue = deque(r for r in m.queue if r is not request)
        if request.poll.command == LongPoll.AFT_STATUS and request.ticket is None:
            self._settle_identity(m, now)
        read = request.read
        if read is None:
            return
        command = request.poll.command
        six_f = (LongPoll.EXTENDED_METERS, LongPoll.EXTENDED_METERS_ALT)
        if unsupported and command in six_f and m.meter_mode == "6F":
            # The machine ignores 6F/AF (reference 2.2: silence): use LP 1C + 0F + 1E from now on.
            m.meter_mode = "1C"
            rest = [r for r in m.queue if r.read is read and r.poll.command in six_f]
            m.queue = deque(r for r in m.queue if not any(r is x for x in rest))
            read.remaining += len(LEGACY_METERS) - len(rest)
            m.queue.extend(Request(messages.long_poll(m.address, c), read=read)
                           for c in LEGACY_METERS)
        read.remaining -= 1
        if read.remaining:
            return
        if read.meters:
            m.stats.meter_reads += 1
            m.last_meters = dict(read.meters)
            m.held = {"meters": dict(read.meters), "denomination_cents": m.denom_cents,
                      "digits": {n: digits_of(n) for n in read.meters}}
            # In RTE mode the meter answer shows an empty queue -- if the machine still is in
            # RTE mode, which only its next exception answer shows ("Periodic long polls").
            m.read_in_rte = m.rte_on
        if read.ticket is not None:
            self._events.append(CommandFinished(
                read.ticket, bool(read.meters), "" if read.meters else "no meters",
                {"meters": dict(read.meters), "denomination_cents": m.denom_cents}))

    @staticmethod
    def _read_answered(m: Machine, read: MeterRead) -> None:
        if not read.started:
            # A new read: one still held merges into it (its window just gets longer).
            read.started, m.straddle, m.held, m.read_in_rte = True, 0, None, False

    def _release(self, m: Machine, now: float) -> None:
        """Report the held snapshot: the machine's queue is known empty (see "Periodic long
        polls"); every exception it counted before the read is recorded by now."""
        if m.held is not None:
            data, m.held = {**m.held, "straddle": m.straddle or 0}, None
            m.straddle, m.read_in_rte = None, False
            self._events.append(Report(MachineEvent("meterSnapshot", m.ref, data,
                                                    monotonic=now)))

    @staticmethod
    def _resent_after_reset(m: Machine, event: MachineEvent | None) -> bool:
        """Whether the exception just answered re-sends the one whose ACK a reset may have cut
        off (see "Machine resets"; the rule is drivers/redelivery.py ResetWatch)."""
        if event is None or event.source is None:
            return False
        source = event.source
        if not m.reset.is_resend((source.code, source.payload), priority=source.priority):
            return False
        m.stats.resent_after_reset += 1
        return True

    def _alive(self, m: Machine, f: InFlight, now: float) -> None:
        m.reset.heard()
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

    def _offline(self, m: Machine, now: float, reason: str) -> None:
        """Report `m` offline (with the identity it had) and forget who it is until discovery
        has run again: whatever answers next at this address may be another machine."""
        m.online = False
        m.offline_reason = reason
        m.held = m.straddle = None  # the next read after it is back spans the gap
        m.read_in_rte = False
        self._events.append(Report(MachineEvent("deviceOffline", m.ref, {"reason": reason},
                                                monotonic=now)))
        self._queue_discovery(m)
        self._forget_identity(m)

    @staticmethod
    def _forget_identity(m: Machine) -> None:
        m.ref = MachineRef(m.ref.port, m.address)
        m.game = None

    def _settle_identity(self, m: Machine, now: float) -> None:
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
        changed = [name for name, a, b in zip(("serial", "asset", "game"), old or new, new,
                                              strict=True)
                   if a is not None and b is not None and a != b]
        if old is not None and changed:
            self._queue_meter_read(m)
            self._events.append(Report(MachineEvent(
                "machineReplaced", m.ref,
                {"changed": changed, "previous_serial": old[0], "previous_asset": old[1],
                 "previous_game": old[2], "game": new[2]}, monotonic=now)))
        if new != old:
            # Kept by the driver across restarts, after the machineReplaced above is recorded.
            self._events.append(IdentityConfirmed(m.address, new))

    def _report_exception(self, m: Machine, event: MachineEvent, code: int, *, gp: bool,
                          resent: bool = False) -> None:
        """Report `event` with a token (the line is held until `durable`), and queue its
        follow-ups (reference 3), which go out after it is durable: each is its implied ACK or
        comes after it."""
        m.stats.exceptions += 1
        if m.straddle is not None and not resent:
            m.straddle += 1
        token = next(self._tokens)
        self._held[token] = event
        self._events.append(Report(event, token, resent))
        # Follow-ups (reference 3) go out after durable(): each is the implied ACK or after it.
        a = m.address
        if code == Exc.HANDPAY_PENDING:
            m.queue.append(Request(messages.long_poll(a, LongPoll.HANDPAY_INFO)))
        elif code in BILL_EXCEPTIONS and not m.rte_on:
            m.queue.append(Request(messages.long_poll(a, LongPoll.LAST_BILL)))
        elif code in (Exc.BUFFER_OVERFLOW, Exc.AC_POWER_APPLIED):
            self._queue_meter_read(m)
        elif code == Exc.OPERATOR_CHANGED_OPTIONS:
            m.queue.extend(self._discovery(m))
        if not m.queue and (gp or m.rte_on):
            # Follow a GP exception with a long poll (reference 2.3): the ACK, and a credits read.
            # In RTE mode it follows every exception, right after the sync GP (the ACK there),
            # and its answer, an event or the credits, shows that the machine heard the ACK
            # (see "Machine resets").
            m.queue.append(Request(messages.long_poll(m.address, LongPoll.CURRENT_CREDITS),
                                    confirm=m.rte_on))
        if m.rte_on and m.queue:
            # The ACK poll in RTE mode is a GP (see "Restart"): the sync GP goes first.
            self._need_sync = True
