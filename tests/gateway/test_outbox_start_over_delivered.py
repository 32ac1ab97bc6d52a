"""A start-over inside a commit (the quarantine meets a damaged page) begins a new epoch whose
delivered mark is 0: the old epoch's cumulative ack must not be written into the fresh file,
where retention would prune the lossMarker and the salvaged rows before they are sent."""

from __future__ import annotations

import threading

import trio

from gateway.outbox import facade, readers
from tests.gateway.test_outbox_integrity import draft, execute, fill, run_writer_around
from tests.gateway.test_outbox_verify_ends import zero_page


async def test_quarantine_start_over_does_not_carry_the_old_delivered_mark(
        make_outbox, outbox_settings, monkeypatch):
    path = outbox_settings.path
    first = make_outbox()
    old_epoch = first.epoch
    await fill(first, 600)
    zero_page(path, path.stat().st_size // 4096 // 2)
    outbox = make_outbox()
    outbox.retention_cap = 1  # over the size cap: delivered rows are pruned in each commit
    seen = []
    original = facade.commit_group

    def spy(conn, settings, epoch, signing, head, batch, job):
        seen.append((epoch != old_epoch, job.delivered, job.delivered_persisted))
        return original(conn, settings, epoch, signing, head, batch, job)
    monkeypatch.setattr(facade, "commit_group", spy)

    async def work() -> None:
        await outbox.mark_delivered(590)  # the platform acked 590 of the old epoch
        await outbox.read_after(0, 1000)  # a reader meets the damaged page
        with trio.fail_after(5):
            while outbox.epoch == old_epoch:
                await outbox.wait_appended(outbox.last_seq)
    await run_writer_around(outbox, work)
    assert outbox.epoch != old_epoch
    new_epoch_jobs = [s for s in seen if s[0]]
    outbox.close()
    assert new_epoch_jobs and new_epoch_jobs[0][1:] == (0, 0), new_epoch_jobs
    assert execute(path, "SELECT value FROM meta WHERE key='delivered_seq'") == [("0",)]
    assert execute(path, "SELECT min(seq) FROM events") == [(1,)]  # the lossMarker is kept


async def test_an_old_epoch_ack_applied_during_a_start_over_is_undone(
        make_outbox, outbox_settings, monkeypatch):
    """The uplink checks an ack's epoch, then marks it delivered; the writer thread may switch
    the epoch in between. That ack names an old seq: capped by the new last_seq it would mark
    the new epoch's lossMarker and salvaged rows delivered, and retention would prune them."""
    from tests.gateway.test_outbox_start_over_ledger import damaged_outbox
    outbox = await damaged_outbox(make_outbox, outbox_settings)
    old_epoch = outbox.epoch
    switched, go_on = threading.Event(), threading.Event()
    original = readers.rows_after

    def rows_after(*args, **kwargs):  # the last step of the start-over: the epoch is switched
        if threading.current_thread() is not threading.main_thread() and \
                outbox.epoch != old_epoch and not switched.is_set():
            switched.set()
            go_on.wait(5)
        return original(*args, **kwargs)
    monkeypatch.setattr(readers, "rows_after", rows_after)

    async def work() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.append, draft(1))
            await trio.to_thread.run_sync(switched.wait, 5)
            await outbox.mark_delivered(590)  # checked against the old epoch a moment ago
            go_on.set()
        await outbox.append(draft(2))  # a later commit persists the delivered mark
    await run_writer_around(outbox, work)
    assert outbox.epoch != old_epoch
    assert outbox.delivered_seq == 0
    outbox.close()
    assert execute(outbox_settings.path, "SELECT value FROM meta WHERE key='delivered_seq'") \
        == [("0",)]
    assert execute(outbox_settings.path, "SELECT min(seq) FROM events") == [(1,)]
