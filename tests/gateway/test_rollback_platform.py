"""A restore on a new box, end to end with the reference platform: the outbox (no witness) is
behind what the platform holds; the first welcome ends its epoch, the gateway reconnects with the
new one, and the platform stores the new stream from its seq-1 lossMarker (P-EPOCH-2)."""

from __future__ import annotations

import shutil
from pathlib import Path

import trio

from gateway.outbox.copy import online_copy
from gateway.outbox.witness import witness_path
from gateway.receiver import ReceiverSettings, serve_receiver
from gateway.signing import decode_envelope
from gateway.uplink.client import UplinkClient, UplinkSettings
from tests.gateway.test_outbox_integrity import draft
from tests.gateway.uplink_fakes import register, write_token

TOKEN = "rollback-test-token"


async def stream_until(outbox, tmp_path: Path, done, collect=lambda h: None):
    """Run the writer, the reference receiver and the uplink until done(handle); returns
    collect(handle), taken while the platform's store is open."""
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve_receiver, ReceiverSettings(
            port=0, db_path=tmp_path / "platform.db", certfile=None))
        register(handle.store, outbox, TOKEN)
        await nursery.start(outbox.run_writer)
        client = UplinkClient(UplinkSettings(
            url=handle.url, token_file=write_token(tmp_path, TOKEN), backoff_initial_s=0.01,
            backoff_max_s=0.05, connect_timeout_s=5.0), outbox)
        await nursery.start(client.run)
        while not done(handle):
            await client.wait_changed()  # acks come after the platform's commit
        result = collect(handle)
        nursery.cancel_scope.cancel()
    return result


async def test_a_restore_on_a_new_box_becomes_a_new_stream_at_the_platform(
        make_outbox, outbox_settings, tmp_path):
    path = outbox_settings.path
    first = make_outbox()
    old_epoch = first.epoch

    async def write(outbox, count: int) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            for i in range(count):
                await outbox.append(draft(i))
            nursery.cancel_scope.cancel()
    await write(first, 8)
    online_copy(path, tmp_path / "backup.db")  # the venue's backup
    await write(first, 12)
    with trio.fail_after(30):
        await stream_until(first, tmp_path, lambda h: h.store.high_water(
            "test-gw", old_epoch) >= first.last_seq)
    first.close()
    # The disk dies; a new box gets the backup (and, being new, no witness).
    shutil.copyfile(tmp_path / "backup.db", path)
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    witness_path(path).unlink()

    restored = make_outbox()
    assert restored.epoch == old_epoch and restored.may_start_new_epoch
    def platform_view(h):
        return (h.store.events("test-gw", restored.epoch), h.store.events("test-gw", old_epoch))
    with trio.fail_after(30):
        stored, old = await stream_until(
            restored, tmp_path, lambda h: restored.epoch != old_epoch
            and h.store.high_water("test-gw", restored.epoch) >= 2, platform_view)
    marker = decode_envelope(stored[0][1])
    assert marker["event"] == "lossMarker" and marker["data"]["reason"] == "rollback"
    assert (marker["data"]["previous_epoch"], marker["data"]["first_seq"],
            marker["data"]["last_seq"]) == (old_epoch, 9, len(old))
    # The old stream is untouched: nothing of the new epoch was taken as its duplicates.
    assert [seq for seq, _ in old] == list(range(1, len(old) + 1))
