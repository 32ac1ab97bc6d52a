"""Simulated serial lines for lifecycle tests and the multi-drop bench.

* `run_line` answers polls for several machines on one link (a multi-drop line): every word
  reaches every machine, as on a real daisy chain; an address with no machine is a dead one.
* `PluggablePort` is a device path (a symlink, as /dev/serial/by-id/... names are) whose
  machine side can vanish (`unplug`: the pty is closed, the host reads EIO) and come back on a
  new pty, with the same machines or others (`plug`): a replug, or a machine swapped.
"""

from __future__ import annotations

import math
import os
import tty
from collections.abc import Sequence
from pathlib import Path

import trio

from drivers.link import EgmLink
from drivers.link.tty import PtyEgmLink
from drivers.sim.egm import SasEgm
from drivers.sim.runner import answer_is_late

__all__ = ["PluggablePort", "run_line"]


async def run_line(egms: Sequence[SasEgm], link: EgmLink, *,
                   task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer polls for every machine in `egms` on one link until cancelled or it breaks. At
    most one machine answers a poll (each only its own address), so answers never collide. An
    answer that could only go out late is lost instead (SasEgm.answer_late)."""
    task_status.started()
    while True:
        now = trio.current_time()
        for egm in egms:
            egm.handle_timer(now)
        timers = [t for egm in egms if (t := egm.get_timer()) is not None]
        replies: list[tuple[SasEgm, bytes]] = []
        heard_at = math.inf
        with trio.move_on_at(min(timers, default=math.inf)):
            words = await link.receive_words()
            heard_at = trio.current_time()
            replies = [(egm, out) for egm in egms if (out := egm.receive_words(words, heard_at))]
        for egm in egms:
            chirps = egm.take_words()
            if chirps:
                await link.send_words(chirps)
        if replies and answer_is_late(link, heard_at):
            for egm, _ in replies:
                egm.answer_late()   # lost on the line (runner.answer_is_late)
            replies = []
        for egm, out in replies:
            if egm.answer_delay:
                delay, egm.answer_delay = egm.answer_delay, 0.0
                await trio.sleep(delay)
            await link.send(out)


class PluggablePort:
    """The machine side of `path`. `plug` serves `egms` behind it on a fresh pty and points
    the symlink there; `unplug` makes the device vanish. Start with `async with`, inside a
    nursery that outlives it."""

    def __init__(self, path: Path, nursery: trio.Nursery) -> None:
        self.path = path
        self._nursery = nursery
        self._scope: trio.CancelScope | None = None
        self._done: trio.Event | None = None
        self.plugs = 0

    async def plug(self, egms: Sequence[SasEgm]) -> str:
        """Serve `egms` on a new pty; returns the pty's own path."""
        await self.unplug()
        master, slave = os.openpty()
        tty.setraw(master)
        tty.setraw(slave)
        # Our copy of the slave keeps the master from reading EIO while no host has it open.
        target = os.ttyname(slave)
        link = PtyEgmLink(master)
        scope = self._scope = trio.CancelScope()
        done = self._done = trio.Event()

        async def serve() -> None:
            try:
                with scope:
                    await run_line(egms, link)
            finally:
                with trio.CancelScope(shield=True):
                    await link.aclose()  # closes the master: the host side reads EIO
                os.close(slave)
                done.set()

        self._nursery.start_soon(serve)
        staged = self.path.with_name(self.path.name + ".new")
        staged.unlink(missing_ok=True)
        staged.symlink_to(target)
        os.replace(staged, self.path)  # atomic: udev re-points by-id links the same way
        self.plugs += 1
        await trio.lowlevel.checkpoint()
        return target

    async def unplug(self) -> None:
        """The device vanishes: its machines stop, the pty closes (the host reads EIO)."""
        if self._scope is not None and self._done is not None:
            self._scope.cancel()
            await self._done.wait()
        self._scope = self._done = None
        await trio.lowlevel.checkpoint()

    async def __aenter__(self) -> PluggablePort:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.unplug()
