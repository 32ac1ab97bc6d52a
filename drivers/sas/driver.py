"""The trio shell around SasHost: owns the link and the clock, does nothing clever (house style 3.3).

Durability (docs/outbox.md section 2): each exception is recorded (or recognised as a redelivery)
before `host.durable()` lets the host send the next poll, which is the implied ACK; the sink hears
`acknowledged()` only after that poll was written to the link.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import time
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import trio

from drivers.base import (
    CommandOutcome,
    CommandResult,
    EventSink,
    MachineCommand,
    MachineEvent,
    MachineRef,
    MeterName,
    MeterReading,
    PortStatistics,
)
from drivers.link import LinkError, SasLink
from drivers.sas import messages
from drivers.sas.codes import LongPoll
from drivers.sas.errors import SasLocalProtocolError
from drivers.sas.host import (
    Acknowledged,
    CommandFinished,
    HostConfig,
    HostEvent,
    IdentityConfirmed,
    LinkNote,
    Report,
    SasHost,
)
from drivers.sas.journal import PollJournal

__all__ = ["NEUTRAL_METERS", "SasDriver", "SasSettings"]

log = logging.getLogger(__name__)


# The driver's settings are the host's: one dataclass, so no field can go missing or be swapped
# on the way (a field-by-field mirror once swapped rte_silence_retries and max_attempts_answering).
SasSettings = HostConfig

# See _loop: how late a wake-up must be to look at the link once more, and for how long.
_LATE_WAKE_S = 0.005
_LOOK_AGAIN_S = 0.002


def _clock_data(args: Mapping[str, Any]) -> bytes:
    """LP 7F data for {"time": RFC3339}: the wall time as written (SAS clocks have no zone)."""
    when = dt.datetime.fromisoformat(str(args["time"]).replace("Z", "+00:00"))
    return messages.set_clock(1, when.replace(tzinfo=None)).data


# Catalogue command -> (long poll, args -> data).
_COMMANDS: dict[str, tuple[int, Callable[[Mapping[str, Any]], bytes]]] = {
    "disableMachine": (LongPoll.SHUTDOWN, lambda _: b""),
    "enableMachine": (LongPoll.STARTUP, lambda _: b""),
    "setClock": (LongPoll.SET_CLOCK, _clock_data),
    "remoteHandpayReset": (LongPoll.REMOTE_HANDPAY_RESET, lambda _: b""),
}
_SUPPORTED = frozenset({*_COMMANDS, "requestMeters"})

# SAS meter name (codes.METER_CODES, messages.METER_NAMES) -> neutral name, and the factor to its
# unit: SAS money meters count credits, LP 20 whole currency units (dollars) of bills.
NEUTRAL_METERS: dict[str, tuple[MeterName, int]] = {
    "coin_in": (MeterName.COIN_IN_CREDITS, 1),
    "coin_out": (MeterName.COIN_OUT_CREDITS, 1),
    "jackpot": (MeterName.JACKPOT_CREDITS, 1),
    "cancelled_credits": (MeterName.CANCELLED_CREDITS, 1),
    "drop": (MeterName.DROP_CREDITS, 1),
    "current_credits": (MeterName.CURRENT_CREDITS, 1),
    "games_played": (MeterName.GAMES_PLAYED, 1),
    "games_won": (MeterName.GAMES_WON, 1),
    "games_lost": (MeterName.GAMES_LOST, 1),
    "bills_total_dollars": (MeterName.BILLS_IN_CENTS, 100),
    **{m: (MeterName(m), 1) for m in (
        "handpaid_cancelled_credits", "tickets_in_cashable", "tickets_in_restricted",
        "tickets_out_cashable", "tickets_out_restricted", "ticket_in_credits",
        "ticket_out_credits", "transfers_to_machine_credits", "transfers_to_host_credits")},
}


class SasDriver:
    """drivers.base.Driver for one SAS line with machines at `addresses`."""

    def __init__(self, port: str, open_link: Callable[[], Awaitable[SasLink]],
                 addresses: Sequence[int], settings: SasSettings | None = None, *,
                 journal: PollJournal | None = None) -> None:
        self.port = port
        self.settings = settings or SasSettings()
        self._open_link = open_link
        self._journal = journal
        self._host = SasHost(port, list(addresses), self.settings,
                             last_polls=journal.snapshot() if journal else None,
                             first_probe=journal.last_address() if journal else None,
                             identities=journal.identities() if journal else None)
        self._state = "idle"
        self._stamped: dict[int, MachineEvent] = {}
        self._waiters: dict[int, trio.Event] = {}
        self._finished: dict[int, CommandFinished] = {}

    async def run(self, sink: EventSink, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """One life of the link: raises LinkError when it breaks or will not open, after its
        machines were reported offline (docs/sas.md, "Port lifecycle"); call again to reopen."""
        try:
            link = await self._open_link()
        except (LinkError, OSError) as exc:
            await self._link_lost(sink, str(exc))
            raise
        async with link:
            self._state = "running"
            task_status.started()
            try:
                # Ports started together would poll in lockstep, every interval a burst of one
                # poll per port: spread them over the interval by a hash of the port name.
                spread = zlib.crc32(self.port.encode()) % 1000 / 1000
                await trio.sleep(spread * self.settings.interval_s)
                await self._loop(link, sink)
            except (LinkError, OSError) as exc:
                await self._link_lost(sink, str(exc))
                raise
            finally:
                if self._state != "down":
                    self._state = "stopped"
                # Commands still waiting will never get an answer from this run.
                for ticket, waiter in self._waiters.items():
                    self._finished[ticket] = CommandFinished(ticket, False, "driver stopped")
                    waiter.set()
                self._waiters.clear()

    async def _link_lost(self, sink: EventSink, reason: str) -> None:
        """Machines offline now (deviceOffline with `reason`), not after missed polls: the
        host forgets the line state, and its next polls are restart probes and discovery."""
        self._state = "down"
        self._host.link_down(trio.current_time(), reason)
        while (event := self._host.next_event()) is not None:
            await self._deliver(event, sink)

    async def _loop(self, link: SasLink, sink: EventSink) -> None:
        host = self._host
        while True:
            for frame in host.frames_to_send():
                if self._journal is not None:
                    # Recorded before the write: should the process die in between, the machine
                    # never saw this poll, and the restart probe repeating it only ACKs an answer
                    # that was durable already (the host sends nothing while one is not).
                    self._journal.record(frame.data)
                await link.send(frame)
            event = host.next_event()
            if event is not None:
                await self._deliver(event, sink)
                continue
            deadline = host.get_timer()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                words = await link.receive_words()
                host.receive_words(words, trio.current_time())
                continue
            if deadline is not None and trio.current_time() - deadline > _LATE_WAKE_S:
                # Woken late (a busy event loop, not a silent machine): read what already
                # arrived before the host takes the poll for unanswered. A retry sent over an
                # answer waiting in the kernel's buffer would put two copies of it on the line.
                with trio.move_on_after(_LOOK_AGAIN_S):
                    words = await link.receive_words()
                    host.receive_words(words, trio.current_time())
                    continue
            host.handle_timer(trio.current_time())

    async def _deliver(self, event: HostEvent, sink: EventSink) -> None:
        match event:
            case Report(raw, None):
                await sink.record(self._stamp(raw))
            case Report(raw, token, resent) if token is not None:
                assert raw.source is not None
                # The host sent nothing on the line since the poll this answered, so the
                # journal's counter is that poll's (docs/sas.md, "Restart safety"). One copy
                # of the event, stamped and with its counter.
                stamped = replace(raw, observed_at=time.time(), source=raw.source if
                                  self._journal is None else replace(
                                      raw.source, poll_counter=self._journal.counter))
                assert stamped.source is not None
                self._stamped[token] = stamped
                if resent:
                    # Re-sent after a machine reset cut off its ACK (host.py, "Machine resets").
                    log.info("%s: address %d re-sent exception %02X after a reset; acknowledged "
                             "without recording it again", self.port, raw.machine.address,
                             stamped.source.code)
                if resent or sink.is_redelivery(stamped.machine, stamped.source):
                    await sink.redelivered(stamped)
                else:
                    await sink.record(stamped)
                self._host.durable(token)
            case Acknowledged(_, token):
                sink.acknowledged(self._stamped.pop(token))
            case CommandFinished(ticket):
                self._finished[ticket] = event
                self._waiters.pop(ticket).set()
            case IdentityConfirmed(address, identity) if self._journal is not None:
                self._journal.record_identity(address, identity)  # host.py, "Port lifecycle"
            case LinkNote(address, kind) if kind.startswith("address conflict"):
                log.warning("%s: address %d: %s (same serial or asset number): one machine "
                            "answers both, or two machines share an address", self.port,
                            address, kind)
            case LinkNote(address, kind):
                log.info("%s: %s from address %d", self.port, kind, address)

    @staticmethod
    def _stamp(event: MachineEvent) -> MachineEvent:
        return replace(event, observed_at=time.time())

    async def execute(self, command: MachineCommand) -> CommandOutcome:
        if command.name not in _SUPPORTED:
            return CommandOutcome(CommandResult.REJECTED, f"unsupported command {command.name}")
        try:
            online = self._host.is_online(command.address)
            if command.name == "requestMeters":
                data = None
            else:
                poll, make_data = _COMMANDS[command.name]
                data = make_data(command.args)
        except (SasLocalProtocolError, KeyError, ValueError, TypeError) as exc:
            return CommandOutcome(CommandResult.REJECTED, f"bad command: {exc!r}")
        if not online or self._state != "running":
            return CommandOutcome(CommandResult.FAILED, "machine offline")
        if data is None:
            ticket = self._host.request_meters(command.address)
        else:
            ticket = self._host.request(command.address, poll, data)
        done = self._waiters[ticket] = trio.Event()
        await done.wait()
        result = self._finished.pop(ticket)
        if result.ok:
            return CommandOutcome(CommandResult.OK, data=result.data)
        return CommandOutcome(CommandResult.FAILED, result.reason, result.data)

    async def read_meters(self, address: int) -> MeterReading:
        """drivers.base.MeterSource: a requestMeters round, under neutral names (NEUTRAL_METERS;
        SAS meters without a neutral name are left out)."""
        if address not in self._host.statistics():
            raise LookupError(f"{self.port}: no machine at address {address}")
        outcome = await self.execute(MachineCommand("requestMeters", address))
        if outcome.result is not CommandResult.OK:
            raise ConnectionError(f"{self.port}/{address}: {outcome.reason}")
        values = {NEUTRAL_METERS[name][0]: value * NEUTRAL_METERS[name][1]
                  for name, value in (outcome.data.get("meters") or {}).items()
                  if name in NEUTRAL_METERS}
        stats = self._host.statistics()[address]
        machine = MachineRef(self.port, address, stats.get("serial"), stats.get("asset"))
        return MeterReading(machine, values, outcome.data.get("denomination_cents"))

    def statistics(self) -> PortStatistics:
        return PortStatistics(self.port, self._state, self._host.statistics())
