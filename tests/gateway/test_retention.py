"""Retention: delivered events are pruned by age and by size, a bounded batch per commit; an
undelivered event and the newest row (the chain continues from it) are never deleted."""

from __future__ import annotations

import dataclasses
import sqlite3
import time

import trio

from gateway.events import system_draft
from gateway.outbox import iter_envelopes, open_readonly
from gateway.outbox.ledger import LedgerChanges
from gateway.signing import key_id
from gateway.verify import verify_events

DAY = 86400


def draft(n: int):
    return system_draft("machineException", {"code": n, "name": "x" * 200}, now=time.time())


async def filled(make_outbox, settings, count: int):
    outbox = make_outbox(settings)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            for start in range(0, count, 100):
                async with trio.open_nursery() as producers:
                    for i in range(start, min(start + 100, count)):
                        producers.start_soon(outbox.append, draft(i))
            nursery.cancel_scope.cancel()
    return outbox


def age(path, upto_seq: int, days: float) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE events SET captured_at = ? WHERE seq <= ?",
                 (time.time() - days * DAY, upto_seq))
    conn.close()


def stored_seqs(path) -> list[int]:
    conn = open_readonly(path)
    try:
        return [seq for seq, _ in iter_envelopes(conn)]
    finally:
        conn.close()


def commit_nothing(outbox) -> None:
    """One writer commit with no new events (what the writer runs as maintenance)."""
    outbox._commit([], LedgerChanges(), outbox.delivered_seq)


async def test_old_delivered_events_are_pruned_in_bounded_batches(make_outbox, outbox_settings):
    settings = dataclasses.replace(outbox_settings, retention_days=30, prune_batch=10)
    outbox = await filled(make_outbox, settings, 50)
    age(settings.path, 30, days=31)
    await outbox.mark_delivered(40)
    commit_nothing(outbox)
    assert outbox.pruned_total == 10 and stored_seqs(settings.path)[0] == 11
    for _ in range(5):
        commit_nothing(outbox)
    # Only the old ones went; 31..40 are delivered but young.
    assert outbox.pruned_total == 30 and stored_seqs(settings.path) == list(range(31, 51))


async def test_undelivered_events_are_never_pruned_however_old(make_outbox, outbox_settings):
    settings = dataclasses.replace(outbox_settings, retention_days=1, retention_max_mb=0.001)
    outbox = await filled(make_outbox, settings, 40)
    age(settings.path, 40, days=400)
    await outbox.mark_delivered(15)
    for _ in range(5):
        outbox._commit([], LedgerChanges(), outbox.delivered_seq, low_space=True)
    assert stored_seqs(settings.path) == list(range(16, 41))


async def test_the_newest_row_survives_so_the_chain_continues_after_restart(
        make_outbox, outbox_settings, signer):
    settings = dataclasses.replace(outbox_settings, retention_days=1)
    outbox = await filled(make_outbox, settings, 20)
    age(settings.path, 20, days=5)
    await outbox.mark_delivered(20)
    for _ in range(3):
        commit_nothing(outbox)
    assert stored_seqs(settings.path) == [20]
    outbox.close()

    again = make_outbox(settings)
    assert again.last_seq == 20
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(again.run_writer)
            assert await again.append(draft(21)) == 21
            nursery.cancel_scope.cancel()
    conn = open_readonly(settings.path)
    report = verify_events(iter_envelopes(conn), {key_id(signer.verify_key): signer.verify_key})
    assert report.ok and (report.first_seq, report.last_seq) == (20, 21)


async def test_size_cap_prunes_the_oldest_delivered_first(make_outbox, outbox_settings):
    settings = dataclasses.replace(outbox_settings, retention_days=0, retention_max_mb=0.05,
                                   prune_batch=50)
    outbox = await filled(make_outbox, settings, 400)
    await outbox.mark_delivered(300)
    for _ in range(10):
        commit_nothing(outbox)
    seqs = stored_seqs(settings.path)
    assert seqs[-1] == 400 and 1 not in seqs and all(s in seqs for s in range(301, 401))
    assert 0 < outbox.pruned_total <= 300


async def test_retention_off_keeps_everything(make_outbox, outbox_settings):
    settings = dataclasses.replace(outbox_settings, retention_days=0, retention_max_mb=0)
    outbox = await filled(make_outbox, settings, 30)
    age(settings.path, 30, days=1000)
    await outbox.mark_delivered(30)
    commit_nothing(outbox)
    assert stored_seqs(settings.path) == list(range(1, 31))


async def test_without_a_size_setting_the_cap_is_half_the_filesystem(make_outbox,
                                                                       outbox_settings):
    """Issue 18: retention by size is on by default, sized from the disk the outbox is on."""
    asked = []

    def filesystem(path):
        asked.append(path)
        return 200 * 1024  # a 200 KiB filesystem: the cap is 100 KiB of database pages

    settings = dataclasses.replace(outbox_settings, retention_days=0, prune_batch=50,
                                   filesystem_size=filesystem)
    assert settings.retention_max_mb is None
    outbox = await filled(make_outbox, settings, 400)  # ~300 KiB of pages
    assert asked == [settings.path.parent]
    assert outbox.statistics()["retention_cap_mb"] == round(100 / 1024, 1)
    await outbox.mark_delivered(350)
    for _ in range(10):
        commit_nothing(outbox)
    seqs = stored_seqs(settings.path)
    assert seqs[0] > 1 and all(s in seqs for s in range(351, 401))  # undelivered: all kept
    conn = sqlite3.connect(settings.path)
    used = conn.execute("SELECT (page_count - freelist_count) * page_size FROM "
                        "pragma_page_count, pragma_freelist_count, pragma_page_size").fetchone()
    conn.close()
    assert used[0] <= 100 * 1024 + 50 * 1024  # within the cap, give or take one batch


async def test_an_explicit_zero_still_means_no_size_cap(make_outbox, outbox_settings):
    settings = dataclasses.replace(outbox_settings, retention_days=0, retention_max_mb=0,
                                   filesystem_size=lambda path: 1024)
    outbox = await filled(make_outbox, settings, 50)
    await outbox.mark_delivered(50)
    commit_nothing(outbox)
    assert outbox.retention_cap == 0 and stored_seqs(settings.path) == list(range(1, 51))
