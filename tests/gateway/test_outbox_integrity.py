"""Never wedge: a torn or corrupt tail is quarantined with a signed lossMarker and the outbox
opens; an unreadable file is moved aside; the chain still verifies end to end."""

from __future__ import annotations

import sqlite3
import time

import msgpack
import nacl.signing
import pytest
import trio

from drivers.base import MachineEvent, MachineRef, SourceRef
from gateway.capture import OutboxSink
from gateway.errors import StoreError
from gateway.events import system_draft
from gateway.outbox import TAIL_CHECK_ROWS, check_tail, iter_envelopes, open_readonly
from gateway.signing import Signer, decode_envelope, key_id
from gateway.verify import verify_events


def draft(n: int):
    return system_draft("machineException", {"code": n, "name": "test"}, now=time.time())


async def run_writer_around(outbox, work) -> None:
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            await work()
            nursery.cancel_scope.cancel()


async def fill(outbox, count: int) -> None:
    async def work() -> None:
        for start in range(0, count, 100):
            async with trio.open_nursery() as producers:
                for i in range(start, min(start + 100, count)):
                    producers.start_soon(outbox.append, draft(i))
    await run_writer_around(outbox, work)
    outbox.close()


def verify_file(path, signer):
    conn = open_readonly(path)
    try:
        return verify_events(iter_envelopes(conn), {key_id(signer.verify_key): signer.verify_key})
    finally:
        conn.close()


def execute(path, sql: str, *params) -> list:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def edit_body(path, seq: int) -> None:
    body = execute(path, "SELECT body FROM events WHERE seq=?", seq)[0][0]
    env = decode_envelope(body)
    env["data"]["code"] = 9999
    execute(path, "UPDATE events SET body=? WHERE seq=?", msgpack.packb(env, use_bin_type=True),
            seq)


def overwrite_header(path) -> None:
    with open(path, "r+b") as f:
        f.write(b"this is not an sqlite database at all" * 4)


DAMAGE = {
    "garbage-body": lambda path, seq: execute(path, "UPDATE events SET body=? WHERE seq=?",
                                              b"\xc1\xff torn", seq),
    "edited-body": edit_body,
    "truncated-body": lambda path, seq: execute(
        path, "UPDATE events SET body=substr(body, 1, length(body) / 2) WHERE seq=?", seq),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
async def test_corrupt_tail_is_quarantined_with_a_loss_marker(make_outbox, outbox_settings,
                                                              signer, damage):
    path = outbox_settings.path
    await fill(make_outbox(), 40)
    for seq in (38, 39, 40):
        DAMAGE[damage](path, seq)
    assert not verify_file(path, signer).ok

    outbox = make_outbox()
    assert outbox.quarantined == 3
    assert outbox.last_seq == 41  # seqs are never reused: the marker takes the one after
    quarantined = execute(path, "SELECT seq, reason FROM quarantine ORDER BY seq")
    assert [q[0] for q in quarantined] == [38, 39, 40]
    assert "seq 38" in quarantined[0][1]
    marker = decode_envelope(execute(path, "SELECT body FROM events WHERE seq=41")[0][0])
    assert marker["event"] == "lossMarker"
    assert marker["data"]["reason"] == "quarantine"
    assert (marker["data"]["count"], marker["data"]["first_seq"], marker["data"]["last_seq"]) \
        == (3, 38, 40)
    assert marker["prev_hash"] == execute(path, "SELECT hash FROM events WHERE seq=37")[0][0]

    async def more() -> None:
        assert await outbox.append(draft(1000)) == 42
    await run_writer_around(outbox, more)
    report = verify_file(path, signer)
    assert report.ok and report.checked == 39 and report.last_seq == 42


async def test_the_chain_continues_from_the_signed_bytes_not_the_hash_column(
        make_outbox, outbox_settings, signer):
    await fill(make_outbox(), 5)
    execute(outbox_settings.path, "UPDATE events SET hash=? WHERE seq=5", bytes(32))
    outbox = make_outbox()
    assert outbox.quarantined == 0

    async def more() -> None:
        await outbox.append(draft(6))
    await run_writer_around(outbox, more)
    assert verify_file(outbox_settings.path, signer).checked == 6


async def test_intact_outbox_is_untouched(make_outbox, outbox_settings, signer):
    await fill(make_outbox(), 30)
    outbox = make_outbox()
    assert (outbox.quarantined, outbox.last_seq) == (0, 30)
    assert execute(outbox_settings.path, "SELECT count(*) FROM quarantine") == [(0,)]


async def test_damage_reaching_back_beyond_the_window_is_followed(make_outbox, outbox_settings,
                                                                   signer):
    path = outbox_settings.path
    total = TAIL_CHECK_ROWS * 2 + 10
    await fill(make_outbox(), total)
    execute(path, "UPDATE events SET body=x'00' WHERE seq > ?", total - (TAIL_CHECK_ROWS + 5))
    outbox = make_outbox()
    assert outbox.quarantined == TAIL_CHECK_ROWS + 5
    assert verify_file(path, signer).ok


async def test_check_tail_reads_a_window_not_the_backlog(make_outbox, outbox_settings, signer):
    await fill(make_outbox(), 300)
    conn = sqlite3.connect(outbox_settings.path)
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    result = check_tail(conn, {signer.kid: signer.verify_key}, window=16)
    conn.close()
    assert (result.bad_from, result.last_seq, result.checked) == (None, 300, 17)
    assert len(statements) == 1 and "LIMIT" in statements[0]


async def test_a_quarantined_exception_is_recorded_again_when_redelivered(make_outbox,
                                                                           outbox_settings):
    machine = MachineRef(port="p1", address=1)
    bill = MachineEvent("billAccepted", machine, {"amount_cents": 500}, SourceRef("sas", 0x4A))
    first = make_outbox()

    async def record() -> None:
        await OutboxSink(first, currency="USD").record(bill)
    await run_writer_around(first, record)
    first.close()
    execute(outbox_settings.path, "UPDATE events SET body=x'00' WHERE seq=1")

    second = make_outbox()
    assert second.quarantined == 1
    # The stored copy of that bill is gone from the chain, so its redelivery is a new record.
    assert OutboxSink(second, currency="USD").is_redelivery(machine, SourceRef("sas", 0x4A)) \
        is False


async def test_unreadable_database_is_moved_aside_and_a_new_outbox_starts(
        make_outbox, outbox_settings, signer):
    path = outbox_settings.path
    first = make_outbox()
    old_epoch = first.epoch
    first.close()
    await fill(make_outbox(), 5)
    overwrite_header(path)
    for suffix in ("-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)

    outbox = make_outbox()
    assert outbox.epoch != old_epoch and outbox.last_seq == 1
    aside = list(path.parent.glob("outbox.db.corrupt-*"))
    assert len(aside) == 1
    marker = decode_envelope(execute(path, "SELECT body FROM events WHERE seq=1")[0][0])
    assert marker["event"] == "lossMarker" and marker["data"]["reason"] == "database-corrupt"
    assert aside[0].name in marker["data"]["detail"]
    assert verify_file(path, signer).ok


async def test_a_key_the_chain_does_not_know_is_refused(make_outbox, outbox_settings):
    await fill(make_outbox(), 3)
    from gateway.outbox import Outbox
    stranger = Signer(nacl.signing.SigningKey.generate())
    with pytest.raises(StoreError, match="keys rotate"):
        Outbox.open(outbox_settings, stranger)
    make_outbox().close()  # the refused open released its lock
