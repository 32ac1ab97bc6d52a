"""The driver conformance check (drivers/testing.py) for SasDriver over the memory link with the
simulator, under the autojump clock, in RTE and normal mode."""

from __future__ import annotations

import pytest
import trio

from drivers.base import MachineCommand
from drivers.link.memory import MemoryHostLink, memory_link_pair
from drivers.sas.codes import Exc
from drivers.sas.driver import SasDriver, SasSettings
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
    figures = await check_driver_conformance(lambda: _sas_driver_and_peer(rte))
    meters = figures["outcomes"]["requestMeters"].data["meters"]
    assert {"coin_in", "coin_out", "games_played"} <= set(meters)
    assert figures["statistics"].machines[1]["serial"] == "CONF1"


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
