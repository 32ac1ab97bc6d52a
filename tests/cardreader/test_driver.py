"""The trio shell: events recorded against the machine the reader sits beside, never
acknowledged, a lost reader reported and raised, the tap fed; over a memory link under the
autojump clock, and over pseudo-terminals with the simulated readers (unplug included)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from drivers.base import CommandResult, MachineCommand, MachineEvent, MachineRef, SourceRef
from drivers.cardreader.cardid import VenueSecret
from drivers.cardreader.driver import CardReaderDriver
from drivers.cardreader.link import open_reader_link
from drivers.cardreader.reader import ReaderSettings
from drivers.link import LinkBrokenError, LinkError
from drivers.link.memory import MemoryHostLink, memory_link_pair
from drivers.sim.cardreader import SimCard, SimReader, swipe_bytes
from drivers.sim.readers import serve_readers

SECRET = VenueSecret(b"\x11" * 32)
BESIDE = MachineRef("egm-1", 1)
ANNA = SimCard("6012345678901234", "PLAYER/ANNA", "04A1B2C3D4E5F6")


@dataclass
class Sink:
    recorded: list[MachineEvent] = field(default_factory=list)
    acked: list[MachineEvent] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    async def record(self, event: MachineEvent) -> None:
        self.recorded.append(event)
        self.changed.set()
        self.changed = trio.Event()

    def acknowledged(self, event: MachineEvent) -> None:
        self.acked.append(event)

    def is_redelivery(self, machine: MachineRef, source: SourceRef) -> bool:
        raise AssertionError("a card reader has no redelivery to ask about")

    async def redelivered(self, event: MachineEvent) -> None:
        raise AssertionError("a card reader has no redelivery")

    async def until(self, count: int) -> None:
        while len(self.recorded) < count:
            await self.changed.wait()


@dataclass
class Tap:
    received_bytes: bytes = b""

    def received(self, data: bytes) -> None:
        self.received_bytes += data


async def test_memory_link_swipes_unplug(autojump_clock: trio.abc.Clock) -> None:
    host_end, reader_end = memory_link_pair()

    async def opener() -> MemoryHostLink:
        return host_end

    tap = Tap()
    driver = CardReaderDriver("reader-1", opener, BESIDE, ReaderSettings(kind="insert"), SECRET,
                              tap=tap)
    sink = Sink()

    async def drive(task_status: trio.TaskStatus[None]) -> None:
        with pytest.raises(LinkBrokenError):
            await driver.run(sink, task_status=task_status)

    async with trio.open_nursery() as nursery:
        await nursery.start(drive)
        assert driver.statistics().state == "running"
        await reader_end.send(b"IN\r\n" + swipe_bytes(ANNA)[:10])
        await trio.sleep(0.01)
        await reader_end.send(swipe_bytes(ANNA)[10:])
        await sink.until(2)  # cardReaderOnline, cardInserted
        stats = driver.statistics()
        assert stats.machines[1]["card_present"] and stats.machines[1]["machine"] == "egm-1/1"
        await reader_end.aclose()  # unplugged with the card in
    online, inserted, removed, offline = sink.recorded
    assert (online.type, online.data, online.machine) == (
        "cardReaderOnline", {"reader": "reader-1"}, BESIDE)
    assert (offline.type, offline.data["reader"], offline.source) == (
        "cardReaderOffline", "reader-1", None)
    assert inserted.type == "cardInserted" and inserted.machine == BESIDE
    assert inserted.source is None and inserted.observed_at > 0
    assert removed.type == "cardRemoved" and removed.data["reason"] == "reader_offline"
    assert sink.acked == [] and driver.statistics().state == "down"
    assert tap.received_bytes == b"IN\r\n" + swipe_bytes(ANNA)


async def test_commands_are_rejected(autojump_clock: trio.abc.Clock) -> None:
    async def opener() -> MemoryHostLink:
        raise LinkBrokenError("never opened")

    driver = CardReaderDriver("reader-1", opener, BESIDE, ReaderSettings(), SECRET)
    outcome = await driver.execute(MachineCommand("disableMachine", 1))
    assert outcome.result is CommandResult.REJECTED and "no commands" in outcome.reason
    with pytest.raises(LinkError):
        await driver.run(Sink())
    assert driver.statistics().state == "down"


async def test_pty_readers_are_read_and_come_back_after_an_unplug(tmp_path: Path) -> None:
    # Real time, real ptys: a fast swipe reader that is unplugged now and then.
    sim = SimReader("swipe", seed=3, rate=20.0, faults=frozenset({"unplug"}), probability=0.05)
    sink = Sink()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            fleet = await nursery.start(lambda task_status: serve_readers(
                [sim], directory=tmp_path, unplugged_s=0.05, task_status=task_status))
            path = fleet.device_paths[0]
            driver = CardReaderDriver(
                "reader-0", lambda: open_reader_link(path, lock_dir=tmp_path), BESIDE,
                ReaderSettings(debounce_s=0.0), SECRET)
            reads_after_replug = 0
            while reads_after_replug < 3:
                try:
                    await driver.run(sink)
                except LinkError:
                    if fleet.plugs[0] >= 2:
                        reads_after_replug = sum(e.type == "cardRead" for e in sink.recorded)
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    assert fleet.plugs[0] >= 2
    assert all(e.machine == BESIDE and e.source is None for e in sink.recorded)


async def test_readers_play_only_once_started(tmp_path: Path) -> None:
    # The demo starts play once the gateway has the port open: bytes before would be flushed.
    sim = SimReader("swipe", seed=4, rate=50.0)
    sim.stop()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            fleet = await nursery.start(lambda task_status: serve_readers(
                [sim], directory=tmp_path, task_status=task_status))
            link = await open_reader_link(fleet.device_paths[0], lock_dir=tmp_path)
            async with link:
                with trio.move_on_after(0.3) as quiet:
                    await link.receive_some()
                assert quiet.cancelled_caught, "a stopped reader wrote"
                fleet.start_play()
                assert (await link.receive_some())[:1] in (b"%", b";")
            nursery.cancel_scope.cancel()
