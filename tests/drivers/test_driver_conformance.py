"""The driver conformance check (drivers/testing.py) for SasDriver over the memory link with the
simulator, under the autojump clock, in RTE and normal mode."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import trio

from drivers.base import Capability, MachineCommand, MeterName
from drivers.link.memory import MemoryHostLink, memory_link_pair
from drivers.sas.codes import Exc
from drivers.sas.driver import SasDriver, SasSettings
from drivers.sas.spec import SPEC
from drivers.sim.egm import SasEgm
from drivers.sim.ledger import Ledger
from drivers.sim.machine import PlayModel
from drivers.sim.runner import run_egm
from drivers.testing import ConformancePeer, check_driver_conformance


def _sas_driver_and_peer(rte: bool) -> tuple[SasDriver, ConformancePeer]:
    host_end, egm_end = memory_link_pair()
    egm = SasEgm(1, Ledger(), play=PlayModel(0, 0.0), serial="CONF1")
    bills = iter(range(10**6))

    async def opener() -> MemoryHostLink:
        return host_end

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await run_egm(egm, egm_end, task_status=task_status)

    def raise_exception() -> None:
        # Distinct payloads in RTE mode (a real 4F carries the lifetime count).
        n = next(bills)
        data = bytes([0x01, 0x02]) + n.to_bytes(4, "big") if rte else b""
        egm.raise_exception(Exc.BILL_ACCEPTED if rte else Exc.BILL_5, data,
                            trio.current_time())

    def acknowledged() -> int:
        return sum(e.acknowledged_at is not None for e in egm.ledger.entries)

    commands = [MachineCommand("requestMeters", 1),
                MachineCommand("setClock", 1, {"time": "2026-11-21T07:30:00Z"}),
                MachineCommand("disableMachine", 1), MachineCommand("enableMachine", 1)]
    driver = SasDriver("conf", opener, [1], SasSettings(rte=rte))
    return driver, ConformancePeer(1, run, raise_exception, acknowledged, commands)


@pytest.mark.parametrize("rte", [True, False])
async def test_sas_driver_conforms(rte: bool, autojump_clock: trio.abc.Clock) -> None:
    report = await check_driver_conformance(lambda: _sas_driver_and_peer(rte),
                                            parts=SPEC.capabilities)
    assert report.exercised == report.claimed == frozenset(Capability)
    assert "exercised" in report.summary() and "not claimed" not in report.summary()
    meters = report.outcomes["requestMeters"].data["meters"]
    assert {"coin_in", "coin_out", "games_played"} <= set(meters)
    assert report.meters is not None
    assert {MeterName.COIN_IN_CREDITS, MeterName.GAMES_PLAYED} <= set(report.meters.values)
    assert report.statistics.machines[1]["serial"] == "CONF1"


class _SinkFilter:
    """Wraps a driver so that its sink is altered: a driver that breaks one claimed part."""

    def __init__(self, inner: SasDriver, *, acks: bool = True, asks: bool = True) -> None:
        self._inner, self._acks, self._asks = inner, acks, asks
        self.port = inner.port
        self.execute, self.statistics = inner.execute, inner.statistics
        self.read_meters = inner.read_meters

    async def run(self, sink: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        outer = self

        class Filtered:
            record, redelivered = sink.record, sink.redelivered

            def acknowledged(self, event: Any) -> None:
                if outer._acks:
                    sink.acknowledged(event)

            def is_redelivery(self, machine: Any, source: Any) -> bool:
                return sink.is_redelivery(machine, source) if outer._asks else False

        await self._inner.run(Filtered(), task_status=task_status)


@pytest.mark.parametrize(("broken", "parts", "words"), [
    ({"asks": False}, frozenset(Capability), "never asked about a redelivery"),
    ({"acks": False}, frozenset(Capability), "timed out waiting for acknowledgements"),
    # Claiming less than the driver does is caught too: it acknowledges without claiming ACKS.
    ({}, frozenset({Capability.COMMANDS}), "ACKS not claimed"),
])
async def test_a_claimed_part_never_passes_vacuously(broken: dict[str, bool],
                                                      parts: frozenset[Capability], words: str,
                                                      autojump_clock: trio.abc.Clock) -> None:
    def make() -> tuple[Any, ConformancePeer]:
        driver, peer = _sas_driver_and_peer(rte=True)
        return _SinkFilter(driver, **broken), peer

    with pytest.raises(AssertionError, match=words):
        await check_driver_conformance(make, parts=parts, limit_s=30)


async def test_claimed_commands_need_a_command_to_run(autojump_clock: trio.abc.Clock) -> None:
    def make() -> tuple[SasDriver, ConformancePeer]:
        driver, peer = _sas_driver_and_peer(rte=True)
        return driver, replace(peer, commands=())

    with pytest.raises(AssertionError, match="names no command"):
        await check_driver_conformance(make, parts=SPEC.capabilities)


async def test_sas_commands_set_clock_and_handpay_reset(autojump_clock: trio.abc.Clock) -> None:
    driver, peer = _sas_driver_and_peer(rte=True)
    from drivers.base import CommandResult

    from .conftest import RecordingSink

    sink = RecordingSink()
    async with trio.open_nursery() as nursery:
        await nursery.start(peer.run)
        await nursery.start(driver.run, sink)
        await trio.sleep(5)
        ok = await driver.execute(MachineCommand("setClock", 1, {"time": "2030-05-06T07:08:09Z"}))
        assert ok.result is CommandResult.OK
        bad = await driver.execute(MachineCommand("setClock", 1, {"time": "yesterday"}))
        assert bad.result is CommandResult.REJECTED
        none = await driver.execute(MachineCommand("remoteHandpayReset", 1))
        assert none.result is CommandResult.FAILED and none.reason == "not in handpay"
        nursery.cancel_scope.cancel()
