"""Runs one simulated EGM on the machine end of a link."""

from __future__ import annotations

import math

import trio

from drivers.link import EgmLink
from drivers.sim.egm import SasEgm

__all__ = ["run_egm"]


async def run_egm(egm: SasEgm, link: EgmLink, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer polls and raise play exceptions until cancelled or the link breaks."""
    task_status.started()
    while True:
        egm.handle_timer(trio.current_time())
        due = egm.get_timer()
        out = b""
        with trio.move_on_at(math.inf if due is None else due):
            words = await link.receive_words()
            out = egm.receive_words(words, trio.current_time())
        # Outside the play-timer scope: an answer must never be cut off by it.
        chirps = egm.take_words()
        if chirps:
            await link.send_words(chirps)
        if out:
            if egm.answer_delay:
                delay, egm.answer_delay = egm.answer_delay, 0.0
                await trio.sleep(delay)
            if egm.answer_split is not None:
                (cut, gap), egm.answer_split = egm.answer_split, None
                await link.send(out[:cut])
                await trio.sleep(gap)
                out = out[cut:]
            await link.send(out)
