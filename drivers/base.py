"""The contract between a machine protocol (SAS today, another one tomorrow) and the gateway.

A driver owns one port (one serial line, one or more machines on it). It turns what the machines
report into driver-neutral `MachineEvent`s, hands each to the gateway's `EventSink`, and only
acknowledges the machine once `EventSink.record` has returned -- that return means "durable".
Nothing in `drivers/` knows about the outbox, signing or the uplink.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import trio

__all__ = [
    "CommandOutcome",
    "CommandResult",
    "Driver",
    "EventSink",
    "MachineCommand",
    "MachineEvent",
    "MachineRef",
    "PortStatistics",
    "SourceRef",
]


@dataclass(frozen=True, slots=True)
class MachineRef:
    """Which machine an event is about. `serial`/`asset` are filled in once discovery read them."""

    port: str
    address: int
    serial: str | None = None
    asset: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"port": self.port, "address": self.address, "serial": self.serial,
                "asset": self.asset}


@dataclass(frozen=True, slots=True)
class SourceRef:
    """What on the wire produced an event: protocol, code and raw payload.

    `(code, payload)` is the redelivery key (drivers/redelivery.py): after a gateway restart a
    machine re-sends the exception it never saw acknowledged, with the same code and payload.
    `priority` marks an exception the machine sends ahead of its queue (SAS P-flag, e.g. 70), so
    it can arrive before that re-sent one.
    `poll_counter` is the line's poll-journal counter of the poll that elicited the exception
    (drivers/sas/journal.py), None without a journal: committed with the event, it tells after a
    restart whether any frame followed that poll, i.e. whether the machine was told.
    """

    protocol: str
    code: int
    payload: bytes = b""
    priority: bool = False
    poll_counter: int | None = None


@dataclass(frozen=True, slots=True)
class MachineEvent:
    """One thing a machine reported, in the gateway's vocabulary.

    `type` is a catalogue name (gateway/events.py, e.g. "doorOpened"). Money in `data` is always an
    integer number of cents under a key ending in `_cents`; meters in credits under `_credits`.
    `observed_at` is wall-clock UTC seconds when the driver saw it; `monotonic` the trio clock then
    (for capture-to-durable latency).
    """

    type: str
    machine: MachineRef
    data: Mapping[str, Any] = field(default_factory=dict)
    source: SourceRef | None = None
    observed_at: float = 0.0
    monotonic: float = 0.0


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


class CommandResult(enum.StrEnum):
    OK = "ok"
    REJECTED = "rejected"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class MachineCommand:
    """A command for one machine: `name` is a catalogue command (disableMachine, enableMachine,
    requestMeters, setClock, remoteHandpayReset)."""

    name: str
    address: int
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    result: CommandResult
    reason: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PortStatistics:
    """Frozen snapshot for diag and metrics; `machines` maps address -> per-machine figures."""

    port: str
    state: str
    machines: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)


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
