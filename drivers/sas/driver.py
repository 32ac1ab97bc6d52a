"""The trio shell around SasHost: owns the link and the clock, does nothing clever (house style 3.3).

Durability (design.md section 4): each exception is recorded (or recognised as a redelivery)
before `host.durable()` lets the host send the next poll, which is the implied ACK; the sink hears
`acknowledged()` only after that poll was written to the link.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import trio

from drivers.base import (
    CommandOutcome,
    CommandResult,
    EventSink,
    MachineCommand,
    MachineEvent,
    PortStatistics,
)
from drivers.link import SasLink
from drivers.sas.codes import LongPoll
from drivers.sas.errors import SasLocalProtocolError
from drivers.sas.host import Acknowledged, CommandFinished, HostConfig, HostEvent, Report, SasHost
from drivers.sas.journal import PollJournal

__all__ = ["SasDriver", "SasSettings"]


@dataclass(frozen=True, slots=True)
class SasSettings:
    poll_interval_s: float = 0.2
    response_timeout_s: float = 0.1
    offline_after_misses: int = 5
    rte: bool = True
    credits_every_s: float = 5.0
    inter_byte_gap_s: float = 0.01
    max_attempts: int = 3
    sync_address: int | None = None
    rte_silence_retries: int = 2
    max_attempts_answering: int = 6

    def host_config(self) -> HostConfig:
        return HostConfig(self.poll_interval_s, self.response_timeout_s, self.inter_byte_gap_s,
                          self.offline_after_misses, self.rte, self.credits_every_s,
                          self.max_attempts, self.sync_address, self.rte_silence_retries,
                          self.max_attempts_answering)


# Catalogue command -> (long poll, data).
_COMMANDS = {"disableMachine": (LongPoll.SHUTDOWN, b""), "enableMachine": (LongPoll.STARTUP, b"")}


class SasDriver:
    """drivers.base.Driver for one SAS line with machines at `addresses`."""

    def __init__(self, port: str, open_link: Callable[[], Awaitable[SasLink]],
                 addresses: Sequence[int], settings: SasSettings | None = None, *,
                 journal: PollJournal | None = None) -> None:
        self.port = port
        self.settings = settings or SasSettings()
        self._open_link = open_link
        self._journal = journal
        self._host = SasHost(port, list(addresses), self.settings.host_config(),
                             last_polls=journal.snapshot() if journal else None)
        self._state = "idle"
        self._stamped: dict[int, MachineEvent] = {}
        self._waiters: dict[int, trio.Event] = {}
        self._finished: dict[int, CommandFinished] = {}

    async def run(self, sink: EventSink, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        link = await self._open_link()
        async with link:
            self._state = "running"
            task_status.started()
            try:
                await self._loop(link, sink)
            finally:
                self._state = "stopped"
                # Commands still waiting will never get an answer from this run.
                for ticket, waiter in self._waiters.items():
                    self._finished[ticket] = CommandFinished(ticket, False, "driver stopped")
                    waiter.set()
                self._waiters.clear()

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
                data = await link.receive_some()
                host.receive_data(data, trio.current_time())
                continue
            host.handle_timer(trio.current_time())

    async def _deliver(self, event: HostEvent, sink: EventSink) -> None:
        match event:
            case Report(raw, None):
                await sink.record(self._stamp(raw))
            case Report(raw, token) if token is not None:
                stamped = self._stamped[id(raw)] = self._stamp(raw)
                assert stamped.source is not None
                if not sink.is_redelivery(stamped.machine, stamped.source):
                    await sink.record(stamped)
                self._host.durable(token)
            case Acknowledged(raw):
                sink.acknowledged(self._stamped.pop(id(raw)))
            case CommandFinished(ticket):
                self._finished[ticket] = event
                self._waiters.pop(ticket).set()

    @staticmethod
    def _stamp(event: MachineEvent) -> MachineEvent:
        return replace(event, observed_at=time.time())

    async def execute(self, command: MachineCommand) -> CommandOutcome:
        if command.name not in _COMMANDS:
            return CommandOutcome(CommandResult.REJECTED, f"unsupported command {command.name}")
        try:
            online = self._host.is_online(command.address)
        except SasLocalProtocolError as exc:
            return CommandOutcome(CommandResult.REJECTED, str(exc))
        if not online or self._state != "running":
            return CommandOutcome(CommandResult.FAILED, "machine offline")
        ticket = self._host.request(command.address, *_COMMANDS[command.name])
        done = self._waiters[ticket] = trio.Event()
        await done.wait()
        result = self._finished.pop(ticket)
        if result.ok:
            return CommandOutcome(CommandResult.OK)
        return CommandOutcome(CommandResult.FAILED, result.reason)

    def statistics(self) -> PortStatistics:
        return PortStatistics(self.port, self._state, self._host.statistics())
