"""A crash after a new epoch is committed and before its witness is written leaves a witness
naming the epoch that ended. The file is then ahead of the witness, not behind it: its seq 1
names the witnessed epoch as `previous_epoch` and already accounts for its seqs, so the next
open must not end the epoch a second time with a false lossMarker."""

from __future__ import annotations

import threading

import trio

from gateway.outbox import Outbox, OutboxSettings
from gateway.outbox.witness import Witness, read_witness
from tests.gateway.test_outbox_epochs import crash_copy, first_rows
from tests.gateway.test_outbox_integrity import draft
from tests.gateway.test_outbox_start_over_ledger import damaged_outbox


async def test_a_crash_between_a_start_over_and_its_witness_writes_no_false_marker(
        make_outbox, outbox_settings, monkeypatch, tmp_path, signer):
    outbox = await damaged_outbox(make_outbox, outbox_settings)
    old_epoch = outbox.epoch
    entered, opened = threading.Event(), threading.Event()
    original = Witness.record

    def record(witness, mark):
        if mark.epoch != old_epoch:
            entered.set()
            opened.wait(5)
        original(witness, mark)
    monkeypatch.setattr(Witness, "record", record)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            nursery.start_soon(outbox.append, draft(1))
            await trio.to_thread.run_sync(entered.wait, 10)
            crash_copy(tmp_path, tmp_path / "crash")  # power cut now
            opened.set()
            nursery.cancel_scope.cancel()
    image = OutboxSettings(path=tmp_path / "crash" / "outbox.db", gateway_id="test-gw")
    assert read_witness(image.path).epoch == old_epoch  # the crash beat the witness
    crashed_epoch = first_rows(image.path, 1)[0]["epoch"]
    reopened = Outbox.open(image, signer)
    try:
        assert reopened.epoch == crashed_epoch and reopened.epoch_change is None
        rows = first_rows(image.path, 5)
        assert [row["event"] for row in rows][:1] == ["epochStarted"]
        assert all(row["event"] != "lossMarker" for row in rows)
        assert read_witness(image.path).epoch == crashed_epoch
    finally:
        reopened.close()
