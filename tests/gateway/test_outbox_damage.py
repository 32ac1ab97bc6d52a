"""Damaged rows anywhere are quarantined one by one (never the intact rows after them), at start
and when read back for the uplink or the feed; each hole is explained by a signed lossMarker and
the chain verifies across it (P-HOLE-1)."""

from __future__ import annotations

import trio

from gateway.outbox import TAIL_CHECK_ROWS
from gateway.signing import decode_envelope
from tests.gateway.test_outbox_integrity import (
    draft,
    execute,
    fill,
    run_writer_around,
    verify_file,
)


def flip_byte(path, seq: int, offset: int = 40) -> None:
    body = bytearray(execute(path, "SELECT body FROM events WHERE seq=?", seq)[0][0])
    body[offset] ^= 0xFF
    execute(path, "UPDATE events SET body=? WHERE seq=?", bytes(body), seq)


def seqs(path) -> list[int]:
    return [seq for (seq,) in execute(path, "SELECT seq FROM events ORDER BY seq")]


def markers(path) -> list[dict]:
    return [decode_envelope(body)["data"] for (body,) in execute(
        path, "SELECT body FROM events WHERE type='lossMarker' ORDER BY seq")]


async def test_a_flipped_byte_in_the_newest_64_quarantines_that_row_only(
        make_outbox, outbox_settings, signer):
    path = outbox_settings.path
    await fill(make_outbox(), 100)
    flip_byte(path, 60)

    outbox = make_outbox()
    assert outbox.quarantined == 1
    assert seqs(path) == [*range(1, 60), *range(61, 102)]  # the 40 rows after it stay
    (marker,) = markers(path)
    assert (marker["first_seq"], marker["last_seq"], marker["count"]) == (60, 60, 1)
    after = decode_envelope(execute(path, "SELECT body FROM events WHERE seq=61")[0][0])
    assert marker["resume_hash"] == after["prev_hash"].hex()
    assert execute(path, "SELECT seq FROM quarantine") == [(60,)]
    report = verify_file(path, signer)
    assert report.ok, report.reason

    async def more() -> None:
        assert await outbox.append(draft(1)) == 102
    await run_writer_around(outbox, more)
    assert verify_file(path, signer).ok


async def test_a_flipped_byte_in_an_old_row_is_quarantined_when_read_back(
        make_outbox, outbox_settings, signer):
    path = outbox_settings.path
    await fill(make_outbox(), TAIL_CHECK_ROWS + 40)
    flip_byte(path, 10)
    outbox = make_outbox()
    assert outbox.quarantined == 0  # beyond the start-up window

    async def uplink_reads() -> None:
        rows = await outbox.read_after(0, 500)
        assert [seq for seq, _ in rows] == [*range(1, 10), *range(11, TAIL_CHECK_ROWS + 41)]
        for _, body in rows:
            decode_envelope(body)  # what the feed's prime does: never raises now
        with trio.fail_after(5):
            while outbox.quarantined == 0:
                await outbox.wait_appended(outbox.last_seq)
    await run_writer_around(outbox, uplink_reads)
    assert execute(path, "SELECT seq FROM quarantine") == [(10,)]
    (marker,) = markers(path)
    assert (marker["first_seq"], marker["last_seq"]) == (10, 10)
    report = verify_file(path, signer)
    assert report.ok, report.reason


async def test_verify_names_a_hole_no_marker_explains(make_outbox, outbox_settings, signer):
    path = outbox_settings.path
    await fill(make_outbox(), 30)
    execute(path, "DELETE FROM events WHERE seq BETWEEN 10 AND 12")
    report = verify_file(path, signer)
    assert not report.ok and "10..12" in report.reason


async def test_rows_missing_from_the_middle_get_a_loss_marker_at_start(make_outbox,
                                                                       outbox_settings, signer):
    path = outbox_settings.path
    await fill(make_outbox(), 30)
    execute(path, "DELETE FROM events WHERE seq BETWEEN 10 AND 12")
    make_outbox()
    (marker,) = markers(path)
    assert (marker["first_seq"], marker["last_seq"], marker["count"]) == (10, 12, 3)
    assert verify_file(path, signer).ok


async def test_no_marker_when_nothing_is_missing(make_outbox, outbox_settings):
    await fill(make_outbox(), 30)
    make_outbox()
    assert markers(outbox_settings.path) == []


async def test_a_zeroed_page_ends_on_a_fresh_epoch_with_the_intact_rows_salvaged(
        make_outbox, outbox_settings, signer, tmp_path):
    from tests.gateway.test_outbox_verify_ends import zero_page

    path = outbox_settings.path
    first = make_outbox()
    old_epoch = first.epoch
    await fill(first, 600)
    zero_page(path, path.stat().st_size // 4096 // 2)
    outbox = make_outbox()  # the tail check does not reach the middle: it opens

    async def uplink_reads() -> None:
        rows = await outbox.read_after(0, 1000)
        assert 500 < len(rows) < 600  # the rows on the zeroed page are left out
        with trio.fail_after(5):
            while outbox.epoch == old_epoch:
                await outbox.wait_appended(outbox.last_seq)
        assert await outbox.append(draft(1)) == outbox.last_seq
    await run_writer_around(outbox, uplink_reads)
    assert list(tmp_path.glob("outbox.db.corrupt-*"))  # the old file kept aside
    marker = decode_envelope(execute(path, "SELECT body FROM events WHERE seq=1")[0][0])["data"]
    assert (marker["reason"], marker["previous_epoch"]) == ("database-corrupt", old_epoch)
    assert marker["count"] == 600 - marker["salvaged"] > 0
    assert len(seqs(path)) == marker["salvaged"] + 2  # marker, salvaged rows, the new event
    assert verify_file(path, signer).ok


async def test_the_oldest_row_damaged_is_explained_at_the_front(make_outbox, outbox_settings,
                                                                signer):
    from tests.gateway.test_outbox_verify_ends import run_verify_file

    path = outbox_settings.path
    await fill(make_outbox(), TAIL_CHECK_ROWS + 10)
    flip_byte(path, 1)
    outbox = make_outbox()

    async def read_back() -> None:
        await outbox.read_after(0, 500)
        with trio.fail_after(5):
            while outbox.quarantined == 0:
                await outbox.wait_appended(outbox.last_seq)
    await run_writer_around(outbox, read_back)
    outbox.close()
    assert run_verify_file(path, signer)["ok"]


async def test_a_zeroed_page_the_open_reads_starts_over_instead_of_exiting(
        make_outbox, outbox_settings, signer, tmp_path):
    import sqlite3

    from tests.gateway.test_outbox_verify_ends import zero_page

    path = outbox_settings.path
    first = make_outbox()
    old_epoch = first.epoch
    await fill(first, 600)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    oldest_leaf = min(p for (p,) in conn.execute(
        "SELECT pageno FROM dbstat WHERE name='events' AND pagetype='leaf'"))
    conn.close()
    zero_page(path, oldest_leaf - 1)  # the oldest undelivered rows: read while opening

    outbox = make_outbox()
    assert outbox.epoch != old_epoch and outbox.epoch_change.reason == "database-corrupt"
    assert list(tmp_path.glob("outbox.db.corrupt-*"))
    marker = decode_envelope(execute(path, "SELECT body FROM events WHERE seq=1")[0][0])["data"]
    assert 500 < marker["salvaged"] < 600 and marker["count"] == 600 - marker["salvaged"]

    async def more() -> None:
        assert await outbox.append(draft(1)) == marker["salvaged"] + 2
    await run_writer_around(outbox, more)
    assert verify_file(path, signer).ok


def first_event(path) -> dict:
    return decode_envelope(execute(path, "SELECT body FROM events WHERE seq=1")[0][0])


async def test_a_damaged_page_that_loses_nothing_starts_a_new_epoch_without_a_loss_marker(
        make_outbox, outbox_settings, signer, tmp_path):
    """The zeroed page holds only delivered rows (the platform has them) and every undelivered
    row is salvaged: nothing is missing, so the new epoch is announced by a signed epochStarted,
    and no lossMarker is written (a marker is written if and only if something is missing)."""
    import sqlite3

    from tests.gateway.test_outbox_verify_ends import zero_page

    path = outbox_settings.path
    first = make_outbox()
    old_epoch = first.epoch
    await fill(first, 600)
    first.close()
    execute(path, "UPDATE meta SET value='300' WHERE key='delivered_seq'")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    oldest_leaf = min(p for (p,) in conn.execute(
        "SELECT pageno FROM dbstat WHERE name='events' AND pagetype='leaf'"))
    conn.close()
    zero_page(path, oldest_leaf - 1)  # rows 1.. (delivered): only a full read-back meets it
    outbox = make_outbox()

    async def replay_from_the_start() -> None:  # what the feed's replay of old rows does
        await outbox.read_after(0, 1000)
        with trio.fail_after(5):
            while outbox.epoch == old_epoch:
                await outbox.wait_appended(outbox.last_seq)
        assert await outbox.append(draft(1)) == 302  # epochStarted, 300 salvaged, this one
    await run_writer_around(outbox, replay_from_the_start)
    assert list(tmp_path.glob("outbox.db.corrupt-*"))
    assert markers(path) == []
    started = first_event(path)
    assert started["event"] == "epochStarted"
    assert (started["data"]["reason"], started["data"]["previous_epoch"],
            started["data"]["salvaged"], started["data"]["salvaged_first_seq"],
            started["data"]["salvaged_last_seq"]) == ("database-corrupt", old_epoch, 300, 301,
                                                      600)
    assert verify_file(path, signer).ok


async def test_a_rollback_that_loses_nothing_starts_a_new_epoch_without_a_loss_marker(
        make_outbox, outbox_settings, signer):
    """An outbox restored across an epoch change whose witness names seq 0 of the other epoch:
    the other epoch had nothing, so nothing is missing: epochStarted, no lossMarker."""
    from gateway.outbox.witness import Mark, Witness

    path = outbox_settings.path
    await fill(make_outbox(), 5)
    witness = Witness(path)
    witness.record(Mark("0123456789abcdef", 0))
    witness.close()
    make_outbox()
    assert markers(path) == []
    started = first_event(path)
    assert (started["event"], started["data"]["previous_epoch"], started["data"]["salvaged"]) \
        == ("epochStarted", "0123456789abcdef", 5)
    assert verify_file(path, signer).ok


async def test_a_damaged_row_two_readers_report_gets_one_marker(make_outbox, outbox_settings,
                                                                signer):
    """The feed's replay and its board rebuild read the same old row at once; the second report
    reaches the writer after the first was quarantined. One hole, one marker (found by
    bench/corruption.py's real daemon: two markers for seq 170, and verify failed)."""
    path = outbox_settings.path
    await fill(make_outbox(), TAIL_CHECK_ROWS + 40)
    flip_byte(path, 10)
    outbox = make_outbox()

    async def two_readers() -> None:
        await outbox.read_after(0, 500)
        late = dict(outbox._damaged)  # a read whose snapshot predates the quarantine commit
        with trio.fail_after(5):
            while outbox.quarantined == 0:
                await outbox.wait_appended(outbox.last_seq)
        outbox._damaged.update(late)  # ...reports the same row after it
        assert await outbox.append(draft(1)) == outbox.last_seq
    await run_writer_around(outbox, two_readers)
    assert [(m["first_seq"], m["last_seq"]) for m in markers(path)] == [(10, 10)]
    report = verify_file(path, signer)
    assert report.ok, report.reason


async def test_a_zeroed_page_met_by_a_commit_starts_over_instead_of_exiting(
        make_outbox, outbox_settings, signer, tmp_path):
    """Retention reads the oldest row in every commit: a zeroed page of delivered rows made
    the commit fail and the daemon exit (found by bench/corruption.py's real daemon). Now the
    writer starts over from a fresh file and commits the group there; nothing was missing."""
    import sqlite3

    from tests.gateway.test_outbox_verify_ends import zero_page

    path = outbox_settings.path
    first = make_outbox()
    old_epoch = first.epoch
    await fill(first, 600)
    first.close()
    execute(path, "UPDATE meta SET value='600' WHERE key='delivered_seq'")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    oldest_leaf = min(p for (p,) in conn.execute(
        "SELECT pageno FROM dbstat WHERE name='events' AND pagetype='leaf'"))
    conn.close()
    zero_page(path, oldest_leaf - 1)
    outbox = make_outbox()

    async def append_one() -> None:
        assert await outbox.append(draft(1)) == 2  # after the new epoch's epochStarted
    await run_writer_around(outbox, append_one)
    assert outbox.epoch != old_epoch and list(tmp_path.glob("outbox.db.corrupt-*"))
    assert markers(path) == [] and first_event(path)["event"] == "epochStarted"
    assert seqs(path) == [1, 2]
    assert verify_file(path, signer).ok
