"""The trio shell around CardReaderCore: owns the link and the clock, nothing clever.

A card reader has no acknowledgement to give: nothing is ever written to it, and a read it made
is not sent again, so its events carry no `SourceRef` (no redelivery key) and the sink is only
ever asked to `record` (docs/cardreader.md, "What the driver contract means here"). Events name
the slot machine the reader sits beside (`machine`), not the reader's own port, so the player
channel lines up with that machine's other events.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from drivers.base import (
    CommandOutcome,
    CommandResult,
    EventSink,
    MachineCommand,
    MachineEvent,
    MachineRef,
    PortStatistics,
)
from drivers.cardreader.cardid import VenueSecret
from drivers.cardreader.link import ReaderLink
from drivers.cardreader.reader import CardReaderCore, PlayerEvent, ReaderSettings
from drivers.link import LinkError

__all__ = ["READER_STATUS_EVENTS", "CardReaderDriver"]

# The reader's own comings and goings (system channel), as opposed to what players did.
READER_STATUS_EVENTS = frozenset({"cardReaderOnline", "cardReaderOffline"})

log = logging.getLogger(__name__)


class _Tap(Protocol):
    def received(self, data: bytes) -> None: ...


class CardReaderDriver:
    """drivers.base.Driver for one reader on `port`, beside `machine`."""

    #: Parts of the driver contract this driver takes part in (drivers/testing.py): a reader
    #: reports events and figures; it is never acknowledged, never redelivers, takes no command.
    acknowledges = False
    redelivers = False

    def __init__(self, port: str, open_link: Callable[[], Awaitable[ReaderLink]],
                 machine: MachineRef, settings: ReaderSettings, secret: VenueSecret, *,
                 tap: _Tap | None = None) -> None:
        self.port = port
        self._tap = tap
        self.machine = machine
        self.settings = settings
        self._open_link = open_link
        self._core = CardReaderCore(settings, secret)
        self._state = "idle"

    async def run(self, sink: EventSink, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """One life of the link: raises LinkError when it breaks or will not open, after a
        seated card was reported removed (reason reader_offline); call again to reopen."""
        try:
            link = await self._open_link()
        except (LinkError, OSError) as exc:
            await self._lost(sink, str(exc))
            raise
        try:
            self._state = "running"
            self._core.link_up(trio.current_time())
            task_status.started()
            await self._loop(link, sink)
        except (LinkError, OSError) as exc:
            await self._lost(sink, str(exc))
            raise
        finally:
            if self._state == "running":
                self._state = "stopped"
            with trio.CancelScope(shield=True):
                await link.aclose()

    async def _loop(self, link: ReaderLink, sink: EventSink) -> None:
        core = self._core
        while True:
            while (event := core.next_event()) is not None:
                await sink.record(self._stamp(event))
            deadline = core.get_timer()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                data = await link.receive_some()
                if self._tap is not None:
                    self._tap.received(data)  # `diag trace`; redacted by the protocol's decoder
                core.receive(data, trio.current_time())
                continue
            core.handle_timer(trio.current_time())

    async def _lost(self, sink: EventSink, reason: str) -> None:
        self._state = "down"
        # The reason names the device, never what was read: safe to log.
        log.info("%s: card reader offline: %s", self.port, reason)
        self._core.link_down(trio.current_time(), reason)
        while (event := self._core.next_event()) is not None:
            await sink.record(self._stamp(event))

    def _stamp(self, event: PlayerEvent) -> MachineEvent:
        data = dict(event.data)
        if event.type in READER_STATUS_EVENTS:
            data["reader"] = self.port  # which reader: the event's machine is the one beside it
        return MachineEvent(event.type, self.machine, data, None,
                            observed_at=time.time(), monotonic=event.at)

    async def execute(self, command: MachineCommand) -> CommandOutcome:
        await trio.lowlevel.checkpoint()
        return CommandOutcome(CommandResult.REJECTED,
                              f"a card reader takes no commands ({command.name})")

    def statistics(self) -> PortStatistics:
        # `device`: the gateway counts readers apart from slot machines (gateway/statistics.py).
        return PortStatistics(self.port, self._state,
                              {self.machine.address: {"device": "card_reader",
                                                      "machine": f"{self.machine.port}/"
                                                      f"{self.machine.address}",
                                                      **self._core.statistics()}})
