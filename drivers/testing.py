"""A conformance check that every machine-protocol driver must pass (drivers/base.py).

`check_driver_conformance(make_driver_and_peer)` runs a driver against a peer (a simulated
machine on an in-process link) and checks the contract the gateway relies on, without knowing the
protocol:

1. Events out: what the machine reports arrives at `EventSink.record` as `MachineEvent`s with a
   catalogue-shaped type and a `SourceRef` (exceptions); events without a source are allowed
   (device state, meter snapshots) and need no acknowledgement.
2. Durable before acknowledged: while `record` has not returned, the machine is not acknowledged;
   `acknowledged` comes only for events whose `record` returned (or which the sink called a
   redelivery), once each.
3. Redelivery: an event the sink calls a redelivery is not recorded again, yet the machine is
   acknowledged.
4. Commands in: `execute` returns a `CommandOutcome` and never raises; unknown commands and
   unknown addresses are REJECTED; the peer's `commands` all come back OK.
5. Statistics out: `statistics()` is cheap, synchronous, names the port and every machine.

The check is async and uses trio sleeps only, so run it under the autojump clock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from drivers.base import (
    CommandOutcome,
    CommandResult,
    Driver,
    MachineCommand,
    MachineEvent,
    MachineRef,
    PortStatistics,
    SourceRef,
)

__all__ = ["ConformancePeer", "check_driver_conformance"]


@dataclass
class ConformancePeer:
    """The machine side, as the check needs it.

    `run(task_status)` serves the machine until cancelled; `raise_exception()` makes it report one
    exception; `acknowledged()` counts the exceptions the machine has seen acknowledged;
    `commands` are commands this driver supports that must come back OK.
    """

    address: int
    run: Callable[..., Awaitable[None]]
    raise_exception: Callable[[], None]
    acknowledged: Callable[[], int]
    commands: Sequence[MachineCommand] = ()
    settle_s: float = 5.0


@dataclass
class _CheckingSink:
    peer: ConformancePeer
    recorded: list[MachineEvent] = field(default_factory=list)
    acked: list[MachineEvent] = field(default_factory=list)
    claimed: list[MachineEvent] = field(default_factory=list)  # redeliveries claimed
    claim_redelivery: bool = False
    gate: trio.Event | None = None
    in_record: bool = False
    changed: trio.Event = field(default_factory=trio.Event)
    failures: list[str] = field(default_factory=list)
    _unacked_redeliveries: int = 0
    redelivered_events: list[MachineEvent] = field(default_factory=list)

    def _poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def record(self, event: MachineEvent) -> None:
        if not isinstance(event, MachineEvent) or not event.type or not event.type[0].islower():
            self.failures.append(f"not a catalogue MachineEvent: {event!r}")
        before = self.peer.acknowledged()
        self.in_record = event.source is not None
        self._poke()
        if self.gate is not None and event.source is not None:
            await self.gate.wait()  # the gateway is slow to make it durable
        if self.peer.acknowledged() != before:
            self.failures.append(f"machine acknowledged while {event.type} was not durable")
        self.in_record = False
        self.recorded.append(event)
        self._poke()

    def acknowledged(self, event: MachineEvent) -> None:
        known = [e for e in self.recorded if e is event] or [
            e for e in self.claimed if (e.machine.address, e.source) == (
                event.machine.address, event.source)]
        if event.source is None or not known:
            self.failures.append(f"acknowledged something never recorded: {event!r}")
        elif not any(e is event for e in self.recorded) and not any(
                e is event for e in self.redelivered_events):
            self.failures.append(f"acknowledged a redelivery before sink.redelivered(): {event!r}")
        if any(e is event for e in self.acked):
            self.failures.append(f"acknowledged twice: {event!r}")
        self.acked.append(event)
        self._poke()

    async def redelivered(self, event: MachineEvent) -> None:
        self.redelivered_events.append(event)

    def is_redelivery(self, machine: MachineRef, source: SourceRef) -> bool:
        if self.claim_redelivery:
            self.claim_redelivery = False
            self.claimed.append(MachineEvent("redelivered", machine, {}, source))
            return True
        return False

    async def until(self, predicate: Callable[[], bool], what: str, limit_s: float) -> None:
        with trio.move_on_after(limit_s) as scope:
            while not predicate():
                await self.changed.wait()
        if scope.cancelled_caught:
            raise AssertionError(f"driver conformance: timed out waiting for {what}")

    def exceptions(self) -> list[MachineEvent]:
        return [e for e in self.recorded if e.source is not None]


async def check_driver_conformance(
        make_driver_and_peer: Callable[[], tuple[Driver, ConformancePeer]],
        *, exceptions: int = 5, limit_s: float = 120.0) -> dict[str, Any]:
    """Run the checks in the module docstring; raises AssertionError on the first violation.
    Returns a few figures for the caller's own asserts."""
    driver, peer = make_driver_and_peer()
    assert isinstance(driver, Driver), "does not implement drivers.base.Driver"
    sink = _CheckingSink(peer)
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.run)
        await nursery.start(driver.run, sink)
        await trio.sleep(peer.settle_s)  # discovery, online

        # 1 + 2: events out, each durable before the machine hears the acknowledgement.
        sink.gate = trio.Event()
        peer.raise_exception()
        await sink.until(lambda: sink.in_record, "record() of the first exception", limit_s)
        await trio.sleep(peer.settle_s)  # the machine must hear nothing meanwhile
        acked_while_held = peer.acknowledged()
        sink.gate.set()
        sink.gate = None
        for _ in range(exceptions - 1):
            peer.raise_exception()
        await sink.until(lambda: len(sink.exceptions()) >= exceptions, "exceptions", limit_s)
        await sink.until(lambda: len(sink.acked) >= exceptions, "acknowledgements", limit_s)

        # 3: a redelivery is acknowledged without being recorded again.
        recorded_before = len(sink.exceptions())
        sink.claim_redelivery = True
        peer.raise_exception()
        await sink.until(lambda: len(sink.acked) >= exceptions + 1, "redelivery ack", limit_s)
        assert len(sink.exceptions()) == recorded_before, "a redelivery was recorded again"
        assert sink.claimed, "the sink was never asked about a redelivery"
        assert sink.redelivered_events, "sink.redelivered() was not awaited for a redelivery"

        # 4: commands in.
        outcomes: dict[str, CommandOutcome] = {}
        for command, expected in ((MachineCommand("noSuchCommand", peer.address),
                                   CommandResult.REJECTED),
                                  (MachineCommand("disableMachine", 128), CommandResult.REJECTED),
                                  *((c, CommandResult.OK) for c in peer.commands)):
            with trio.fail_after(limit_s):
                outcome = await driver.execute(command)
            assert isinstance(outcome, CommandOutcome), f"{command.name}: {outcome!r}"
            assert outcome.result is expected, f"{command} -> {outcome}"
            outcomes[command.name] = outcome

        # 5: statistics out.
        stats = driver.statistics()
        assert isinstance(stats, PortStatistics) and stats.port == driver.port
        assert peer.address in stats.machines and stats.state == "running"
        nursery.cancel_scope.cancel()

    assert not sink.failures, sink.failures
    assert acked_while_held == 0, "acknowledged before record() returned"
    assert peer.acknowledged() >= exceptions + 1
    return {"recorded": len(sink.recorded), "exceptions": len(sink.exceptions()),
            "acknowledged": len(sink.acked), "outcomes": outcomes, "statistics": stats}
