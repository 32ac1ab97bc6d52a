"""SasDriver in trio: over the memory link under the autojump clock, and end to end over a real
pseudo-terminal (PARMRK encoding) under fail_after."""

from __future__ import annotations

import os
from collections import Counter

import pytest
import trio

from drivers.base import CommandResult, Driver, MachineCommand
from drivers.link import LinkBrokenError, TxFrame, open_link
from drivers.link.memory import MemoryHostLink, memory_link_pair
from drivers.link.parmrk import ParmrkDecoder, encode
from drivers.link.tty import PtyEgmLink, is_pty
from drivers.sas.driver import SasDriver, SasSettings
from drivers.sim.egm import SasEgm
from drivers.sim.fleet import serve_fleet
from drivers.sim.ledger import Ledger
from drivers.sim.machine import PlayModel
from drivers.sim.runner import run_egm

from .conftest import RecordingSink


async def test_driver_memory_link_records_everything_once(autojump_clock: trio.abc.Clock) -> None:
    host_end, egm_end = memory_link_pair()
    sink = RecordingSink()
    egm = SasEgm(1, Ledger(sink.waiter.poke), play=PlayModel(7, 2.0), serial="MEM1")

    def durable_before_ack(event: object) -> None:
        acked = sum(e.acknowledged_at is not None for e in egm.ledger.entries)
        assert acked == len(sink.acknowledged_events)

    sink.on_record = durable_before_ack

    async def opener() -> MemoryHostLink:
        return host_end

    driver = SasDriver("mem0", opener, [1])
    assert isinstance(driver, Driver)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_egm, egm, egm_end)
        await nursery.start(driver.run, sink)
        await trio.sleep(120)
        outcome = await driver.execute(MachineCommand("disableMachine", 1))
        assert outcome.result is CommandResult.OK and not egm.enabled
        outcome = await driver.execute(MachineCommand("enableMachine", 1))
        assert outcome.result is CommandResult.OK and egm.enabled
        rejected = await driver.execute(MachineCommand("setClock", 1))
        assert rejected.result is CommandResult.REJECTED
        unknown = await driver.execute(MachineCommand("disableMachine", 9))
        assert unknown.result is CommandResult.REJECTED
        egm.play.stop()
        await sink.waiter.until(lambda: not egm.ledger.pending())
        await trio.sleep(1)
        stats = driver.statistics()
        nursery.cancel_scope.cancel()
    exceptions = sink.exceptions()
    assert len(exceptions) > 100
    assert [(e.source.code, e.source.payload) for e in exceptions] == [
        (e.code, e.data) for e in egm.ledger.entries]
    assert sink.acknowledged_events == exceptions
    assert sink.recorded[0].type == "deviceOnline"
    assert all(e.observed_at > 0 for e in sink.recorded)
    assert stats.state == "running" and stats.machines[1]["serial"] == "MEM1"
    assert stats.machines[1]["latency_p99_s"] is not None


async def test_redelivery_is_acknowledged_without_recording(
        autojump_clock: trio.abc.Clock) -> None:
    host_end, egm_end = memory_link_pair()
    sink = RecordingSink(claim={(0x11, b"")})
    egm = SasEgm(1, Ledger(sink.waiter.poke))
    egm.raise_exception(0x11, b"", 0.0)

    async def opener() -> MemoryHostLink:
        return host_end

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_egm, egm, egm_end)
        await nursery.start(SasDriver("mem0", opener, [1]).run, sink)
        await sink.waiter.until(lambda: not egm.ledger.pending())
        nursery.cancel_scope.cancel()
    assert sink.exceptions() == []
    assert [e.source.code for e in sink.acknowledged_events] == [0x11]


async def test_offline_and_link_close(autojump_clock: trio.abc.Clock) -> None:
    host_end, egm_end = memory_link_pair()
    sink = RecordingSink()

    async def opener() -> MemoryHostLink:
        return host_end

    driver = SasDriver("mem0", opener, [1], SasSettings(offline_after_misses=2))
    with pytest.RaisesGroup(LinkBrokenError):
        async with trio.open_nursery() as nursery:
            egm_scope = trio.CancelScope()

            async def egm_task() -> None:
                with egm_scope:
                    await run_egm(SasEgm(1, Ledger()), egm_end)

            nursery.start_soon(egm_task)
            await nursery.start(driver.run, sink)
            await trio.sleep(5)
            egm_scope.cancel()
            await trio.sleep(5)
            offline = await driver.execute(MachineCommand("disableMachine", 1))
            assert offline.result is CommandResult.FAILED
            await egm_end.aclose()
            await trio.sleep(5)
    assert [e.type for e in sink.recorded] == ["deviceOnline", "deviceOffline"]


def test_parmrk_encoding_round_trip_with_splits() -> None:
    words = [0x181, 0xFF, 0x00, 0x1FF, 0x12, 0xFF]
    wire = encode(words)
    assert wire == bytes.fromhex("ff0081ffff00ff00ff12ffff")
    for cut in range(len(wire) + 1):
        decoder = ParmrkDecoder()
        assert decoder.feed(wire[:cut]) + decoder.feed(wire[cut:]) == words


async def test_pty_link_carries_the_wakeup_bit() -> None:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    with trio.fail_after(10):
        link = await open_link(path)
        egm_link = PtyEgmLink(master)
        try:
            assert is_pty(slave)
            await link.send(TxFrame(b"\x01\x1a"))
            words: list[int] = []
            while len(words) < 2:
                words += await egm_link.receive_words()
            assert words == [0x101, 0x1A]
            await egm_link.send(b"\x01\xff\x11\x00")
            got = b""
            while len(got) < 4:
                got += await link.receive_some()
            assert got == b"\x01\xff\x11\x00"
        finally:
            await link.aclose()
            await egm_link.aclose()
            os.close(slave)


async def test_end_to_end_over_pty() -> None:
    # Real time on a shared machine: a scheduling hiccup may cause a timeout and even a machine
    # buffer overflow, so the check is the durable-delivery invariant, not "no faults".
    settings = SasSettings(poll_interval_s=0.02, response_timeout_s=0.2, inter_byte_gap_s=0.02)
    sink = RecordingSink()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            fleet = await nursery.start(lambda task_status: serve_fleet(
                2, seed=3, events_per_second=10.0, task_status=task_status))
            drivers = [SasDriver(f"pty{n}", lambda p=path: open_link(p), [1], settings)
                       for n, path in enumerate(fleet.device_paths)]
            for driver in drivers:
                await nursery.start(driver.run, sink)
            await sink.waiter.until(lambda: len(sink.exceptions()) >= 40)
            fleet.stop_play()
            await fleet.wait_all_acknowledged()
            nursery.cancel_scope.cancel()
    summary = fleet.summary()
    assert summary["pending"] == 0
    assert summary["acknowledged"] + summary["lost_by_overflow"] == summary["raised"]
    assert summary["acknowledged"] == len(sink.exceptions())
    assert Counter(id(e) for e in sink.acknowledged_events) == Counter(
        id(e) for e in sink.exceptions())
    for n, egm in enumerate(fleet.machines):
        mine = Counter((e.source.code, e.source.payload) for e in sink.exceptions()
                       if e.machine.port == f"pty{n}")
        assert mine == Counter((e.code, e.data) for e in egm.ledger.entries if not e.lost)


async def test_read_meters_under_neutral_names(autojump_clock: trio.abc.Clock) -> None:
    """drivers.base.MeterSource: a SAS meter read comes back under MeterName, credits as
    credits; an address not on the port is a LookupError, an offline machine a
    ConnectionError."""
    from drivers.base import MeterName, MeterSource
    from drivers.sas.driver import NEUTRAL_METERS

    host_end, egm_end = memory_link_pair()
    egm = SasEgm(1, Ledger(), play=PlayModel(3, 1.0), serial="MTR1")

    async def opener() -> MemoryHostLink:
        return host_end

    driver = SasDriver("mem0", opener, [1])
    assert isinstance(driver, MeterSource)
    with pytest.raises(ConnectionError, match="offline"):
        await driver.read_meters(1)  # not running: the machine is not online
    async with trio.open_nursery() as nursery:
        await nursery.start(run_egm, egm, egm_end)
        await nursery.start(driver.run, RecordingSink())
        await trio.sleep(30)
        raw = await driver.execute(MachineCommand("requestMeters", 1))
        reading = await driver.read_meters(1)
        with pytest.raises(LookupError):
            await driver.read_meters(2)
        nursery.cancel_scope.cancel()
    assert reading.machine.serial == "MTR1" and reading.machine.address == 1
    sas = raw.data["meters"]
    expected = {NEUTRAL_METERS[n][0]: v * NEUTRAL_METERS[n][1] for n, v in sas.items()
                if n in NEUTRAL_METERS}
    # Meters move while the machine plays: compare the names, and the counters never go back.
    assert set(reading.values) == set(expected) >= {MeterName.COIN_IN_CREDITS,
                                                    MeterName.GAMES_PLAYED}
    assert all(reading.values[k] >= expected[k] for k in expected)
    assert reading.values[MeterName.GAMES_PLAYED] > 0


def test_every_neutral_meter_has_a_sas_source() -> None:
    from drivers.base import MeterName
    from drivers.sas.codes import METER_CODES
    from drivers.sas.driver import NEUTRAL_METERS
    from drivers.sas.messages import METER_NAMES

    sas_names = set(METER_CODES.values()) | {n for m in METER_NAMES.values() for n, _ in m}
    assert set(NEUTRAL_METERS) <= sas_names
    assert {neutral for neutral, _ in NEUTRAL_METERS.values()} == set(MeterName)
    assert NEUTRAL_METERS["bills_total_dollars"] == (MeterName.BILLS_IN_CENTS, 100)
