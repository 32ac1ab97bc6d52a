"""Never reuse a (epoch, seq): an outbox behind its witness (torn WAL, restored file, deleted file)
starts a new epoch whose seq 1 is a signed lossMarker naming what it no longer has."""

from __future__ import annotations

import os
import shutil

from gateway.outbox.copy import online_copy
from gateway.outbox.witness import read_witness, witness_path
from gateway.signing import GENESIS, decode_envelope
from gateway.uplink.protocol import is_epoch
from tests.gateway.test_outbox_integrity import execute, fill, verify_file


def crash_copy(src_dir, dst_dir) -> None:
    """What SIGKILL leaves on disk: the database, its WAL and the witness, as they are now."""
    dst_dir.mkdir()
    for name in ("outbox.db", "outbox.db-wal", "outbox.db.witness"):
        if (src_dir / name).exists():
            shutil.copyfile(src_dir / name, dst_dir / name)


def first_rows(path, count: int) -> list[dict]:
    return [decode_envelope(body) for (body,) in
            execute(path, "SELECT body FROM events ORDER BY seq LIMIT ?", count)]


async def test_the_witness_follows_every_commit(make_outbox, outbox_settings):
    outbox = make_outbox()
    epoch = outbox.epoch
    await fill(outbox, 30)
    mark = read_witness(outbox_settings.path)
    assert (mark.epoch, mark.seq) == (epoch, 30)
    assert witness_path(outbox_settings.path).stat().st_mode & 0o777 == 0o600


async def test_torn_wal_after_sigkill_never_reuses_seqs(make_outbox, outbox_settings, tmp_path,
                                                         signer):
    from gateway.outbox import Outbox

    outbox = make_outbox()
    old_epoch = outbox.epoch
    await fill(outbox, 150)  # closed: everything checkpointed into outbox.db
    wal = outbox_settings.path.with_name("outbox.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    # The crash: rows 75..150 never reached the file (a WAL that storage tore in half).
    execute(outbox_settings.path, "DELETE FROM events WHERE seq >= 75")

    reopened = make_outbox()
    assert reopened.epoch != old_epoch
    marker = first_rows(outbox_settings.path, 1)[0]
    assert marker["event"] == "lossMarker" and marker["seq"] == 1
    assert marker["prev_hash"] == GENESIS
    data = marker["data"]
    assert (data["reason"], data["previous_epoch"], data["first_seq"], data["last_seq"],
            data["count"]) == ("rollback", old_epoch, 75, 150, 76)
    # 74 rows were undelivered: salvaged into the new epoch, data unchanged, after the marker.
    assert data["salvaged"] == 74 and data["salvaged_first_seq"] == 1
    rows = first_rows(outbox_settings.path, 200)
    assert [r["seq"] for r in rows] == list(range(1, 76))
    assert {r["epoch"] for r in rows} == {reopened.epoch}
    aside = tmp_path / f"outbox.db.epoch-{old_epoch}"  # the old file kept aside
    old = first_rows(aside, 100)
    assert [r["data"] for r in rows[1:]] == [r["data"] for r in old]
    assert [r["timestamp"] for r in rows[1:]] == [r["timestamp"] for r in old]
    assert verify_file(outbox_settings.path, signer).ok
    reopened.close()
    again = Outbox.open(outbox_settings, signer)  # one epoch change: the witness moved on
    assert again.epoch == reopened.epoch and again.epoch_change is None
    again.close()


async def test_a_crash_image_with_a_torn_wal_starts_a_new_epoch(make_outbox, outbox_settings,
                                                                tmp_path, signer):
    from gateway.outbox import Outbox, OutboxSettings

    outbox = make_outbox()
    old_epoch = outbox.epoch
    await fill(outbox, 20)
    live = make_outbox()
    from tests.gateway.test_outbox_integrity import draft, run_writer_around

    async def more() -> None:
        for i in range(40):
            await live.append(draft(i))
        crash_copy(tmp_path, tmp_path / "crash")
    await run_writer_around(live, more)
    wal = tmp_path / "crash" / "outbox.db-wal"
    assert wal.stat().st_size > 0
    os.truncate(wal, wal.stat().st_size // 2)
    crashed = OutboxSettings(path=tmp_path / "crash" / "outbox.db", gateway_id="test-gw")
    reopened = Outbox.open(crashed, signer)
    try:
        assert reopened.epoch != old_epoch
        marker = first_rows(crashed.path, 1)[0]
        assert marker["data"]["reason"] == "rollback"
        assert marker["data"]["last_seq"] == 60
        assert marker["data"]["first_seq"] <= 60
    finally:
        reopened.close()


async def test_restoring_an_older_backup_never_reuses_seqs(make_outbox, outbox_settings,
                                                           tmp_path):
    outbox = make_outbox()
    old_epoch = outbox.epoch
    await fill(outbox, 70)
    online_copy(outbox_settings.path, tmp_path / "backup.db")
    await fill(make_outbox(), 82)  # 152 in all
    shutil.copyfile(tmp_path / "backup.db", outbox_settings.path)

    restored = make_outbox()
    assert restored.epoch != old_epoch
    data = first_rows(outbox_settings.path, 1)[0]["data"]
    assert (data["first_seq"], data["last_seq"]) == (71, 152)


async def test_a_deleted_database_says_what_epoch_ended(make_outbox, outbox_settings):
    outbox = make_outbox()
    old_epoch = outbox.epoch
    await fill(outbox, 12)
    outbox_settings.path.unlink()

    fresh = make_outbox()
    assert fresh.epoch != old_epoch and fresh.last_seq == 1
    data = first_rows(outbox_settings.path, 1)[0]["data"]
    assert (data["reason"], data["previous_epoch"], data["last_seq"]) == \
        ("database-lost", old_epoch, 12)


async def test_an_intact_outbox_keeps_its_epoch(make_outbox, outbox_settings):
    outbox = make_outbox()
    epoch = outbox.epoch
    await fill(outbox, 10)
    again = make_outbox()
    assert (again.epoch, again.last_seq, again.epoch_change) == (epoch, 10, None)


async def test_a_restore_on_a_new_box_ends_the_epoch_at_the_first_welcome(
        make_outbox, outbox_settings, signer):
    from tests.gateway.test_outbox_integrity import draft, run_writer_around

    await fill(make_outbox(), 8)
    witness_path(outbox_settings.path).unlink()  # a new box: the backup never holds a witness
    outbox = make_outbox()
    old_epoch = outbox.epoch
    assert outbox.may_start_new_epoch and outbox.statistics()["witness"] == "absent at open"

    async def welcome_beyond() -> None:
        await outbox.start_new_epoch(20)  # what the uplink does with welcome.high_water 20
        assert await outbox.append(draft(99)) == 2
    await run_writer_around(outbox, welcome_beyond)
    assert outbox.epoch != old_epoch and not outbox.may_start_new_epoch
    rows = first_rows(outbox_settings.path, 10)
    assert [r["epoch"] for r in rows] == [outbox.epoch] * 2
    assert (rows[0]["data"]["first_seq"], rows[0]["data"]["last_seq"],
            rows[0]["data"]["salvaged"]) == (9, 20, 0)
    assert read_witness(outbox_settings.path).epoch == outbox.epoch
    assert verify_file(outbox_settings.path, signer).ok


async def test_every_epoch_the_gateway_makes_is_16_lowercase_hex(make_outbox, outbox_settings):
    """The hello's epoch (docs/uplink-protocol.md section 5): a new outbox, a rollback, a lost
    database each make one, and a receiver refuses any other shape."""
    outbox = make_outbox()
    epochs = [outbox.epoch]
    await fill(outbox, 5)
    execute(outbox_settings.path, "DELETE FROM events WHERE seq >= 3")  # behind its witness
    rolled = make_outbox()
    epochs.append(rolled.epoch)
    rolled.close()
    outbox_settings.path.unlink()
    epochs.append(make_outbox().epoch)
    assert len(set(epochs)) == 3 and all(is_epoch(epoch) for epoch in epochs), epochs
