"""A serial flood on one port (issue 15): a device that never stops sending must not starve the
other ports, which share the event loop. Port A's machine side writes garbage as fast as a
separate process can (a pty carries far more than any serial line); port B's machine must keep
being polled on time, and port A's driver keeps running, counting the bytes as garbage. (The
flood's CPU cost is a figure for bench/, not asserted here.)"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tty
from pathlib import Path

import trio

from drivers.link import open_link
from drivers.sas.driver import SasDriver, SasSettings
from drivers.sim.egm import SasEgm
from drivers.sim.ledger import Ledger
from drivers.sim.runner import run_egm
from tests.drivers.conftest import RecordingSink
from tests.gateway.test_diag_probe import StampedEgmLink

FLOOD_S = 2.0


class CountingEgmLink(StampedEgmLink):
    """Sets `under_way` once five polls reached the machine."""

    def __init__(self, fd: int, address: int) -> None:
        super().__init__(fd, address)
        self.under_way = trio.Event()

    async def receive_words(self) -> list[int]:
        words = await super().receive_words()
        if len(self.polls) >= 5:
            self.under_way.set()
        return words
FLOODER = ("import os, sys\nfd = int(sys.argv[1])\nos.set_blocking(fd, True)\n"
           "chunk = bytes(range(256)) * 256 + b'\\xff' * 4096\n"
           "print('flooding', flush=True)\n"
           "while True:\n    os.write(fd, chunk)\n")


async def test_a_flood_on_one_port_does_not_delay_another(tmp_path: Path) -> None:
    flooded_master, flooded_slave = os.openpty()
    machine_master, machine_slave = os.openpty()
    for fd in (flooded_master, flooded_slave, machine_master, machine_slave):
        tty.setraw(fd)
    machine = CountingEgmLink(machine_master, 1)
    settings = SasSettings(poll_interval_s=0.05, response_timeout_s=0.1)
    flooded = SasDriver("portA", lambda: open_link(os.ttyname(flooded_slave), lock_dir=tmp_path),
                        [1], settings)
    polled = SasDriver("portB", lambda: open_link(os.ttyname(machine_slave), lock_dir=tmp_path),
                       [1], settings)
    flooder = None
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_egm, SasEgm(1, Ledger(), chirp=False), machine)
                await nursery.start(flooded.run, RecordingSink())
                await nursery.start(polled.run, RecordingSink())
                await machine.under_way.wait()   # port B polled and answering
                flooder = await trio.lowlevel.open_process(
                    [sys.executable, "-c", FLOODER, str(flooded_master)],
                    pass_fds=[flooded_master], stdout=subprocess.PIPE)
                assert flooder.stdout is not None
                said = b""
                while not said.endswith(b"\n"):   # writing from now on
                    said += await flooder.stdout.receive_some()
                start = trio.current_time()
                await trio.sleep(FLOOD_S)   # the flood's length, not a wait for an event
                end = trio.current_time()
                garbage = flooded.statistics().machines[1]["garbage_bytes"]
                state = flooded.statistics().state
                nursery.cancel_scope.cancel()
    finally:
        if flooder is not None:
            flooder.kill()
            with trio.CancelScope(shield=True):
                await flooder.wait()
                await flooder.stdout.aclose()  # type: ignore[union-attr]
        await machine.aclose()
        for fd in (flooded_master, flooded_slave, machine_slave):
            os.close(fd)
    polls = [t for t in machine.polls if start <= t <= end]
    gaps = [b - a for a, b in itertools.pairwise([start, *polls, end])]
    # Polled every 50 ms (plus the answer): a 1 s gap would be twenty missed polls (the issue
    # measured 1.56 s; 0.07-0.2 s here on a loaded 2-core box). A loose bound: a shared box.
    assert max(gaps) < 1.0, f"port B waited {max(gaps):.2f} s during the flood"
    assert state == "running" and garbage > 100_000
    print(f"flood: {garbage} garbage bytes read on port A in {FLOOD_S} s; port B polled "
          f"{len(polls)} times, longest gap {max(gaps) * 1000:.0f} ms")
