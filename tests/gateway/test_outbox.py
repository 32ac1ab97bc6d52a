from __future__ import annotations

import sqlite3
import time

import pytest
import trio

from drivers.base import MachineEvent, MachineRef, SourceRef
from gateway.capture import OutboxSink
from gateway.errors import StoreError
from gateway.events import system_draft
from gateway.outbox import OutboxSettings, iter_envelopes, open_readonly
from gateway.outbox.ledger import LedgerChanges
from gateway.signing import decode_envelope, key_id
from gateway.verify import verify_events


def draft(n: int):
    return system_draft("machineException", {"code": n, "name": "test"}, now=time.time())


async def run_writer_for(outbox, work) -> None:
    """Run the outbox's writer for as long as `work(outbox)` takes (an awaitable), then stop it."""
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            await work(outbox)
            nursery.cancel_scope.cancel()


async def run_then_die(outbox, work) -> None:
    """`run_writer_for`, then stop the way a killed gateway does: nothing else said."""
    await run_writer_for(outbox, work)
    await outbox.aclose()


async def append_many(outbox, count: int) -> list[int]:
    seqs: list[int] = []

    async def one(i: int) -> None:
        seqs.append(await outbox.append(draft(i)))

    async with trio.open_nursery() as nursery:
        for i in range(count):
            nursery.start_soon(one, i)
    return seqs


async def test_append_returns_once_committed_and_seqs_are_dense(make_outbox):
    outbox = make_outbox()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            seqs = await append_many(outbox, 300)
            # Durable means visible to a fresh connection the moment append returned.
            conn = open_readonly(outbox.settings.path)
            assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 300
            nursery.cancel_scope.cancel()
    assert sorted(seqs) == list(range(1, 301))
    # Group commit: 300 concurrent appends share far fewer commits than events.
    assert outbox.commits < 300


async def test_chain_verifies_and_envelope_has_every_field(make_outbox, signer):
    outbox = make_outbox()
    await run_writer_for(outbox, lambda o: append_many(o, 50))
    conn = open_readonly(outbox.settings.path)
    report = verify_events(iter_envelopes(conn), {key_id(signer.verify_key): signer.verify_key})
    assert report.ok and report.checked == 50
    env = decode_envelope(conn.execute("SELECT body FROM events WHERE seq=7").fetchone()[0])
    assert env["id"] == f"test-gw:{outbox.epoch}:7"
    for name in ("event", "channel", "schema_version", "seq", "epoch", "gateway_id", "venue",
                 "region", "machine", "timestamp", "trace_id", "data", "prev_hash", "hash",
                 "sig", "kid"):
        assert name in env
    assert env["timestamp"].endswith("Z") and len(env["timestamp"]) == 24


async def test_reopen_keeps_undelivered_events_and_continues_the_chain(make_outbox, signer):
    first = make_outbox()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run_writer)
            await append_many(first, 20)
            await first.mark_delivered(8)
            await first.append(draft(99))  # carries the delivered mark into a commit
            nursery.cancel_scope.cancel()
    epoch = first.epoch
    await first.aclose()

    second = make_outbox()
    assert second.epoch == epoch
    assert (second.last_seq, second.delivered_seq) == (21, 8)
    assert [seq for seq, _ in await second.read_after(8, 100)] == list(range(9, 22))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(second.run_writer)
            assert await second.append(draft(100)) == 22
            nursery.cancel_scope.cancel()
    conn = open_readonly(second.settings.path)
    assert verify_events(iter_envelopes(conn),
                         {key_id(signer.verify_key): signer.verify_key}).checked == 22


async def test_wait_appended_wakes_on_commit(make_outbox):
    outbox = make_outbox()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            woke = trio.Event()

            async def waiter() -> None:
                await outbox.wait_appended(0)
                woke.set()

            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not woke.is_set()
            await outbox.append(draft(1))
            await woke.wait()
            nursery.cancel_scope.cancel()


async def test_outbox_of_another_gateway_is_refused(make_outbox, outbox_settings):
    make_outbox().close()
    other = OutboxSettings(path=outbox_settings.path, gateway_id="someone-else")
    with pytest.raises(StoreError, match="refusing to mix chains"):
        make_outbox(other)


async def test_a_second_writer_on_the_same_outbox_is_refused(make_outbox):
    first = make_outbox()
    with pytest.raises(StoreError, match="in use by another process"):
        make_outbox()
    first.close()
    make_outbox()  # the lock went with the first writer


async def test_unacknowledged_exception_is_recognised_after_restart(make_outbox):
    machine = MachineRef(port="p1", address=1)
    door = MachineEvent("doorOpened", machine, {"door": "main"}, SourceRef("sas", 0x11))
    bill = MachineEvent("billAccepted", machine, {"amount_cents": 2000}, SourceRef("sas", 0x4A))
    first = make_outbox()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run_writer)
            sink = OutboxSink(first, currency="USD")
            await sink.record(door)
            sink.acknowledged(door)       # the machine was told about the door...
            await sink.record(bill)       # ...but the gateway died before acknowledging the bill
            nursery.cancel_scope.cancel()
    await first.aclose()

    second = make_outbox()
    sink = OutboxSink(second, currency="USD")
    assert sink.is_redelivery(machine, SourceRef("sas", 0x4A)) is True
    # Settled after the first exception: a later identical bill is a new bill.
    assert sink.is_redelivery(machine, SourceRef("sas", 0x4A)) is False


@pytest.mark.parametrize("journal_moved_on", [False, True])
async def test_restart_expects_a_redelivery_only_if_no_frame_followed_the_eliciting_poll(
        make_outbox, journal_moved_on):
    """The ack-mark window: the gateway recorded an exception (elicited by the poll with journal
    counter 41), then died. If the journal shows a later frame (42: the ACK went out before the
    ack mark was committed), the machine was told and will not re-send it, so an identical
    exception after the restart is a new one and must be recorded; if not, it is a redelivery."""
    machine = MachineRef(port="p1", address=1)
    door = MachineEvent("doorOpened", machine, {"door": "main"},
                        SourceRef("sas", 0x11, poll_counter=41))
    await run_then_die(make_outbox(), lambda o: OutboxSink(o, currency="USD").record(door))

    second = make_outbox()
    assert second.unacknowledged_counter == {"p1/1": 41}
    sink = OutboxSink(second, currency="USD")
    assert sink.settle_restart("other", 42) == 0          # another port's journal: not ours
    assert sink.settle_restart("p1", 42 if journal_moved_on else 41) == int(journal_moved_on)
    assert sink.is_redelivery(machine, SourceRef("sas", 0x11)) is not journal_moved_on
    if journal_moved_on:
        # The settled ack mark is committed, so a second restart does not ask again.
        await run_then_die(second, lambda o: o.append(draft(1)))
        assert make_outbox().unacknowledged == {}


async def test_a_redelivery_moves_the_stored_poll_counter_before_it_is_acknowledged(make_outbox):
    """Found by the 200-kill loop: after a restart the probe met silence (the machine had given
    up on that answer), the sync GP and a GP followed, and the machine re-sent its exception to
    that GP (counter 43). Killed before the ACK, the next start saw the journal at 43, past the
    stored 41, and took the exception for acknowledged: recorded twice. The counter of the poll
    that elicited the redelivery is committed before the driver acknowledges it."""
    machine = MachineRef(port="p1", address=1)
    overflow = MachineEvent("bufferOverflow", machine, {}, SourceRef("sas", 0x70, poll_counter=41))
    await run_then_die(make_outbox(), lambda o: OutboxSink(o, currency="USD").record(overflow))

    second = make_outbox()
    sink = OutboxSink(second, currency="USD")
    assert sink.settle_restart("p1", 41) == 0
    again = MachineEvent("bufferOverflow", machine, {}, SourceRef("sas", 0x70, poll_counter=43))
    assert sink.is_redelivery(machine, again.source)
    # Durable when redelivered() returns; then the ACK would go out, but the gateway dies first.
    await run_then_die(second, lambda _: sink.redelivered(again))

    third = make_outbox()
    assert third.unacknowledged_counter == {"p1/1": 43}
    sink = OutboxSink(third, currency="USD")
    assert sink.settle_restart("p1", 43) == 0
    assert sink.is_redelivery(machine, SourceRef("sas", 0x70))


async def test_a_resend_after_a_machine_reset_is_unacknowledged_again_until_its_ack(make_outbox):
    """A machine reset cut off the ACK of a bill the gateway had marked as told: it re-sent the
    bill as a bare 4F (out of RTE mode) to the poll with counter 57, and the driver recognised it
    (drivers/sas/host.py, "Machine resets"). If the gateway dies before this second ACK, the
    machine still holds the bill: the outbox must expect that redelivery again, as it was re-sent,
    and stop expecting it once the ACK is marked."""
    machine = MachineRef(port="p1", address=1)
    bill = MachineEvent("billAccepted", machine, {"amount_cents": 2000},
                        SourceRef("sas", 0x4F, b"\x00\x01\x04", poll_counter=41))
    resent = MachineEvent("billAccepted", machine, {},
                          SourceRef("sas", 0x4F, b"", poll_counter=57))

    async def told_then_resent(outbox):
        sink = OutboxSink(outbox, currency="USD")
        await sink.record(bill)
        sink.acknowledged(bill)
        await sink.redelivered(resent)

    await run_then_die(make_outbox(), told_then_resent)
    second = make_outbox()
    assert second.unacknowledged == {"p1/1": (0x4F, b"")}
    assert second.unacknowledged_counter == {"p1/1": 57}
    assert second.last_seq == 1  # recorded once

    async def acknowledged_this_time(outbox):
        sink = OutboxSink(outbox, currency="USD")
        assert sink.settle_restart("p1", 57) == 0
        assert sink.is_redelivery(machine, resent.source)
        await sink.redelivered(resent)
        sink.acknowledged(resent)
        await outbox.append(draft(1))  # a commit after the ack mark

    await run_then_die(second, acknowledged_this_time)
    assert make_outbox().unacknowledged == {}


async def test_acknowledged_exception_is_not_treated_as_redelivery(make_outbox):
    machine = MachineRef(port="p1", address=1)
    door = MachineEvent("doorOpened", machine, {"door": "main"}, SourceRef("sas", 0x11))
    first = make_outbox()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run_writer)
            sink = OutboxSink(first, currency="USD")
            await sink.record(door)
            sink.acknowledged(door)
            await first.append(draft(1))  # the ack mark rides along with the next commit
            nursery.cancel_scope.cancel()
    await first.aclose()
    sink = OutboxSink(make_outbox(), currency="USD")
    assert sink.is_redelivery(machine, SourceRef("sas", 0x11)) is False


async def test_money_is_exact(make_outbox):
    outbox = make_outbox()
    machine = MachineRef(port="p1", address=3)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            await OutboxSink(outbox, currency="EUR").record(MachineEvent(
                "billAccepted", machine, {"amount_cents": 2000}, SourceRef("sas", 0x4A)))
            nursery.cancel_scope.cancel()
    body = sqlite3.connect(outbox.settings.path).execute(
        "SELECT body FROM events WHERE seq=1").fetchone()[0]
    assert decode_envelope(body)["data"]["amount"] == {"minor": 2000, "currency": "EUR"}


def test_rfc3339_cache_matches_datetime_formatting():
    import datetime as dt
    import random

    from gateway.events import rfc3339

    rng = random.Random(4)
    stamps = [1_700_000_000 + rng.randrange(10**12) / 10**6 for _ in range(2000)]
    stamps += [0.0, 1.0, 1_800_000_000.9995, 1_800_000_000.999999, 1_800_000_001.0]
    for stamp in sorted(stamps) + stamps:  # in order (cache hits) and shuffled (misses)
        expected = dt.datetime.fromtimestamp(stamp, tz=dt.UTC)
        assert rfc3339(stamp) == expected.strftime("%Y-%m-%dT%H:%M:%S.") + \
            f"{expected.microsecond // 1000:03d}Z", stamp


async def test_oldest_undelivered_age_is_a_live_figure(make_outbox):
    outbox = make_outbox()
    assert outbox.statistics()["oldest_undelivered_s"] == 0.0
    await run_writer_for(outbox, lambda o: append_many(o, 5))
    conn = sqlite3.connect(outbox.settings.path, isolation_level=None)
    conn.execute("UPDATE events SET captured_at = captured_at - 3600 WHERE seq <= 2")
    conn.close()
    await outbox.mark_delivered(1)
    outbox._commit([], LedgerChanges(), outbox.delivered_seq)  # the writer persists the mark
    assert 3599 < outbox.statistics()["oldest_undelivered_s"] < 3700  # seq 2 is an hour old
    await outbox.mark_delivered(5)
    outbox._commit([], LedgerChanges(), outbox.delivered_seq)
    assert outbox.statistics()["oldest_undelivered_s"] == 0.0


async def test_read_time_range_pages_through_a_window(make_outbox):
    outbox = make_outbox()
    await run_writer_for(outbox, lambda o: append_many(o, 40))
    conn = sqlite3.connect(outbox.settings.path, isolation_level=None)
    conn.execute("UPDATE events SET captured_at = 1000 + seq")
    conn.close()
    pages, after = [], 0
    while page := await outbox.read_time_range(1010, 1030, after, limit=6):
        pages.append([seq for seq, _ in page])
        after = page[-1][0]
    assert [len(p) for p in pages] == [6, 6, 6, 2]
    assert [seq for p in pages for seq in p] == list(range(10, 30))
    assert await outbox.read_time_range(5000, 6000) == []


def test_an_outbox_from_before_the_poll_counter_is_upgraded_in_place(make_outbox,
                                                                     outbox_settings):
    import sqlite3

    conn = sqlite3.connect(outbox_settings.path)
    conn.execute("CREATE TABLE machine_state (machine TEXT PRIMARY KEY, last_seq INTEGER NOT "
                 "NULL, last_code INTEGER, last_payload BLOB, acked_seq INTEGER NOT NULL "
                 "DEFAULT 0)")
    conn.execute("INSERT INTO machine_state VALUES ('p1/1', 3, 17, x'', 2)")
    conn.commit()
    conn.close()
    outbox = make_outbox()
    assert outbox.unacknowledged == {"p1/1": (17, b"")}
    assert outbox.unacknowledged_counter == {"p1/1": None}   # no counter: the check stays armed
