"""The card reader passes the driver conformance check (drivers/testing.py) with the parts it
registers -- none: the report says acknowledgement, redelivery, commands and meters are "not
claimed", not "passed" -- and it could not pass claiming ACKS, since a reader never waits for one."""

from __future__ import annotations

import itertools

import pytest
import trio

from drivers.base import Capability, MachineCommand, MachineRef
from drivers.cardreader.cardid import VenueSecret
from drivers.cardreader.driver import CardReaderDriver
from drivers.cardreader.reader import ReaderSettings
from drivers.cardreader.spec import SPEC
from drivers.link.memory import MemoryHostLink, memory_link_pair
from drivers.sim.cardreader import SimReader, swipe_bytes
from drivers.testing import ConformancePeer, check_driver_conformance


def _reader_and_peer(*, counts_acks: bool = False) -> tuple[CardReaderDriver, ConformancePeer]:
    host_end, reader_end = memory_link_pair()
    cards = itertools.cycle(SimReader("swipe", seed=9, cards=20).pool)
    to_send, queued = trio.open_memory_channel[bytes](100)

    async def opener() -> MemoryHostLink:
        return host_end

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for data in queued:
            await reader_end.send(data)

    def swipe() -> None:
        to_send.send_nowait(swipe_bytes(next(cards)))  # a new player each time: no bounce

    driver = CardReaderDriver("reader-1", opener, MachineRef("egm-1", 1),
                              ReaderSettings(kind="swipe"), VenueSecret(b"\x42" * 32))
    return driver, ConformancePeer(1, run, swipe, (lambda: 0) if counts_acks else None,
                                   [MachineCommand("disableMachine", 1)])


async def test_card_reader_conforms_with_what_it_claims(autojump_clock: trio.abc.Clock) -> None:
    assert SPEC.capabilities == frozenset()
    report = await check_driver_conformance(_reader_and_peer, parts=SPEC.capabilities)
    assert report.claimed == report.exercised == frozenset()
    assert report.recorded >= 5 and report.acknowledged == 0
    for part in Capability:
        assert report.how[part].startswith("not claimed"), report.how
    assert report.statistics.machines[1]["reads"] >= 5


@pytest.mark.parametrize(("part", "words"), [
    # Its events carry no SourceRef: nothing ever waits for an acknowledgement.
    (Capability.ACKS, "timed out waiting for record\\(\\) of the first exception"),
    (Capability.COMMANDS, "disableMachine.*rejected"),
])
async def test_a_reader_claiming_more_fails(part: Capability, words: str,
                                            autojump_clock: trio.abc.Clock) -> None:
    with pytest.raises(AssertionError, match=words):
        await check_driver_conformance(lambda: _reader_and_peer(counts_acks=True),
                                       parts={part}, limit_s=30)
