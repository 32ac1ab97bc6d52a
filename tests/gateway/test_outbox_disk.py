"""Disk budget: under the free-space floor intake stops (appends wait, droppable events are shed
with a lossMarker), a diskFull alert is written, and intake resumes by itself with nothing lost.
The free-space function is injected: a configured budget, no real disk filled."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import trio
import trio.testing

from drivers.base import MachineEvent, MachineRef
from gateway.capture import OutboxSink
from gateway.events import system_draft
from gateway.outbox import MB, iter_envelopes, open_readonly
from gateway.outbox.ledger import LedgerChanges
from gateway.signing import decode_envelope, key_id
from gateway.verify import verify_events


class FakeDisk:
    """The filesystem's free bytes, set by the test."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.asked: list[Path] = []

    def __call__(self, path: Path) -> int:
        self.asked.append(path)
        return self.free


def draft(n: int):
    return system_draft("machineException", {"code": n, "name": "test"}, now=time.time())


def meter_snapshot():
    return system_draft("meterSnapshot", {"meters": {"coin_in": 10}}, now=time.time())


class Committed:
    """Records every committed envelope; `wait_for(type)` returns once one has been seen."""

    def __init__(self, outbox) -> None:
        self.envelopes: list[dict] = []
        self._changed = trio.Event()
        outbox.commit_listeners.append(self._on_commit)

    def _on_commit(self, envelopes: list[dict]) -> None:
        self.envelopes += envelopes
        self._changed.set()
        self._changed = trio.Event()

    def types(self) -> list[str]:
        return [e["event"] for e in self.envelopes]

    async def wait_for(self, event_type: str) -> dict:
        while True:
            for envelope in self.envelopes:
                if envelope["event"] == event_type:
                    return envelope
            await self._changed.wait()


def settings_with(outbox_settings, disk: FakeDisk, **changes):
    return dataclasses.replace(outbox_settings, **{
        "min_free_mb": 10, "disk_check_interval_s": 0.005, "free_space": disk, **changes})


async def test_full_disk_stops_intake_alerts_and_resumes_with_nothing_lost(
        make_outbox, outbox_settings, signer):
    disk = FakeDisk(free=2 * MB)
    outbox = make_outbox(settings_with(outbox_settings, disk, queue_max=20))
    committed = Committed(outbox)
    seqs: list[int] = []

    async def producer(i: int) -> None:
        seqs.append(await outbox.append(draft(i)))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            async with trio.open_nursery() as producers:
                for i in range(5):
                    producers.start_soon(producer, i)
                full = await committed.wait_for("diskFull")
                assert full["channel"] == "alerts"
                assert full["data"]["floor_mb"] == 10 and full["data"]["free_mb"] < 10
                assert outbox.intake_stopped and seqs == []
                # A droppable event is shed at once rather than waiting for space.
                assert await outbox.append(meter_snapshot()) == 0
                assert outbox.statistics()["shed"] == 1
                assert outbox.depth() == 1  # only the alert went in while the disk was full
                # 55 more against a queue of 20: the held list and the channel fill, and the
                # last senders wait in append() itself.
                for i in range(5, 60):
                    producers.start_soon(producer, i)
                await trio.testing.wait_all_tasks_blocked()
                assert seqs == []
                disk.free = 500 * MB
            restored = await committed.wait_for("diskSpaceRestored")
            nursery.cancel_scope.cancel()

    assert not outbox.intake_stopped
    assert restored["data"]["shed"] == 1 and restored["data"]["blocked_s"] >= 0
    types = committed.types()
    assert types[:3] == ["diskFull", "lossMarker", "diskSpaceRestored"]
    loss = committed.envelopes[1]["data"]
    assert loss["reason"] == "shed" and loss["count"] == 1 and "meterSnapshot" in loss["detail"]
    # Every held append went in after the alert pair, none twice, none lost.
    assert sorted(seqs) == list(range(4, 64))
    assert types.count("machineException") == 60
    assert disk.asked and disk.asked[0] == outbox_settings.path.parent
    conn = open_readonly(outbox_settings.path)
    report = verify_events(iter_envelopes(conn), {key_id(signer.verify_key): signer.verify_key})
    assert report.ok and report.checked == 63


async def test_machine_waits_for_space_and_its_event_is_then_recorded(make_outbox,
                                                                       outbox_settings):
    disk = FakeDisk(free=0)
    outbox = make_outbox(settings_with(outbox_settings, disk))
    committed = Committed(outbox)
    sink = OutboxSink(outbox, currency="USD")
    door = MachineEvent("doorOpened", MachineRef(port="p1", address=1), {"door": "main"})
    recorded = trio.Event()

    async def record() -> None:
        await sink.record(door)
        recorded.set()

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            nursery.start_soon(record)
            await committed.wait_for("diskFull")
            assert not recorded.is_set()  # the driver would not acknowledge the machine yet
            disk.free = 100 * MB
            await recorded.wait()
            nursery.cancel_scope.cancel()
    assert committed.types() == ["diskFull", "diskSpaceRestored", "doorOpened"]


async def test_no_floor_means_no_disk_checks(make_outbox, outbox_settings):
    disk = FakeDisk(free=0)
    outbox = make_outbox(settings_with(outbox_settings, disk, min_free_mb=0))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            assert await outbox.append(draft(1)) == 1
            nursery.cancel_scope.cancel()
    assert disk.asked == []


async def test_free_pages_inside_the_database_count_as_free_space(make_outbox, outbox_settings):
    """Pruning delivered rows under the floor frees pages SQLite reuses: they count."""
    disk = FakeDisk(free=0)
    outbox = make_outbox(settings_with(outbox_settings, disk, min_free_mb=0.001))
    outbox._disk.db_free_bytes = 2 * MB  # as measured by the writer after its last commit
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            assert await outbox.append(draft(1)) == 1
            nursery.cancel_scope.cancel()
    assert not outbox.intake_stopped


async def test_under_the_floor_delivered_events_are_pruned_first(make_outbox, outbox_settings):
    outbox = make_outbox(dataclasses.replace(outbox_settings, prune_batch=40))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            for start in range(0, 100, 25):
                async with trio.open_nursery() as producers:
                    for i in range(start, start + 25):
                        producers.start_soon(outbox.append, draft(i))
            nursery.cancel_scope.cancel()
    await outbox.mark_delivered(60)
    # The writer's commit, called directly: each one prunes at most prune_batch rows.
    outbox._commit([], LedgerChanges(), outbox.delivered_seq, low_space=True)
    outbox._commit([], LedgerChanges(), outbox.delivered_seq, low_space=True)
    outbox._commit([], LedgerChanges(), outbox.delivered_seq, low_space=True)
    conn = open_readonly(outbox_settings.path)
    seqs = [seq for seq, _ in iter_envelopes(conn)]
    assert seqs == list(range(61, 101)) and outbox.pruned_total == 60
    assert decode_envelope(dict(iter_envelopes(conn))[61])["seq"] == 61


async def test_a_commit_that_hits_a_full_disk_is_held_and_retried_not_fatal(
        make_outbox, outbox_settings, signer):
    """SQLITE_FULL although the floor check passed (filled between two checks, or a quota):
    the group waits, intake stops, and it is committed once there is room. SQLite's
    max_page_count makes the database 'full' without filling a disk."""
    from gateway.outbox.pending import Pending

    disk = FakeDisk(free=500 * MB)
    outbox = make_outbox(settings_with(outbox_settings, disk))
    committed = Committed(outbox)
    pages = outbox._conn.execute("PRAGMA page_count").fetchone()[0]
    outbox._conn.execute(f"PRAGMA max_page_count = {pages}")
    batch = [Pending(draft(i)) for i in range(50)]
    send, receive = trio.open_memory_channel(0)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox._commit_groups, receive)
            await send.send(batch)
            await send.send([])  # taken only once the committer has dealt with `batch`
            assert outbox.full_disk_commits == 1 and outbox.intake_stopped
            assert list(outbox._disk.held) == batch and not any(p.done.is_set() for p in batch)
            assert [p.draft.type for p in outbox._disk.internal] == ["diskFull"]
            nursery.cancel_scope.cancel()

        outbox._conn.execute("PRAGMA max_page_count = 1073741823")  # space is back
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            for pending in batch:
                await pending.done.wait()
            nursery.cancel_scope.cancel()
    assert [p.seq for p in batch] == list(range(3, 53))
    assert committed.types()[:2] == ["diskFull", "diskSpaceRestored"]
    assert not outbox.intake_stopped
    conn = open_readonly(outbox_settings.path)
    report = verify_events(iter_envelopes(conn), {key_id(signer.verify_key): signer.verify_key})
    assert report.ok and report.checked == 52
