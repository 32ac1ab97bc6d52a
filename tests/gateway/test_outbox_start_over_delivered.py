"""A start-over inside a commit (the quarantine meets a damaged page) begins a new epoch whose
delivered mark is 0: the old epoch's cumulative ack must not be written into the fresh file,
where retention would prune the lossMarker and the salvaged rows before they are sent."""

from __future__ import annotations

import trio

from gateway.outbox import facade
from tests.gateway.test_outbox_integrity import execute, fill, run_writer_around
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
