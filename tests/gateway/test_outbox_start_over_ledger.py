"""A start-over inside the writer (a commit or a quarantine meets a damaged page) begins a new
epoch with a cleared machine ledger (gateway/outbox/epochs.py): marks heard in the old epoch name
old seqs and must not reach the new ledger, or a re-sent exception of the new epoch would be
taken for acknowledged and recorded twice, or never recognised."""

from __future__ import annotations

import sqlite3
import threading

import trio
import trio.testing

from drivers.base import MachineEvent, MachineRef, SourceRef
from gateway.capture import OutboxSink
from gateway.outbox import facade
from tests.gateway.test_outbox_integrity import draft, execute, fill, run_writer_around
from tests.gateway.test_outbox_verify_ends import zero_page

MACHINE = MachineRef(port="p1", address=1)
BILL = SourceRef("sas", 0x4A)


def damage_oldest(path) -> None:
    """Everything delivered, and the oldest events page zeroed: the next commit's retention
    reads it and the outbox starts over (nothing to salvage: seq 1 is the lossMarker)."""
    execute(path, "UPDATE meta SET value='600' WHERE key='delivered_seq'")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    oldest_leaf = min(p for (p,) in conn.execute(
        "SELECT pageno FROM dbstat WHERE name='events' AND pagetype='leaf'"))
    conn.close()
    zero_page(path, oldest_leaf - 1)


async def damaged_outbox(make_outbox, outbox_settings):
    first = make_outbox()
    await fill(first, 600)
    damage_oldest(outbox_settings.path)
    return make_outbox()


async def test_old_epoch_ack_marks_do_not_leak_into_the_new_epoch(make_outbox, outbox_settings):
    outbox = await damaged_outbox(make_outbox, outbox_settings)
    old_epoch = outbox.epoch
    bill = MachineEvent("billAccepted", MACHINE, {"amount_cents": 2000}, BILL)

    async def work() -> None:
        # the machine was told about old-epoch seq 590 just before the commit meets the page
        outbox.note_acknowledged(MACHINE.key, 590, old_epoch)
        await OutboxSink(outbox, currency="USD").record(bill)  # new epoch; dies before the ACK
    await run_writer_around(outbox, work)
    assert outbox.epoch != old_epoch
    outbox.close()
    assert execute(outbox_settings.path, "SELECT machine, last_seq, acked_seq FROM "
                   "machine_state") == [(MACHINE.key, 2, 0)]
    second = make_outbox()
    # the unacknowledged bill is recognised when the machine re-sends it
    assert OutboxSink(second, currency="USD").is_redelivery(MACHINE, BILL) is True


async def test_an_ack_of_an_old_epoch_seq_heard_after_the_switch_is_dropped(
        make_outbox, outbox_settings):
    outbox = await damaged_outbox(make_outbox, outbox_settings)
    old_epoch = outbox.epoch
    bill = MachineEvent("billAccepted", MACHINE, {"amount_cents": 2000}, BILL)
    sink = OutboxSink(outbox, currency="USD")

    async def work() -> None:
        await sink.record(bill)  # the commit meets the page: recorded as seq 2 of the new epoch
        assert outbox.epoch != old_epoch
        # an old group's ACK goes out late, naming old-epoch seq 590: not the bill
        outbox.note_acknowledged(MACHINE.key, 590, old_epoch)
        with trio.fail_after(5):
            await outbox.expect_redelivery("p9/9", 1, 0x11, b"")  # a commit after the ack
    await run_writer_around(outbox, work)
    outbox.close()
    assert execute(outbox_settings.path, "SELECT acked_seq FROM machine_state WHERE machine=?",
                   MACHINE.key) == [(0,)]
    second = make_outbox()
    assert OutboxSink(second, currency="USD").is_redelivery(MACHINE, BILL) is True


async def test_a_redelivery_mark_heard_during_a_start_over_is_not_orphaned(
        make_outbox, outbox_settings, monkeypatch):
    """The driver waits for its redelivery mark before it ACKs (the SAS port waits with it). A
    mark heard while the writer starts over went to the ledger the new epoch replaces: its
    waiter is still woken, and told the mark was dropped, so the exception is recorded again
    (a possible duplicate, never a loss; docs/outbox.md, "starts over")."""
    outbox = await damaged_outbox(make_outbox, outbox_settings)
    old_epoch = outbox.epoch
    in_start_over, go_on = threading.Event(), threading.Event()
    original = facade.start_over

    def slow_start_over(*args, **kwargs):  # reading and salvaging a big damaged file takes time
        in_start_over.set()
        go_on.wait(5)
        return original(*args, **kwargs)
    monkeypatch.setattr(facade, "start_over", slow_start_over)
    answers = []
    bill = MachineEvent("billAccepted", MACHINE, {"amount_cents": 2000},
                        SourceRef("sas", 0x4A, poll_counter=7))
    sink = OutboxSink(outbox, currency="USD")

    async def redelivery() -> None:
        await sink.redelivered(bill)  # the driver: the machine re-sent it; the ACK waits
        answers.append(outbox.epoch)

    async def work() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.append, draft(1))
            await trio.to_thread.run_sync(in_start_over.wait, 5)
            nursery.start_soon(redelivery)
            await trio.testing.wait_all_tasks_blocked()  # its mark is on the old ledger
            go_on.set()
        assert answers, "the redelivery never returned: the SAS port is stuck"
    await run_writer_around(outbox, work)
    assert answers[0] != old_epoch
    assert sink.counts["billAccepted"] == 1  # recorded again in the new epoch
    outbox.close()
    assert execute(outbox_settings.path, "SELECT count(*) FROM events WHERE type=?",
                   "billAccepted") == [(1,)]
