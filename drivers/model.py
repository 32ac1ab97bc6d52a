"""The driver-neutral vocabulary: what every machine protocol and the gateway share.

Plain frozen dataclasses and enums, no trio and no I/O (even transitively): a sans-I/O protocol
core (drivers/sas/host.py) and the gateway's pure modules (gateway/events.py and what imports it)
use them without loading an event loop. The async contract (`Driver`, `EventSink`) is in
drivers/base.py, which re-exports everything here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "Capability",
    "CommandOutcome",
    "CommandResult",
    "FrameTap",
    "MachineCommand",
    "MachineEvent",
    "MachineRef",
    "MeterName",
    "MeterReading",
    "PortStatistics",
    "RedeliveryKey",
    "SourceRef",
    "TxFrame",
    "machine_key",
]

# Opaque to the gateway: produced by the driver, stored, compared only for equality.
RedeliveryKey = bytes | str


def machine_key(port: object, address: object) -> str:
    """'port/address': the one spelling of a machine's identity on this gateway (status, filters,
    diag, metrics labels)."""
    return f"{port}/{address}"


@dataclass(frozen=True, slots=True)
class MachineRef:
    """Which machine an event is about. `serial`/`asset` are filled in once discovery read them."""

    port: str
    address: int
    serial: str | None = None
    asset: str | None = None

    @property
    def key(self) -> str:
        """'port/address': the one spelling of a machine's identity on this gateway."""
        return machine_key(self.port, self.address)

    def as_dict(self) -> dict[str, Any]:
        return {"port": self.port, "address": self.address, "serial": self.serial,
                "asset": self.asset}


@dataclass(frozen=True, slots=True)
class SourceRef:
    """What on the wire produced an event that the machine waits to have acknowledged.

    `code` is the protocol's event code (kept with the event for operators), `payload` the raw
    bytes that came with it. After a gateway restart a machine may re-send the exception it never
    saw acknowledged: the gateway recognises the re-send by `(code, redelivery_key)`, which it
    stores and compares for equality only (drivers/redelivery.py). `key` is the driver's own
    redelivery key when the payload is not it (bytes or str); None means the payload is.
    `priority` marks an exception the machine sends ahead of its queue (SAS P-flag, e.g. 70), so
    it can arrive before that re-sent one.
    `poll_counter` is the driver's restart-journal counter of the request that elicited the
    exception (SAS: drivers/sas/journal.py), None without a journal: committed with the event,
    it tells after a restart whether any frame followed, i.e. whether the machine was told.
    """

    protocol: str
    code: int
    payload: bytes = b""
    priority: bool = False
    poll_counter: int | None = None
    key: RedeliveryKey | None = None

    @property
    def redelivery_key(self) -> RedeliveryKey:
        return self.payload if self.key is None else self.key


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


@dataclass(frozen=True, slots=True)
class TxFrame:
    """One host message; the first byte carries the wakeup bit when `wakeup` is true (SAS's ninth
    bit; links that have none ignore it)."""

    data: bytes
    wakeup: bool = True


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


class Capability(enum.StrEnum):
    """Parts of the contract a protocol may or may not have; a driver declares the ones it has
    (drivers/registry.py) and the conformance suite (drivers/testing.py) exercises exactly those.

    ACKS: the machine waits for an acknowledgement, sent only after `EventSink.record` returned.
    REDELIVERY: the machine re-sends what it never saw acknowledged; events carry a `SourceRef`.
    METERS: `read_meters` answers with `MeterName` counters.
    COMMANDS: `execute` runs catalogue commands against a machine.
    """

    ACKS = "acks"
    REDELIVERY = "redelivery"
    METERS = "meters"
    COMMANDS = "commands"


class MeterName(enum.StrEnum):
    """Meters under protocol-neutral names. The suffix is the unit: `_credits` counts credits
    (worth the machine's denomination), `_cents` money, no suffix a count of what it names."""

    COIN_IN_CREDITS = "coin_in_credits"
    COIN_OUT_CREDITS = "coin_out_credits"
    JACKPOT_CREDITS = "jackpot_credits"
    CANCELLED_CREDITS = "cancelled_credits"
    DROP_CREDITS = "drop_credits"
    CURRENT_CREDITS = "current_credits"
    GAMES_PLAYED = "games_played"
    GAMES_WON = "games_won"
    GAMES_LOST = "games_lost"
    BILLS_IN_CENTS = "bills_in_cents"
    HANDPAID_CANCELLED_CREDITS = "handpaid_cancelled_credits"
    TICKETS_IN_CASHABLE = "tickets_in_cashable"
    TICKETS_IN_RESTRICTED = "tickets_in_restricted"
    TICKETS_OUT_CASHABLE = "tickets_out_cashable"
    TICKETS_OUT_RESTRICTED = "tickets_out_restricted"
    TICKET_IN_CREDITS = "ticket_in_credits"
    TICKET_OUT_CREDITS = "ticket_out_credits"
    TRANSFERS_TO_MACHINE_CREDITS = "transfers_to_machine_credits"
    TRANSFERS_TO_HOST_CREDITS = "transfers_to_host_credits"


@dataclass(frozen=True, slots=True)
class MeterReading:
    """What `read_meters` returns: the meters the machine answered (a machine need not keep
    every one), and the denomination that turns credits into cents (None: not known)."""

    machine: MachineRef
    values: Mapping[MeterName, int]
    denomination_cents: int | None = None


class FrameTap(Protocol):
    """Where a driver reports the frames on its line, for `diag trace` (gateway/control.py).
    `sent` is called for every host frame (the decoder's context); `received` only while
    `active()`, so a driver converts nothing for a trace nobody reads. Drivers know nothing of
    tracing beyond this: decoding and redaction are the protocol's `TraceDecoder`
    (drivers/registry.py)."""

    def active(self) -> bool:
        """Someone traces this port now (one dictionary lookup)."""

    def sent(self, data: bytes) -> None:
        """The host wrote `data` to the line."""

    def received(self, data: bytes, *, wakeup: bool = False) -> None:
        """`data` arrived from the machines; `wakeup`: with the ninth bit set (a SAS chirp)."""
