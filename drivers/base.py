"""The contract between a machine protocol (SAS today, another one tomorrow) and the gateway.

A driver owns one port (one serial line, one or more machines on it). It turns what the machines
report into driver-neutral `MachineEvent`s, hands each to the gateway's `EventSink`, and only
acknowledges the machine once `EventSink.record` has returned -- that return means "durable".
Nothing in `drivers/` knows about the outbox, signing or the uplink.

The neutral types (`MachineEvent`, `MachineRef`, `SourceRef`, commands, statistics, meters) live in
drivers/model.py, which imports no trio, and are re-exported here; what a protocol registers
(its settings, trace decoding, probe, journal) is drivers/registry.py. docs/drivers.md is the guide.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import trio

from drivers.model import (
    Capability,
    CommandOutcome,
    CommandResult,
    FrameTap,
    MachineCommand,
    MachineEvent,
    MachineRef,
    MeterName,
    MeterReading,
    PortStatistics,
    RedeliveryKey,
    SourceRef,
    TxFrame,
)

__all__ = [
    "Capability",
    "CommandOutcome",
    "CommandResult",
    "Driver",
    "EventSink",
    "FrameTap",
    "MachineCommand",
    "MachineEvent",
    "MachineRef",
    "MeterName",
    "MeterReading",
    "MeterSource",
    "PortStatistics",
    "RedeliveryKey",
    "SourceRef",
    "TxFrame",
]


class EventSink(Protocol):
    """What the gateway gives a driver."""

    async def record(self, event: MachineEvent) -> None:
        """Persist `event`; returns only once it is durable. May block (backpressure, disk full)."""

    def acknowledged(self, event: MachineEvent) -> None:
        """The machine has been told (SAS: the implied ACK went out). Never blocks."""

    def is_redelivery(self, machine: MachineRef, source: SourceRef) -> bool:
        """True if `source` repeats the last durable event of `machine` that was never
        acknowledged before a restart; the driver then acknowledges without recording again."""

    async def redelivered(self, event: MachineEvent) -> None:
        """`event` was just recognised as a redelivery of the machine's last recorded exception
        (is_redelivery returned True after a restart, or the driver saw the machine re-send it
        after a reset) and is about to be acknowledged: persist what is new about it (the poll
        that elicited it this time, `SourceRef.poll_counter`) and that it is unacknowledged
        again, first. Returns once durable."""


@runtime_checkable
class Driver(Protocol):
    """Every machine protocol implements this."""

    port: str

    async def run(self, sink: EventSink, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the link, poll forever, report events to `sink`. `task_status.started()` once the
        link is open. Raises `LinkBrokenError` when the port goes away (the supervisor restarts)."""

    async def execute(self, command: MachineCommand) -> CommandOutcome:
        """Run one command against one machine on this port; never raises for machine refusals."""

    def statistics(self) -> PortStatistics:
        """Current figures, cheap, no I/O."""


@runtime_checkable
class MeterSource(Protocol):
    """A driver with `Capability.METERS` also implements this."""

    async def read_meters(self, address: int) -> MeterReading:
        """Read the machine's meters now, under `MeterName`s (only the ones it keeps). Raises
        `LookupError` for an address not on this port, `ConnectionError` while it is offline."""
