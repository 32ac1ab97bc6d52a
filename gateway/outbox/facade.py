"""`Outbox`: the async face of the outbox, and its one writer task.

Durability contract (docs/outbox.md section 2): `await outbox.append(draft)` returns only once the
event is committed with `synchronous=FULL` in WAL mode. One writer owns the write connection and
commits in groups (every `commit_interval_s` or `batch_max` events, whichever first), so the
fsync is shared by every port. Sequence numbers and the hash chain are assigned inside the
writer, in commit order, so the stored bytes are exactly what is streamed and verified upstream.
The parts live beside this module: opening (lock, tail check, quarantine), writer (the commit
path), sealing, disk (budget, shedding), retention, ledger (per-machine marks), readers."""

from __future__ import annotations

import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from gateway.errors import StoreError
from gateway.events import Draft, system_draft
from gateway.outbox import readers, retention
from gateway.outbox.disk import DiskBudget, is_disk_full
from gateway.outbox.epochs import EpochChange, change_epoch
from gateway.outbox.figures import OutboxFigures
from gateway.outbox.flusher import WitnessFlusher
from gateway.outbox.ledger import LedgerChanges, MachineLedger
from gateway.outbox.opening import Opened, open_store, start_over
from gateway.outbox.pending import Pending
from gateway.outbox.quarantine import holes_of, move_rows, still_damaged, write_markers
from gateway.outbox.release import Held, Releases
from gateway.outbox.schema import connect, read_meta
from gateway.outbox.sealing import ChainHead, Signing
from gateway.outbox.settings import OutboxSettings
from gateway.outbox.witness import Mark
from gateway.outbox.writer import CommitResult, GroupCommit, commit_group, write_delivered
from gateway.signing import GENESIS, Signer, decode_envelope

__all__ = ["Outbox"]


class Outbox(OutboxFigures):
    """The async facade over the outbox database. Create with `Outbox.open`, then start
    `run_writer` in the daemon's nursery before anything appends."""

    def __init__(self, settings: OutboxSettings, signer: Signer, opened: Opened) -> None:
        self.settings = settings
        self.gateway_id = settings.gateway_id
        self._retired_kids: list[str] = []
        self._conn = opened.conn
        self._read = opened.read_conn
        self._lock_fd: int | None = opened.lock_fd
        self.quarantined = opened.quarantined
        self._witness = opened.witness
        self._releases = Releases(self._release)
        self._flusher = WitnessFlusher(opened.witness, self._releases.on_flushed,
                                       self._releases.on_failed)
        self.witnessed_at_open = opened.witnessed
        self.epoch_change = opened.epoch_change
        self.epoch_changes = 0 if opened.epoch_change is None else 1
        self._read_lock = trio.Lock()
        self._epoch_lock = trio.Lock()  # a commit, or an epoch change, never both at once
        self._damaged: dict[int, str] = {}  # rows found damaged on read, for the writer
        self._stale_reads: list[sqlite3.Connection] = []  # read connections of a replaced file
        meta = read_meta(self._conn)
        self.epoch: str = meta["epoch"]
        self.delivered_seq: int = int(meta.get("delivered_seq", "0"))
        self._delivered_persisted = self.delivered_seq
        # The chain continues from the hash inside the last row's signed bytes (checked by the
        # tail check at open), not from the `hash` column, which is only an index copy.
        last = readers.last_event(self._conn)
        self._head = ChainHead(last[0], decode_envelope(last[1])["hash"], signer) if last \
            else ChainHead(0, GENESIS, signer)
        # None in the queue is a wake-up: commit pending bookkeeping (ack marks) promptly.
        self._send, self._receive = trio.open_memory_channel[Pending | None](settings.queue_max)
        self._appended = trio.Event()
        self._flush_wanted = False
        self._ledger = MachineLedger.load(self._conn)
        self._disk = DiskBudget(settings)
        self._sealing = Signing()
        self._prune_more = False
        self.retention_cap = retention.cap_bytes(settings)
        self.durable_latencies: deque[float] = deque(maxlen=10_000)
        self.commit_listeners: list[Callable[[list[dict[str, Any]]], None]] = []
        self.commits = 0
        self.pruned_total = 0
        self._oldest_undelivered_at = readers.oldest_undelivered_at(self._conn,
                                                                    self.delivered_seq)
        self._record_witness()
        self._released_seq = self._head.seq  # what was handed on: never past the witness

    def _record_witness(self) -> None:
        """The witness for the chain head, durable on return (not for group commits)."""
        self._flusher.record(Mark(self.epoch, self._head.seq))

    @classmethod
    def open(cls, settings: OutboxSettings, signer: Signer) -> Outbox:
        """Open (or create) the outbox, check its tail, quarantine a corrupt tail.

        Raises StoreError if the outbox belongs to another gateway, is in use by another
        process, or its chain is signed by a different key than `signer` (an interrupted or
        unannounced key change)."""
        opened = open_store(settings, signer)
        try:
            return cls(settings, signer, opened)
        except BaseException as err:
            opened.conn.close()
            opened.read_conn.close()
            opened.witness.close()
            os.close(opened.lock_fd)
            if isinstance(err, (sqlite3.DatabaseError, UnicodeDecodeError)) and \
                    not isinstance(err, sqlite3.OperationalError):
                # A damaged page the tail check did not reach: start over, salvaging.
                return cls(settings, signer, open_store(settings, signer, damaged=err))
            if isinstance(err, sqlite3.Error):
                raise StoreError(f"cannot initialise outbox {settings.path}: {err}") from err
            raise

    def close(self) -> None:
        """Close the connections and release the outbox lock (the writer must have stopped).
        Acks heard since the writer's last commit are persisted first: the next start must not
        resend what the platform already confirmed."""
        if self.delivered_seq != self._delivered_persisted:
            write_delivered(self._conn, self.delivered_seq)  # autocommit
            self._delivered_persisted = self.delivered_seq
        self._conn.close()
        self._read.close()
        self._flusher.stop()
        self._witness.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def aclose(self) -> None:
        self.close()

    # -- the chain ---------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The newest seq released: committed, and covered by the witness on disk."""
        return self._released_seq

    @property
    def signer(self) -> Signer:
        return self._head.signer

    @property
    def kids(self) -> list[str]:
        """Key ids of this chain's session: retired ones first, the signing key last."""
        return [*self._retired_kids, self._head.signer.kid]

    # -- the machines' ledger (drivers/redelivery.py has the rules) ---------------------------

    @property
    def unacknowledged(self) -> dict[str, tuple[int, bytes]]:
        return {m: u.key for m, u in self._ledger.pending().items()}

    @property
    def unacknowledged_seq(self) -> dict[str, int]:
        return {m: u.seq for m, u in self._ledger.pending().items()}

    @property
    def unacknowledged_counter(self) -> dict[str, int | None]:
        return {m: u.counter for m, u in self._ledger.pending().items()}

    def redelivered_seq(self, machine: str, key: tuple[int, bytes], *,
                        priority: bool) -> int | None:
        """The seq `key` re-sends if it is `machine`'s unacknowledged exception, else None
        (either answer settles the question, unless a priority exception came first)."""
        return self._ledger.check(machine, key, priority=priority)

    def settle_restart(self, port: str, counter_at_open: int | None) -> list[tuple[str, int]]:
        """Before `port`'s driver starts: drop the redelivery question for each machine whose
        exception was followed by another frame on the line, marked acknowledged."""
        settled = self._ledger.settle_restart(port, counter_at_open)
        for machine, seq in settled:
            self.note_acknowledged(machine, seq, self.epoch)
        return settled

    def note_acknowledged(self, machine: str, seq: int, epoch: str) -> None:
        """The machine has been told about `seq` of `epoch`; committed at once (one commit
        interval), as until then a restart cannot tell a redelivery from a new identical
        exception. A seq of an epoch that has ended is dropped: the new epoch's ledger starts
        cleared, and that seq there would name another event."""
        if epoch == self.epoch and self._ledger.acknowledged(machine, seq):
            self._flush_wanted = True
            self._wake()

    async def expect_redelivery(self, machine: str, counter: int, code: int,
                                payload: bytes) -> bool:
        """`machine` re-sent its last recorded exception (as `code`, `payload`) in answer to a
        new poll, and is about to be acknowledged: store `counter` as the poll that elicited it,
        and mark it unacknowledged again (a machine that reset re-sends an exception it had
        been told about, as far as the gateway knew), so that a restart before the ACK still
        recognises it. Returns once committed: True, or False if the outbox started a new
        epoch first, whose ledger starts cleared (the mark is dropped; the caller records the
        exception again: a possible duplicate, never a loss)."""
        epoch = self.epoch
        done = self._ledger.expect_redelivery(machine, counter, code, payload)
        self._flush_wanted = True
        self._wake()
        await done.wait()
        return self.epoch == epoch

    @property
    def may_start_new_epoch(self) -> bool:
        """True while the platform's first welcome decides (docs/outbox.md section 3): this box
        had no witness when the outbox opened and the epoch has not changed since."""
        return self.witnessed_at_open is None and self.epoch_changes == 0

    async def start_new_epoch(self, high_water: int) -> None:
        """The platform holds seqs of this epoch up to `high_water`, beyond the last one this
        outbox has: a rollback the witness could not see (a restore on a new box). End the
        epoch: the next hello names the new one, whose seq 1 is the lossMarker."""
        if not self.may_start_new_epoch:
            raise StoreError("at most one epoch change per start")
        async with self._epoch_lock:
            with trio.CancelScope(shield=True):
                await self._releases.drained()  # the old epoch's groups released first
                change = EpochChange(
                    "rollback", self.epoch, self._head.seq + 1, high_water,
                    f"the platform holds seq {high_water} of epoch {self.epoch} but this "
                    f"outbox ends at seq {self._head.seq} (an outbox restored on a box "
                    f"without its witness)", salvage_after=high_water)
                epoch, ledger = self.epoch, self._ledger
                await trio.to_thread.run_sync(self._change_epoch, change)
                self._after_worker(epoch, ledger)

    def _change_epoch(self, change: EpochChange) -> None:
        released, self._released_seq = self._released_seq, 0  # none of the new epoch leaves
        try:  # before its witness
            epoch, seq, digest = change_epoch(self._conn, self.settings, self.signer, change)
            self._flusher.record(Mark(epoch, seq))
        except BaseException:
            self._released_seq = released
            raise
        self.epoch, self._head = epoch, ChainHead(seq, digest, self.signer)
        self.delivered_seq = self._delivered_persisted = 0
        self._ledger = MachineLedger.load(self._conn)
        self._oldest_undelivered_at = readers.oldest_undelivered_at(self._conn, 0)
        self.epoch_change, self.epoch_changes = change, self.epoch_changes + 1
        self._released_seq = seq

    async def mark_delivered(self, seq: int) -> None:
        """The platform acknowledged everything up to `seq` (cumulative)."""
        if seq > self.delivered_seq:
            self.delivered_seq = min(seq, self.last_seq)
            self._flush_wanted = True

    # -- the write side ----------------------------------------------------------------------

    async def append(self, draft: Draft) -> int:
        """Queue `draft` for the next group commit; return its seq once it is durable.

        While free space is under the floor this waits (the caller's machine keeps its
        exception); a draft of a droppable type is shed instead and 0 is returned."""
        return (await self.append_in_epoch(draft))[1]

    async def append_in_epoch(self, draft: Draft) -> tuple[str, int]:
        """`append`, returning (epoch, seq): the epoch the event was sealed in, which may have
        ended by the time it is released (a start-over); a shed draft gives (current, 0)."""
        pending = Pending(draft)
        await self._send.send(pending)
        await pending.done.wait()
        if pending.shed:
            return self.epoch, 0
        if pending.seq == 0 or pending.envelope is None:
            raise StoreError("the outbox writer stopped before this event was committed")
        return pending.envelope["epoch"], pending.seq

    async def append_system(self, event_type: str, data: dict[str, Any]) -> int:
        return await self.append(system_draft(event_type, data, now=time.time(),
                                              monotonic=trio.current_time()))

    async def rotate_key(self, new_signer: Signer) -> int:
        """Write `keyRotated` (signed by the current key, naming the new kid and public key) and
        sign every later event with `new_signer`. Returns the keyRotated event's seq once durable.
        Not subject to the disk floor: a rotation is one small event."""
        if new_signer.kid == self.signer.kid:
            raise ValueError("the new key is the key already in use")
        pending = Pending(system_draft(
            "keyRotated", {"new_kid": new_signer.kid,
                           "new_public_key": bytes(new_signer.verify_key).hex()},
            now=time.time(), monotonic=trio.current_time()), rotate_to=new_signer)
        self._disk.internal.append(pending)
        self._wake()
        await pending.done.wait()
        if pending.seq == 0:
            raise StoreError("the outbox writer stopped before the key rotation was committed")
        return pending.seq

    def _wake(self) -> None:
        try:
            self._send.send_nowait(None)  # wake the collector; a full queue commits soon anyway
        except trio.WouldBlock:
            pass

    async def run_writer(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        """The one writer: a collector task forms groups while a committer task commits the
        previous one in a worker thread (the fsync blocks); the flusher thread makes each
        group's witness durable meanwhile, and only then is it released (`_release`). The
        one-slot hand-over keeps seq order and lets the next group fill during a commit."""
        groups_in, groups_out = trio.open_memory_channel[list[Pending]](0)
        self._releases.start()
        self._flusher.start()
        if self.settings.signing_process:
            self._sealing.start()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._commit_groups, groups_out)
                nursery.start_soon(self._releases.watch)
                task_status.started()
                await self._collect_groups(groups_in)
        finally:
            self._sealing.close()
            self._flusher.stop()  # what was committed is flushed, then released here
            for changes in self._releases.stop(self._flusher.flushed):
                self._ledger.put_back(changes)

    def _release(self, held: Held) -> None:
        """Trio thread, once the witness covering `held` is durable (gateway/outbox/release.py)."""
        self._ledger.committed(held.changes)
        if held.epoch == self.epoch:
            self._released_seq = max(self._released_seq, held.seq)
        self._woken(held.batch, held.envelopes)

    # -- the collector (trio thread) ---------------------------------------------------------

    def _idle_wait(self) -> float:
        if self._disk.internal:
            return 0.0
        if self._disk.low_space or self._prune_more:
            return self.settings.disk_check_interval_s
        if self._flush_wanted:
            return 0.5
        return self.settings.maintenance_interval_s

    async def _receive_into(self, batch: list[Pending]) -> None:
        if self._disk.low_space and len(self._disk.held) >= self.settings.queue_max:
            await trio.sleep_forever()  # the channel fills and append() blocks at send
        item = await self._receive.receive()
        if item is not None:
            batch.append(item)
        # Take what is already queued without a scheduling round trip per event.
        while len(batch) < self.settings.batch_max:
            try:
                item = self._receive.receive_nowait()
            except trio.WouldBlock:
                break
            if item is not None:
                batch.append(item)

    async def _fill(self, batch: list[Pending]) -> bool:
        """Wait for work (or the idle timeout), then gather for one commit interval; True if
        the wait timed out with nothing received."""
        idle = True
        with trio.move_on_after(self._idle_wait()):
            await self._receive_into(batch)
            idle = False
        if batch or self._flush_wanted or self._disk.internal:
            with trio.move_on_after(self.settings.commit_interval_s):
                while len(batch) < self.settings.batch_max:
                    await self._receive_into(batch)
        return idle

    def _group(self, batch: list[Pending]) -> list[Pending]:
        """The next group: the outbox's own events first; appends are held under the floor,
        and the held ones go first once space is back."""
        disk = self._disk
        disk.check()
        if disk.low_space:
            disk.hold(batch)
        elif disk.held:
            batch[:0] = disk.held
            disk.held.clear()
        group, disk.internal = disk.internal + batch, []
        return group

    async def _collect_groups(self, groups: trio.MemorySendChannel[list[Pending]]) -> None:
        # Bookkeeping (acks, delivered seq), retention and the disk check ride along with the
        # next group; without traffic they run on the idle timeout.
        batch: list[Pending] = []
        try:
            while True:
                idle = await self._fill(batch)
                group = self._group(batch)
                if idle and not group:
                    self._flush_wanted = True  # maintenance: retention, free-page figures
                if not group and not self._flush_wanted:
                    continue
                self._flush_wanted = False
                batch = []
                await groups.send(group)
        finally:
            for pending in (*batch, *self._disk.held, *self._disk.internal):
                pending.done.set()

    # -- the committer -----------------------------------------------------------------------

    async def _commit_groups(self, groups: trio.MemoryReceiveChannel[list[Pending]]) -> None:
        limiter = trio.CapacityLimiter(1)
        async for batch in groups:
            changes, epoch, ledger = self._ledger.take(), self.epoch, self._ledger
            try:
                with trio.CancelScope(shield=True):
                    async with self._epoch_lock:
                        damaged, self._damaged = self._damaged, {}
                        if damaged:  # may start a new epoch: the old one's groups go first
                            await self._releases.drained()
                        envelopes, ticket = await trio.to_thread.run_sync(
                            self._commit, batch, changes, self.delivered_seq,
                            self._disk.low_space, damaged, limiter=limiter)
            except StoreError as err:
                self._after_worker(epoch, ledger)
                if not is_disk_full(err):
                    raise
                self._ledger.put_back(changes if self.epoch == epoch else  # started over
                                      LedgerChanges(waiters=changes.waiters))
                self._disk.commit_hit_full_disk(batch, err)
                continue
            self._after_worker(epoch, ledger)
            self._releases.hold(Held(ticket, self.epoch, self._head.seq, batch, envelopes,
                                     changes))

    def _after_worker(self, epoch: str, ledger: MachineLedger) -> None:
        """Trio thread, after a worker thread that may have ended `epoch` (and `ledger`). What
        was heard meanwhile names old seqs: an ack the uplink checked before the switch is
        undone (delivered is what was persisted: 0), marks on the old ledger are dropped with
        it, but whoever waits for them (a driver, before its ACK) is woken by the next commit."""
        if self.epoch == epoch:
            return
        self.delivered_seq = self._delivered_persisted
        waiters = ledger.take().waiters
        if waiters:
            self._ledger.put_back(LedgerChanges(waiters=waiters))
            self._flush_wanted = True
            self._wake()

    def _woken(self, batch: list[Pending], envelopes: list[dict[str, Any]]) -> None:
        """Wake the group's appenders and tell the listeners (feed, uplink, metrics)."""
        now = trio.current_time()
        for pending in batch:
            if pending.draft.monotonic:
                self.durable_latencies.append(now - pending.draft.monotonic)
            pending.done.set()
        if envelopes:
            self._appended.set()
            self._appended = trio.Event()
            for listener in self.commit_listeners:
                listener(envelopes)

    def _commit(self, batch: list[Pending], changes: LedgerChanges, delivered: int,
                low_space: bool = False, damaged: dict[int, str] | None = None
                ) -> tuple[list[dict[str, Any]], int]:
        """Runs in the writer thread: seal and insert the group in one FULL-sync transaction,
        with a bounded slice of retention (gateway/outbox/writer.py). Returns its envelopes and
        its witness flush's ticket, queued once the commit returned (never ahead of it)."""
        epoch = self.epoch
        markers = self._quarantine_damaged(damaged) if damaged else []
        job = self._job(epoch, changes, delivered, low_space)
        try:
            result = commit_group(self._conn, self.settings, self.epoch, self._sealing,
                                  self._head, batch, job)
        except StoreError as err:
            # A page the commit reads (retention reads the oldest row) is damaged: start over
            # from a fresh file, as a read would, and commit the group there.
            damage = err.__cause__
            if not isinstance(damage, sqlite3.DatabaseError | UnicodeDecodeError) or \
                    isinstance(damage, sqlite3.OperationalError):
                raise
            markers += self._start_over_live(damage)
            job = self._job(epoch, changes, delivered, low_space)
            result = commit_group(self._conn, self.settings, self.epoch, self._sealing,
                                  self._head, batch, job)
        self._committed(result, job.delivered)
        return markers + result.envelopes, self._flusher.submit(Mark(self.epoch, self._head.seq))

    def _job(self, epoch: str, changes: LedgerChanges, delivered: int, low_space: bool
             ) -> GroupCommit:
        """The group's bookkeeping, taken in `epoch`. If the outbox started over since, the
        platform's ack and the machines' marks name seqs of the old epoch: none of them is
        written into the new one (delivered 0, ledger cleared); only the waiters ride along."""
        if self.epoch != epoch:
            changes, delivered = LedgerChanges(waiters=changes.waiters), 0
        return GroupCommit(changes, delivered, self._delivered_persisted, low_space,
                           self.retention_cap)

    def _quarantine_damaged(self, damaged: dict[int, str]) -> list[dict[str, Any]]:
        """Writer thread: move the rows found damaged on read and explain each hole. If SQLite
        cannot even delete them (a damaged page), start over from a fresh file (new epoch)."""
        bad = sorted(damaged.items())
        try:
            return self._move_damaged(bad)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as err:
            if isinstance(err, sqlite3.OperationalError):
                raise StoreError(f"outbox quarantine failed: {err}") from err
            return self._start_over_live(err)

    def _start_over_live(self, err: Exception) -> list[dict[str, Any]]:
        """Writer thread: the file is damaged beyond row repair. It is moved aside, a new epoch
        starts with a lossMarker and the intact undelivered rows salvaged from it (as at open);
        readers switch to the new file at their next read."""
        self._released_seq = 0  # nothing of the new epoch leaves before its witness
        if self.delivered_seq != self._delivered_persisted:
            try:
                write_delivered(self._conn, self.delivered_seq)
            except sqlite3.Error:
                pass  # the mark is lost with the page: salvage resends, never skips
        self._conn.close()
        checked = start_over(self.settings, self.signer, err, Mark(self.epoch, self._head.seq))
        self._conn = checked.conn
        last = readers.last_event(self._conn)
        assert last is not None  # the new epoch starts with its lossMarker or epochStarted
        epoch = read_meta(self._conn)["epoch"]
        self._flusher.record(Mark(epoch, last[0]))
        self._stale_reads.append(self._read)
        self._read = connect(self.settings.path)
        self.epoch = epoch
        self._head = ChainHead(last[0], decode_envelope(last[1])["hash"], self.signer)
        self.delivered_seq = self._delivered_persisted = 0
        self._ledger = MachineLedger.load(self._conn)
        self._oldest_undelivered_at = readers.oldest_undelivered_at(self._conn, 0)
        self.epoch_change, self.epoch_changes = checked.epoch_change, self.epoch_changes + 1
        self._released_seq = last[0]
        return [decode_envelope(body) for _, body in readers.rows_after(self._conn, 0,
                                                                         last[0])]

    def _move_damaged(self, bad: list[tuple[int, str]]) -> list[dict[str, Any]]:
        conn = self._conn
        conn.execute("BEGIN")
        try:
            bad = still_damaged(conn, bad)
            if not bad:
                conn.execute("COMMIT")
                return []
            holes = holes_of(conn, bad)
            moved = move_rows(conn, bad)
            seq, digest = write_markers(conn, self.settings, self.epoch, self.signer,
                                        (self._head.seq, self._head.hash), self._head.seq, holes)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        first_marker = self._head.seq + 1
        self._head = ChainHead(seq, digest, self.signer)
        self.quarantined += moved
        self._record_witness()
        return [decode_envelope(body) for _, body in
                readers.rows_after(conn, first_marker - 1, seq - first_marker + 1)]

    def _committed(self, result: CommitResult, delivered: int) -> None:
        if delivered != self._delivered_persisted or self._oldest_undelivered_at is None:
            self._oldest_undelivered_at = readers.oldest_undelivered_at(self._conn, delivered)
        self._head = result.head
        self._retired_kids += result.retired
        self._delivered_persisted = delivered
        self._disk.db_free_bytes = result.pruned.db_free_bytes
        self.pruned_total += result.pruned.rows
        self._prune_more = result.pruned.rows >= self.settings.prune_batch
        self.commits += 1

    # -- the read side -----------------------------------------------------------------------

    async def read_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        """The intact rows after `seq`. A damaged one (found here, where the uplink and the feed
        read) is left out and handed to the writer, which quarantines it and writes the
        lossMarker that explains the hole (gateway/outbox/quarantine.py)."""
        async with self._read_lock:
            while self._stale_reads:  # the file was replaced (a damaged page): close the old
                self._stale_reads.pop().close()
            good, bad = await trio.to_thread.run_sync(  # nothing past the witness on disk
                readers.checked_rows_after, self._read, seq, limit, self.last_seq)
        if bad:
            self._damaged.update(bad)
            self._flush_wanted = True
            self._wake()
        return good

    async def read_time_range(self, since: float, until: float, after_seq: int = 0,
                              limit: int = 1000) -> list[tuple[int, bytes]]:
        """One page (at most `limit` rows, seq > `after_seq`) of the events committed in
        [since, until), Unix seconds; call again from the last seq returned until it is empty.
        Bounded memory whatever the range; the start is a binary search, not a scan."""
        async with self._read_lock:
            bound = self.last_seq  # nothing past the witness on disk
            rows = await trio.to_thread.run_sync(readers.time_range_page, self._read, since,
                                                 until, after_seq, limit)
        return [row for row in rows if row[0] <= bound]

    async def wait_appended(self, after_seq: int) -> None:
        """Until an event after `after_seq` is committed, or the epoch changes (seqs restart)."""
        epoch = self.epoch
        while self.last_seq <= after_seq and self.epoch == epoch:
            await self._appended.wait()
