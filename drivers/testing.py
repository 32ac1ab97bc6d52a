"""The conformance check every machine-protocol driver must pass (drivers/base.py); the checklist
of docs/drivers.md.

`check_driver_conformance(make_driver_and_peer, parts=SPEC.capabilities)` runs a driver against a
peer (a simulated machine on an in-process link) and checks the contract the gateway relies on,
without knowing the protocol. Always:

1. Events out: what the machine reports arrives at `EventSink.record` as `MachineEvent`s with a
   catalogue-shaped type.
2. Statistics out: `statistics()` is cheap, synchronous, names the port and every machine.

And for each part of the contract the driver claims (`Capability`), exercised for real -- a
claimed part that the run could not exercise fails, it never passes vacuously:

- ACKS: while `record` has not returned the machine is not acknowledged; `acknowledged` comes
  once for each event whose `record` returned (or that the sink called a redelivery), and the
  peer counts every acknowledgement.
- REDELIVERY: an event the sink calls a redelivery is not recorded again, `redelivered` is
  awaited first, and the machine is acknowledged.
- COMMANDS: `execute` returns a `CommandOutcome` and never raises; unknown commands and unknown
  addresses are REJECTED; the peer's `commands` (at least one) all come back OK.
- METERS: `read_meters` answers for the peer's machine with at least one `MeterName`, and
  raises LookupError for an address not on the port.

A part the driver does not claim is checked the other way: no `acknowledged` call without ACKS,
no redelivery question without REDELIVERY, every command REJECTED without COMMANDS. The result
says which parts were exercised (`ConformanceReport.exercised`) and how.

The check is async and uses trio sleeps only, so run it under the autojump clock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from drivers.base import (
    Capability,
    CommandOutcome,
    CommandResult,
    Driver,
    MachineCommand,
    MachineEvent,
    MachineRef,
    MeterName,
    MeterReading,
    MeterSource,
    PortStatistics,
    SourceRef,
)

__all__ = ["ConformancePeer", "ConformanceReport", "check_driver_conformance"]


@dataclass
class ConformancePeer:
    """The machine side, as the check needs it.

    `run(task_status)` serves the machine until cancelled; `raise_exception()` makes it report one
    event (with ACKS: one that waits for an acknowledgement); `acknowledged()` counts the events
    the machine has seen acknowledged (required with ACKS); `commands` are commands this driver
    supports that must come back OK (at least one with COMMANDS).
    """

    address: int
    run: Callable[..., Awaitable[None]]
    raise_exception: Callable[[], None]
    acknowledged: Callable[[], int] | None = None
    commands: Sequence[MachineCommand] = ()
    settle_s: float = 5.0


@dataclass(frozen=True)
class ConformanceReport:
    """What the run showed: the parts claimed, the parts exercised (equal when it passed), one
    line per part saying how, and figures for the caller's own asserts."""

    claimed: frozenset[Capability]
    exercised: frozenset[Capability]
    how: dict[str, str]
    recorded: int
    acknowledged: int
    outcomes: dict[str, CommandOutcome]
    statistics: PortStatistics
    meters: MeterReading | None

    def __getitem__(self, name: str) -> Any:
        """Figures by name, as the check returned them before it had a report."""
        return getattr(self, name)

    def summary(self) -> str:
        return "; ".join(f"{part}: {line}" for part, line in self.how.items())


@dataclass
class _CheckingSink:
    peer: ConformancePeer
    recorded: list[MachineEvent] = field(default_factory=list)
    acked: list[MachineEvent] = field(default_factory=list)
    claimed: list[MachineEvent] = field(default_factory=list)  # redeliveries claimed
    asked: int = 0  # is_redelivery calls
    claim_redelivery: bool = False
    gate: trio.Event | None = None
    in_record: bool = False
    changed: trio.Event = field(default_factory=trio.Event)
    failures: list[str] = field(default_factory=list)
    redelivered_events: list[MachineEvent] = field(default_factory=list)

    def _poke(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def _acks(self) -> int:
        return self.peer.acknowledged() if self.peer.acknowledged is not None else 0

    async def record(self, event: MachineEvent) -> None:
        if not isinstance(event, MachineEvent) or not event.type or not event.type[0].islower():
            self.failures.append(f"not a catalogue MachineEvent: {event!r}")
        before = self._acks()
        self.in_record = event.source is not None
        self._poke()
        if self.gate is not None and event.source is not None:
            await self.gate.wait()  # the gateway is slow to make it durable
        if self._acks() != before:
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
        self.asked += 1
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


async def _events_with_acks(sink: _CheckingSink, peer: ConformancePeer, exceptions: int,
                            limit_s: float) -> str:
    """ACKS: each exception durable before the machine hears the acknowledgement."""
    sink.gate = trio.Event()
    peer.raise_exception()
    await sink.until(lambda: sink.in_record, "record() of the first exception", limit_s)
    await trio.sleep(peer.settle_s)  # the machine must hear nothing meanwhile
    assert sink._acks() == 0, "acknowledged before record() returned"
    sink.gate.set()
    sink.gate = None
    for _ in range(exceptions - 1):
        peer.raise_exception()
    await sink.until(lambda: len(sink.exceptions()) >= exceptions, "exceptions", limit_s)
    await sink.until(lambda: len(sink.acked) >= exceptions, "acknowledgements", limit_s)
    assert sink._acks() >= exceptions, "the machine did not see the acknowledgements"
    return (f"exercised: {exceptions} exceptions held until durable, then acknowledged "
            f"({sink._acks()} seen by the machine)")


async def _redelivery(sink: _CheckingSink, peer: ConformancePeer, exceptions: int,
                      limit_s: float) -> str:
    recorded_before = len(sink.exceptions())
    acked_before = len(sink.acked)
    sink.claim_redelivery = True
    peer.raise_exception()
    await sink.until(lambda: len(sink.acked) > acked_before, "redelivery ack", limit_s)
    assert sink.claimed, "the sink was never asked about a redelivery"
    assert len(sink.exceptions()) == recorded_before, "a redelivery was recorded again"
    assert sink.redelivered_events, "sink.redelivered() was not awaited for a redelivery"
    return "exercised: a claimed redelivery was acknowledged without a second record"


async def _commands(driver: Driver, peer: ConformancePeer, claimed: bool,
                    limit_s: float) -> tuple[dict[str, CommandOutcome], str]:
    cases: list[tuple[MachineCommand, CommandResult]] = [
        (MachineCommand("noSuchCommand", peer.address), CommandResult.REJECTED),
        (MachineCommand("disableMachine", 128), CommandResult.REJECTED)]
    expected_ok = CommandResult.OK if claimed else CommandResult.REJECTED
    cases += [(c, expected_ok) for c in peer.commands or [MachineCommand("disableMachine",
                                                                         peer.address)]]
    outcomes: dict[str, CommandOutcome] = {}
    for command, expected in cases:
        with trio.fail_after(limit_s):
            outcome = await driver.execute(command)
        assert isinstance(outcome, CommandOutcome), f"{command.name}: {outcome!r}"
        assert outcome.result is expected, f"{command} -> {outcome}"
        outcomes[command.name] = outcome
    if claimed:
        return outcomes, f"exercised: {len(peer.commands)} commands OK, unknown ones REJECTED"
    return outcomes, "not claimed: every command REJECTED"


async def _meters(driver: Driver, peer: ConformancePeer, limit_s: float) -> MeterReading:
    assert isinstance(driver, MeterSource), "METERS claimed but the driver has no read_meters"
    with trio.fail_after(limit_s):
        reading = await driver.read_meters(peer.address)
    assert isinstance(reading, MeterReading), f"read_meters returned {reading!r}"
    assert reading.machine.address == peer.address and reading.machine.port == driver.port
    assert reading.values, "METERS claimed but the machine's reading holds no meter"
    assert all(isinstance(k, MeterName) and isinstance(v, int) and not isinstance(v, bool)
               for k, v in reading.values.items()), reading.values
    try:
        with trio.fail_after(limit_s):
            await driver.read_meters(128)
    except LookupError:
        pass
    else:
        raise AssertionError("read_meters for an address not on the port did not raise "
                             "LookupError")
    return reading


async def check_driver_conformance(
        make_driver_and_peer: Callable[[], tuple[Driver, ConformancePeer]],
        *, parts: Collection[Capability] = frozenset(Capability), exceptions: int = 5,
        limit_s: float = 120.0) -> ConformanceReport:
    """Run the checks in the module docstring for the claimed `parts` (the driver's
    `DriverSpec.capabilities`); raises AssertionError on the first violation."""
    claimed = frozenset(parts)
    if Capability.REDELIVERY in claimed and Capability.ACKS not in claimed:
        raise AssertionError("REDELIVERY without ACKS: only an unacknowledged event is re-sent")
    driver, peer = make_driver_and_peer()
    assert isinstance(driver, Driver), "does not implement drivers.base.Driver"
    if Capability.ACKS in claimed:
        assert peer.acknowledged is not None, "ACKS claimed: the peer must count acknowledgements"
    if Capability.COMMANDS in claimed:
        assert peer.commands, "COMMANDS claimed but the peer names no command to run"
    sink = _CheckingSink(peer)
    how: dict[str, str] = {}
    try:
        outcomes, meters, stats = await _run(driver, peer, sink, claimed, how, exceptions,
                                             limit_s)
    except BaseExceptionGroup as group:
        # The driver and the peer run in a nursery: say what failed, not "1 sub-exception".
        first = _first_assertion(group)
        if first is None:
            raise
        raise first from group
    assert not sink.failures, sink.failures
    if Capability.ACKS not in claimed:
        assert not sink.acked, "ACKS not claimed, yet the driver called acknowledged()"
    if Capability.REDELIVERY not in claimed:
        assert not sink.asked and not sink.redelivered_events, (
            "REDELIVERY not claimed, yet the driver asked is_redelivery() or redelivered()")
    exercised = frozenset(p for p in claimed if how[p].startswith("exercised"))
    assert exercised == claimed, f"claimed but not exercised: {sorted(claimed - exercised)}"
    return ConformanceReport(claimed, exercised, how, len(sink.recorded), len(sink.acked),
                             outcomes, stats, meters)


def _first_assertion(group: BaseExceptionGroup[Any]) -> AssertionError | None:
    for exc in group.exceptions:
        if isinstance(exc, AssertionError):
            return exc
        if isinstance(exc, BaseExceptionGroup) and (found := _first_assertion(exc)):
            return found
    return None


async def _run(driver: Driver, peer: ConformancePeer, sink: _CheckingSink,
               claimed: frozenset[Capability], how: dict[str, str], exceptions: int,
               limit_s: float) -> tuple[dict[str, CommandOutcome], MeterReading | None,
                                        PortStatistics]:
    meters: MeterReading | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.run)
        await nursery.start(driver.run, sink)
        await trio.sleep(peer.settle_s)  # discovery, online

        if Capability.ACKS in claimed:
            how[Capability.ACKS] = await _events_with_acks(sink, peer, exceptions, limit_s)
        else:
            before = len(sink.recorded)
            for _ in range(exceptions):
                peer.raise_exception()
            await sink.until(lambda: len(sink.recorded) >= before + exceptions, "events",
                             limit_s)
            how[Capability.ACKS] = f"not claimed: {exceptions} events recorded, none acknowledged"
        if Capability.REDELIVERY in claimed:
            how[Capability.REDELIVERY] = await _redelivery(sink, peer, exceptions, limit_s)
        else:
            how[Capability.REDELIVERY] = "not claimed: never asked whether an event re-sends"
        outcomes, how[Capability.COMMANDS] = await _commands(
            driver, peer, Capability.COMMANDS in claimed, limit_s)
        if Capability.METERS in claimed:
            meters = await _meters(driver, peer, limit_s)
            how[Capability.METERS] = f"exercised: {len(meters.values)} meters read"
        else:
            how[Capability.METERS] = "not claimed"

        stats = driver.statistics()
        assert isinstance(stats, PortStatistics) and stats.port == driver.port
        assert peer.address in stats.machines and stats.state == "running"
        nursery.cancel_scope.cancel()
    return outcomes, meters, stats
