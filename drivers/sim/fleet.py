"""A fleet of simulated machines on pseudo-terminals, for the demo and end-to-end tests.

Each machine (address 1) runs on a pty master; a gateway opens the slave path like any serial
device, and the PARMRK encoding carries the wakeup bit (docs/sas.md, "Links and the ninth bit").
"""

from __future__ import annotations

import os
import tty
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from drivers.link.tty import PtyEgmLink
from drivers.sas.codes import DENOMINATION_CENTS
from drivers.sas.messages import GameConfig
from drivers.sim.egm import PROFILES as MACHINE_PROFILES
from drivers.sim.egm import SasEgm
from drivers.sim.faults import FaultPlan
from drivers.sim.ledger import Ledger
from drivers.sim.machine import PlayModel
from drivers.sim.runner import run_egm

__all__ = ["SimFleet", "serve_fleet"]


@dataclass(slots=True)
class SimFleet:
    device_paths: list[str] = field(default_factory=list)
    machines: list[SasEgm] = field(default_factory=list)
    _changed: trio.Event = field(default_factory=trio.Event)

    def stop_play(self) -> None:
        """Machines stop generating new exceptions; queued ones are still reported."""
        for egm in self.machines:
            if egm.play is not None:
                egm.play.stop()

    def _ledger_changed(self) -> None:
        self._changed.set()

    async def wait_all_acknowledged(self) -> None:
        """Return once every raised exception was acknowledged (or lost by overflow)."""
        while any(egm.ledger.pending() for egm in self.machines):
            self._changed = trio.Event()
            await self._changed.wait()

    def acknowledged_codes(self, device_path: str) -> list[int]:
        """Codes the machine on `device_path` saw acknowledged, in acknowledgement order."""
        egm = self.machines[self.device_paths.index(device_path)]
        acked = [e for e in egm.ledger.entries if e.acknowledged_at is not None]
        return [e.code for e in sorted(acked, key=lambda e: e.acknowledged_at or 0.0)]

    def lost_by_overflow(self, device_path: str) -> int:
        """Exceptions the machine on `device_path` dropped from its full queue."""
        egm = self.machines[self.device_paths.index(device_path)]
        return sum(e.lost for e in egm.ledger.entries)

    def summary(self) -> dict[str, Any]:
        totals = {"raised": 0, "acknowledged": 0, "pending": 0, "lost_by_overflow": 0}
        for egm in self.machines:
            for key, value in egm.ledger.summary().items():
                totals[key] += value
        return totals


def _open_pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    return master, slave, os.ttyname(slave)


async def serve_fleet(count: int, *, rte: bool = True, seed: int = 0,
                      events_per_second: float = 2.0, faults: Sequence[str] = (),
                      fault_probability: float = 0.02, profile: str = "storm",
                      machine_profile: str = "default",
                      task_status: trio.TaskStatus[SimFleet] = trio.TASK_STATUS_IGNORED) -> None:
    """Run `count` simulated machines on fresh ptys until cancelled; `rte` False makes them ignore
    LP 0E (no RTE support). `faults` names fault kinds (faults.FAULT_KINDS) injected with
    `fault_probability`; `profile` names the play profile (machine.PROFILES: storm or floor)
    and `machine_profile` the vendor behaviours (egm.PROFILES). The slave fds stay
    open here so that a master never reads EIO while no gateway has the device open."""
    fleet = SimFleet()
    fds: list[int] = []
    config = GameConfig(denomination_code=0x01)
    try:
        async with trio.open_nursery() as nursery:
            for n in range(count):
                master, slave, path = _open_pty()
                fds += (master, slave)
                play = PlayModel(seed * 1000 + n, events_per_second,
                                 denom_cents=DENOMINATION_CENTS[config.denomination_code],
                                 start=trio.current_time(), profile=profile)
                egm = SasEgm(1, Ledger(on_change=fleet._ledger_changed), play=play, config=config,
                             serial=f"SIM{seed:03d}{n:04d}", rte_capable=rte,
                             faults=FaultPlan(frozenset(faults), fault_probability,
                                              seed=seed * 1000 + n),
                             profile=MACHINE_PROFILES[machine_profile])
                fleet.machines.append(egm)
                fleet.device_paths.append(path)
                nursery.start_soon(run_egm, egm, PtyEgmLink(master))
            task_status.started(fleet)
    finally:
        for fd in fds:
            os.close(fd)
