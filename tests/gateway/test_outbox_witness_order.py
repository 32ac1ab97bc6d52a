"""The witness is durable before any seq it covers leaves the process, and never runs ahead of
the database (docs/outbox.md section 3, "The witness and the release order").

A gate holds the witness write (in whatever thread the outbox does it) so each test can look at
the outbox between a group's database commit and its witness flush."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import trio

from gateway.outbox import facade
from gateway.outbox.flusher import WitnessFlusher
from gateway.outbox.witness import Mark, Witness, read_witness
from tests.gateway.test_outbox_epochs import crash_copy, first_rows
from tests.gateway.test_outbox_integrity import draft


def committed_last(path: Path) -> int:
    """The last seq the database holds, read as another process would."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
    finally:
        conn.close()


class Gate:
    """Holds every witness write of a seq >= `hold_from` until opened; checks on each write that
    the database already holds the seq it is about to vouch for."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
        self.hold_from: int | None = None
        self.opened = threading.Event()
        self.entered = threading.Event()
        self.ahead: list[tuple[int, int]] = []  # (witness seq, database's last seq) when ahead
        original = Witness.record

        def record(witness: Witness, mark: Mark) -> None:
            last = committed_last(path)
            if mark.seq > last:
                self.ahead.append((mark.seq, last))
            if self.hold_from is not None and mark.seq >= self.hold_from:
                self.entered.set()
                self.opened.wait(5)
            original(witness, mark)

        monkeypatch.setattr(Witness, "record", record)

    async def wait_entered(self) -> None:
        await trio.to_thread.run_sync(self.entered.wait, 10)
        assert self.entered.is_set()


async def test_nothing_leaves_before_its_witness_is_flushed(make_outbox, outbox_settings,
                                                            monkeypatch):
    path = outbox_settings.path
    gate = Gate(monkeypatch, path)
    outbox = make_outbox()
    released: list[int] = []
    outbox.commit_listeners.append(lambda envs: released.extend(e["seq"] for e in envs))
    result: list[int] = []

    async def one() -> None:
        result.append(await outbox.append(draft(6)))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            for i in range(5):
                await outbox.append(draft(i))
            gate.hold_from = 6
            nursery.start_soon(one)
            await gate.wait_entered()
            # Seq 6 is committed in the database; its witness is not written yet.
            assert committed_last(path) == 6 and read_witness(path).seq == 5
            assert result == [] and 6 not in released  # no appender (machine ACK), no feed
            assert outbox.last_seq == 5
            assert await outbox.read_after(5, 10) == []  # the uplink reads nothing past it
            with trio.move_on_after(0.05):
                await outbox.wait_appended(5)
                pytest.fail("wait_appended woke before the witness was flushed")
            gate.opened.set()
            await outbox.wait_appended(5)
            assert read_witness(path).seq == 6
            assert [seq for seq, _ in await outbox.read_after(5, 10)] == [6]
            nursery.cancel_scope.cancel()
    assert result == [6] and released[-1] == 6
    assert gate.ahead == []


async def test_the_next_group_commits_while_the_witness_flushes(make_outbox, outbox_settings,
                                                                monkeypatch):
    """The cost hidden: the writer does not wait for the witness flush before it commits the
    next group; both groups are released once a flush covering them is done."""
    path = outbox_settings.path
    gate = Gate(monkeypatch, path)
    outbox = make_outbox()
    committed = trio.Event()
    original = facade.commit_group
    token = trio.lowlevel.current_trio_token()

    def commit_group(*args, **kwargs):
        result = original(*args, **kwargs)
        if result.head.seq == 2:
            token.run_sync_soon(committed.set)
        return result

    monkeypatch.setattr(facade, "commit_group", commit_group)
    got: dict[int, int] = {}

    async def one(n: int) -> None:
        got[n] = await outbox.append(draft(n))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            gate.hold_from = 1
            nursery.start_soon(one, 1)
            await gate.wait_entered()
            nursery.start_soon(one, 2)
            await committed.wait()  # group 2 committed while group 1's witness is held
            assert committed_last(path) == 2 and got == {} and outbox.last_seq == 0
            gate.opened.set()
            while outbox.last_seq < 2:
                await outbox.wait_appended(outbox.last_seq)
            nursery.cancel_scope.cancel()
    assert got == {1: 1, 2: 2} and read_witness(path).seq == 2
    assert gate.ahead == []


async def test_every_release_is_covered_by_the_witness_on_disk(make_outbox, outbox_settings,
                                                               monkeypatch):
    path = outbox_settings.path
    gate = Gate(monkeypatch, path)
    outbox = make_outbox()
    uncovered: list[tuple[int, int]] = []

    def check(seq: int) -> None:
        mark = read_witness(path)
        if mark is None or mark.seq < seq:
            uncovered.append((seq, mark.seq if mark else -1))

    outbox.commit_listeners.append(lambda envs: check(max(e["seq"] for e in envs)))

    async def producer(k: int) -> None:
        for i in range(20):
            check(await outbox.append(draft(k * 100 + i)))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            async with trio.open_nursery() as producers:
                for k in range(25):
                    producers.start_soon(producer, k)
            nursery.cancel_scope.cancel()
    assert outbox.last_seq == 500 and read_witness(path).seq == 500
    assert uncovered == [] and gate.ahead == []


async def test_a_crash_before_the_witness_flush_writes_no_loss_marker(
        make_outbox, outbox_settings, monkeypatch, tmp_path, signer):
    """SIGKILL between a commit and its witness flush: the witness is behind, never ahead, so
    the restarted outbox keeps its epoch and the committed, never released rows (the machine
    was not acknowledged; it re-sends, and the ledger knows it) with no lossMarker."""
    from gateway.outbox import Outbox, OutboxSettings

    path = outbox_settings.path
    gate = Gate(monkeypatch, path)
    outbox = make_outbox()
    epoch = outbox.epoch

    async def hold(n: int) -> None:
        await outbox.append(draft(n))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            for i in range(10):
                await outbox.append(draft(i))
            gate.hold_from = 11
            nursery.start_soon(hold, 10)
            await gate.wait_entered()
            crash_copy(tmp_path, tmp_path / "crash")  # what SIGKILL leaves now
            gate.opened.set()
            nursery.cancel_scope.cancel()
    image = OutboxSettings(path=tmp_path / "crash" / "outbox.db", gateway_id="test-gw")
    assert read_witness(image.path).seq == 10
    reopened = Outbox.open(image, signer)
    try:
        assert (reopened.epoch, reopened.last_seq, reopened.epoch_change) == (epoch, 11, None)
        assert all(row["event"] != "lossMarker" for row in first_rows(image.path, 20))
        assert read_witness(image.path).seq == 11
    finally:
        reopened.close()


def test_the_flusher_coalesces_within_an_epoch_never_across(tmp_path, monkeypatch):
    written: list[Mark] = []
    entered, opened = threading.Event(), threading.Event()
    original = Witness.record

    def record(witness: Witness, mark: Mark) -> None:
        if not written:
            entered.set()
            opened.wait(10)
        written.append(mark)
        original(witness, mark)

    monkeypatch.setattr(Witness, "record", record)
    flushed: list[int] = []
    flusher = WitnessFlusher(Witness(tmp_path / "x.db"), flushed.append, pytest.fail)
    flusher.start()
    assert flusher.submit(Mark("a" * 16, 1)) == 1
    assert entered.wait(10)  # the first write is held; the rest queue up behind it
    for mark in (Mark("a" * 16, 2), Mark("a" * 16, 3), Mark("b" * 16, 1), Mark("b" * 16, 2)):
        flusher.submit(mark)
    opened.set()
    flusher.stop()
    assert written == [Mark("a" * 16, 1), Mark("a" * 16, 3), Mark("b" * 16, 2)]
    assert flushed == [1, 3, 5] and flusher.flushed == 5
    assert read_witness(tmp_path / "x.db") == Mark("b" * 16, 2)
    flusher.record(Mark("b" * 16, 3))  # stopped: written by the caller, at once
    assert read_witness(tmp_path / "x.db") == Mark("b" * 16, 3) and flushed[-1] == 6


def test_a_failed_witness_write_is_never_reported_flushed(tmp_path, monkeypatch):
    def broken(witness: Witness, mark: Mark) -> None:
        raise OSError(5, "Input/output error")

    flushed: list[int] = []
    failures: list[OSError] = []
    flusher = WitnessFlusher(Witness(tmp_path / "x.db"), flushed.append, failures.append)
    flusher.start()
    monkeypatch.setattr(Witness, "record", broken)
    with pytest.raises(OSError, match="Input/output"):
        flusher.record(Mark("a" * 16, 1))
    flusher.stop()
    assert flushed == [] and len(failures) == 1 and flusher.flushed == 0
