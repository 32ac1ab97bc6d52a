"""Runs one simulated EGM on the machine end of a link."""

from __future__ import annotations

import math

import trio

from drivers.link import EgmLink
from drivers.sim.egm import SasEgm

__all__ = ["ANSWER_WINDOW_S", "answer_is_late", "run_egm"]

# Reference 2.1: a machine starts its answer within 20 ms of the poll. Hardware always does; a
# simulator process on a loaded host may not be scheduled that soon.
ANSWER_WINDOW_S = 0.020


def answer_is_late(link: EgmLink, heard_at: float) -> bool:
    """Whether an answer to words received at `heard_at` (trio clock) would go out late: past
    the answer window, or with the host's next frame already waiting behind the poll (the host
    has given the poll up, and would take the answer for the next one's). Under the autojump
    clock no time passes here: only a frame already waiting makes an answer late there."""
    return trio.current_time() - heard_at > ANSWER_WINDOW_S or link.input_waiting()


async def run_egm(egm: SasEgm, link: EgmLink, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Answer polls and raise play exceptions until cancelled or the link breaks. An answer
    that could only go out late is lost instead (SasEgm.answer_late)."""
    task_status.started()
    while True:
        egm.handle_timer(trio.current_time())
        due = egm.get_timer()
        out = b""
        heard_at = math.inf
        with trio.move_on_at(math.inf if due is None else due):
            words = await link.receive_words()
            heard_at = trio.current_time()
            out = egm.receive_words(words, heard_at)
        # Outside the play-timer scope: an answer must never be cut off by it.
        chirps = egm.take_words()
        if chirps:
            await link.send_words(chirps)
        if out and answer_is_late(link, heard_at):
            egm.answer_late()
            out = b""
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
