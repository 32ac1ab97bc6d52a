"""The SQLite outbox: where every event becomes durable, gets its seq and its place in the chain.

Durability contract (docs/outbox.md section 2): `await outbox.append(draft)` returns only once the event
is committed with `synchronous=FULL` in WAL mode. One writer task owns the write connection and
commits in groups (every `commit_interval_s` or `batch_max` events, whichever first), so the fsync
is shared by every port. Sequence numbers and the hash chain are assigned inside the writer, in
commit order, so the stored bytes are exactly what is streamed and verified upstream.

Never wedge: start-up checks only the last `TAIL_CHECK_ROWS` rows (decode, hash, link, signature
for known keys) -- not `PRAGMA quick_check`, which reads the whole file -- so it does not grow with
the backlog. A torn or corrupt tail is moved to the `quarantine` table and a signed lossMarker
takes the seq after it; a database SQLite cannot read at all is moved aside and a new outbox (new
epoch) starts with a lossMarker naming it. A free-space floor stops intake (appends block) with a
diskFull alert and resumes by itself; delivered events are pruned by age and size in small batches
by the writer; undelivered ones are never deleted. docs/outbox.md has the whole story.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import math
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import nacl.exceptions
import structlog
import trio

from drivers.redelivery import RedeliveryBook, Unacknowledged
from gateway.errors import StoreError
from gateway.events import Draft, system_draft
from gateway.signing import (
    GENESIS,
    INTEGRITY_FIELDS,
    SealedParts,
    Signer,
    SignerProcess,
    canonical,
    chain_hash,
    decode_envelope,
    finish_seal,
    seal,
    seal_parts,
)
from gateway.verify import gap_explained

__all__ = ["MB", "TAIL_CHECK_ROWS", "Outbox", "OutboxSettings", "StoredEvent", "TailCheck",
           "check_tail", "envelope_for", "iter_envelopes", "iter_time_range", "open_readonly",
           "statvfs_free"]

log = structlog.get_logger("gateway.outbox")

MB = 1024 * 1024
TAIL_CHECK_ROWS = 64  # rows checked at start-up; the window grows only while its first row is bad
SHED_REPORT_INTERVAL_S = 60.0  # while under the floor, shed counts are written at most this often
SIGN_CHUNK = 64  # digests per request to the signing process
SIGN_PROCESS_MIN = 32  # smaller groups are signed in the writer thread
SIGN_AHEAD = 2  # requests outstanding at the signing process (keeps both pipes far from full)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    channel TEXT NOT NULL,
    machine TEXT,
    captured_at REAL NOT NULL,
    source_code INTEGER,
    hash BLOB NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS machine_state (
    machine TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL,
    last_code INTEGER,
    last_payload BLOB,
    acked_seq INTEGER NOT NULL DEFAULT 0,
    last_counter INTEGER
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    seq INTEGER,
    type TEXT,
    channel TEXT,
    machine TEXT,
    captured_at REAL,
    source_code INTEGER,
    hash BLOB,
    body BLOB,
    reason TEXT NOT NULL,
    quarantined_at REAL NOT NULL
);
"""


def statvfs_free(path: Path) -> int:
    """Bytes available to this (unprivileged) process on the filesystem holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    path: Path
    gateway_id: str
    venue: str = ""
    region: str = ""
    commit_interval_s: float = 0.002
    batch_max: int = 500
    queue_max: int = 10_000
    # Disk budget. Under `min_free_mb` (filesystem free space plus free pages inside the database)
    # intake stops until free space is back above `min_free_mb * 1.1`; 0 disables the floor.
    min_free_mb: float = 64.0
    disk_check_interval_s: float = 1.0
    free_space: Callable[[Path], int] = statvfs_free  # injectable: tests simulate a full disk
    droppable_types: tuple[str, ...] = ("meterSnapshot",)
    # Retention of *delivered* events: older than `retention_days`, or the oldest beyond
    # `retention_max_mb` of used database pages (0 disables either), pruned `prune_batch` rows
    # per commit. Under the disk floor delivered events are pruned regardless of age.
    retention_days: float = 30.0
    retention_max_mb: float = 0.0
    prune_batch: int = 500
    maintenance_interval_s: float = 60.0
    # Ed25519 signing in a child process (another core) while the writer hashes and inserts.
    signing_process: bool = True


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    body: bytes


@dataclass(slots=True)
class _Pending:
    draft: Draft
    done: trio.Event = field(default_factory=trio.Event)
    seq: int = 0
    envelope: dict[str, Any] | None = None
    rotate_to: Signer | None = None  # a keyRotated draft: sealed by the old key, then switch
    shed: bool = False
    alert: bool = False  # the outbox's own diskFull/diskSpaceRestored: nobody awaits it


# One event between hashing and signing: (pending, envelope, prev_hash, kid, parts).
_Sealing = tuple[_Pending, dict[str, Any], bytes, str, SealedParts]


@dataclass(frozen=True, slots=True)
class TailCheck:
    """What `check_tail` found. `bad_from` is the first seq of a corrupt tail (None: intact);
    `last_seq`/`last_hash`/`last_envelope` describe the last good row."""

    checked: int
    last_seq: int
    last_hash: bytes
    last_envelope: dict[str, Any] | None
    bad_from: int | None = None
    reason: str = ""


def _row_problem(seq: int, body: Any, keys: dict[str, Any],
                 prev: tuple[int, bytes] | None) -> tuple[str, dict[str, Any] | None]:
    """'' if the row decodes, hashes, signs (for a known kid) and links to `prev` (seq, hash)."""
    try:
        env = decode_envelope(body)
        digest = env["hash"]
        if env.get("seq") != seq:
            return f"row {seq} holds event seq {env.get('seq')!r}", None
        if chain_hash(env["prev_hash"], canonical(env, without=INTEGRITY_FIELDS)) != digest:
            return f"seq {seq}: hash does not match the stored bytes", None
        verify_key = keys.get(env["kid"])
        if verify_key is not None:
            verify_key.verify(digest, env["sig"])
    except _CORRUPT as err:
        return f"seq {seq}: undecodable or unsigned ({type(err).__name__})", None
    if prev is not None:
        prev_seq, prev_hash = prev
        if env["prev_hash"] != prev_hash:
            return f"seq {seq}: does not link to seq {prev_seq}", None
        if seq != prev_seq + 1 and not gap_explained(env, prev_seq, seq):
            return f"seq {seq}: gap after seq {prev_seq}", None
    return "", env


_CORRUPT = (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException,
            nacl.exceptions.CryptoError)


def check_tail(conn: sqlite3.Connection, keys: dict[str, Any], window: int = TAIL_CHECK_ROWS
               ) -> TailCheck:
    """Check the last `window` rows; if the first of them is itself bad, look further back
    (the work grows with the size of the damage, never with the backlog)."""
    while True:
        rows = conn.execute("SELECT seq, body FROM events ORDER BY seq DESC LIMIT ?",
                            (window + 1,)).fetchall()[::-1]
        if not rows:
            return TailCheck(0, 0, GENESIS, None)
        reached_start = len(rows) <= window
        seq0, body0 = rows[0]
        anchor = (0, GENESIS) if seq0 == 1 else None
        problem, env = _row_problem(seq0, body0, keys, anchor)
        if problem and not reached_start:
            window *= 4
            continue
        if problem:  # even the oldest row is bad: the whole table is the damaged tail
            return TailCheck(0, seq0 - 1, GENESIS, None, seq0, problem)
        last = (seq0, env["hash"], env)
        for checked, (seq, body) in enumerate(rows[1:], start=1):
            problem, env = _row_problem(seq, body, keys, last[:2])
            if problem:
                return TailCheck(checked, last[0], last[1], last[2], seq, problem)
            last = (seq, env["hash"], env)
        return TailCheck(len(rows), last[0], last[1], last[2])


def machine_key(machine: dict[str, Any] | None) -> str | None:
    return None if machine is None else f"{machine['port']}/{machine['address']}"


def _connect_raw(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _connect(path: Path) -> sqlite3.Connection:
    try:
        return _connect_raw(path)
    except sqlite3.Error as err:
        raise StoreError(f"cannot open outbox {path}: {err}") from err


def _lock(path: Path) -> int:
    """One writer per outbox file, across processes: two would fork the chain. The lock dies
    with the process (flock), so a SIGKILL never leaves it behind."""
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StoreError(f"outbox {path} is in use by another process (a running gateway?); "
                         f"stop it first") from None
    return fd


def envelope_for(settings: OutboxSettings, epoch: str, draft: Draft, seq: int) -> dict[str, Any]:
    """The unsealed envelope of `draft` at `seq` (docs/uplink-protocol.md section 4)."""
    return {
        "event": draft.type, "channel": draft.channel, "schema_version": draft.schema_version,
        "id": f"{settings.gateway_id}:{epoch}:{seq}", "seq": seq, "epoch": epoch,
        "gateway_id": settings.gateway_id, "venue": settings.venue, "region": settings.region,
        "machine": draft.machine, "timestamp": draft.timestamp, "trace_id": draft.trace_id,
        "data": draft.data,
    }


_INSERT_CHUNK = 500  # rows per INSERT statement (8 parameters each)


def _insert_events(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert rows with one multi-row statement per chunk rather than `executemany`: the
    sqlite3 module releases and re-takes the GIL around every step, and while the trio thread
    is busy each re-take can wait a whole switch interval (5 ms); one step per chunk keeps a
    busy feed or SAS poller from stretching a commit by hundreds of such waits."""
    size = min(_INSERT_CHUNK, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 8)
    for start in range(0, len(rows), size):
        chunk = rows[start:start + size]
        conn.execute(
            "INSERT INTO events (seq, type, channel, machine, captured_at, source_code, hash, "
            "body) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk)),
            [value for row in chunk for value in row])


def _insert_marker(conn: sqlite3.Connection, settings: OutboxSettings, epoch: str,
                   signer: Signer, seq: int, prev: bytes, data: dict[str, Any]) -> None:
    draft = system_draft("lossMarker", data, now=time.time())
    sealed, body = seal(envelope_for(settings, epoch, draft, seq), prev, signer)
    conn.execute("INSERT INTO events (seq, type, channel, machine, captured_at, source_code, "
                 "hash, body) VALUES (?, ?, ?, NULL, ?, NULL, ?, ?)",
                 (seq, draft.type, draft.channel, time.time(), sealed["hash"], body))


def _open_checked(settings: OutboxSettings, signer: Signer) -> tuple[sqlite3.Connection, int]:
    """Create or open the database, check its tail and quarantine a corrupt one. Raises the
    raw sqlite3 errors (the caller tells an unreadable file from other failures)."""
    conn = _connect_raw(settings.path)
    try:
        conn.executescript(SCHEMA)
        columns = {row[1] for row in conn.execute("PRAGMA table_info(machine_state)")}
        if "last_counter" not in columns:  # an outbox from before the poll-journal counter
            conn.execute("ALTER TABLE machine_state ADD COLUMN last_counter INTEGER")
        conn.execute("BEGIN IMMEDIATE")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if "epoch" not in meta:
            meta = {"epoch": os.urandom(8).hex(), "gateway_id": settings.gateway_id,
                    "created_at": str(time.time()), "delivered_seq": "0", "schema": "1"}
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
        elif meta.get("gateway_id") != settings.gateway_id:
            raise StoreError(
                f"outbox {settings.path} belongs to gateway {meta.get('gateway_id')!r}, "
                f"not {settings.gateway_id!r}; refusing to mix chains")
        tail = check_tail(conn, {signer.kid: signer.verify_key})
        env = tail.last_envelope
        if env is not None:
            chain_kid = (env["data"]["new_kid"] if env["event"] == "keyRotated" else env["kid"])
            if chain_kid != signer.kid:
                raise StoreError(
                    f"outbox {settings.path} is signed by key {chain_kid} but the key file holds "
                    f"{signer.kid}. If a key rotation was interrupted, finish it with "
                    f"`casino-gateway keys rotate --key-file KEY --db {settings.path}`; otherwise "
                    f"configure the key this gateway has been using")
        quarantined = 0
        if tail.bad_from is not None:
            quarantined = _quarantine(conn, settings, meta["epoch"], signer, tail)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()
        raise
    return conn, quarantined


def _quarantine(conn: sqlite3.Connection, settings: OutboxSettings, epoch: str, signer: Signer,
                tail: TailCheck) -> int:
    """Move the rows from `tail.bad_from` on to `quarantine`; a lossMarker takes the next seq
    (seqs are never reused: some may have reached the platform) and links to the last good row."""
    count, last_bad = conn.execute("SELECT count(*), max(seq) FROM events WHERE seq >= ?",
                                   (tail.bad_from,)).fetchone()
    conn.execute(
        "INSERT INTO quarantine (seq, type, channel, machine, captured_at, source_code, hash, "
        "body, reason, quarantined_at) SELECT seq, type, channel, machine, captured_at, "
        "source_code, hash, body, ?, ? FROM events WHERE seq >= ?",
        (tail.reason, time.time(), tail.bad_from))
    conn.execute("DELETE FROM events WHERE seq >= ?", (tail.bad_from,))
    # A machine's last recorded exception may be among them: forget it, so that its redelivery
    # is recorded again rather than recognised as already stored.
    conn.execute("UPDATE machine_state SET last_code = NULL, last_payload = NULL "
                 "WHERE last_seq >= ?", (tail.bad_from,))
    _insert_marker(conn, settings, epoch, signer, last_bad + 1, tail.last_hash, {
        "reason": "quarantine", "count": count, "first_seq": tail.bad_from,
        "last_seq": last_bad, "detail": f"corrupt tail moved to the quarantine table: "
                                        f"{tail.reason}"})
    log.warning("outbox corrupt tail quarantined; the chain continues from the last good row",
                path=str(settings.path), first_seq=tail.bad_from, last_seq=last_bad,
                rows=count, reason=tail.reason, last_good_seq=tail.last_seq)
    return count


def _start_over(settings: OutboxSettings, signer: Signer, err: sqlite3.DatabaseError
                ) -> tuple[sqlite3.Connection, int]:
    """SQLite cannot read the file at all: keep it aside for forensics and start a new outbox
    (new epoch) whose first event is a lossMarker naming it."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = settings.path.with_name(f"{settings.path.name}.corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = settings.path.with_name(settings.path.name + suffix)
        if src.exists():
            os.replace(src, aside.with_name(aside.name + suffix))
    log.error("outbox unreadable; moved aside and starting a new outbox (new epoch)",
              path=str(settings.path), moved_to=str(aside), error=str(err))
    conn, _ = _open_checked(settings, signer)
    epoch = conn.execute("SELECT value FROM meta WHERE key='epoch'").fetchone()[0]
    conn.execute("BEGIN IMMEDIATE")
    _insert_marker(conn, settings, epoch, signer, 1, GENESIS, {
        "reason": "database-corrupt",
        "detail": f"unreadable outbox moved to {aside.name}: {err}"})
    conn.execute("COMMIT")
    return conn, 0


class Outbox:
    """The async facade over the outbox database. Create with `Outbox.open`, then start
    `run_writer` in the daemon's nursery before anything appends."""

    def __init__(self, settings: OutboxSettings, signer: Signer, conn: sqlite3.Connection,
                 read_conn: sqlite3.Connection, lock_fd: int | None = None) -> None:
        self.settings = settings
        self.gateway_id = settings.gateway_id
        self._signer = signer
        self._retired_kids: list[str] = []
        self._conn = conn
        self._read = read_conn
        self._lock_fd = lock_fd
        self._read_lock = trio.Lock()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self.epoch: str = meta["epoch"]
        self.delivered_seq: int = int(meta.get("delivered_seq", "0"))
        # The chain continues from the hash inside the last row's signed bytes (checked by
        # `check_tail` in `open`), not from the `hash` column, which is only an index copy.
        row = conn.execute("SELECT seq, body FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        self.last_seq: int = row[0] if row else 0
        self._last_hash: bytes = decode_envelope(row[1])["hash"] if row else GENESIS
        # None in the queue is a wake-up: commit pending bookkeeping (ack marks) promptly.
        self._send, self._receive = trio.open_memory_channel[_Pending | None](settings.queue_max)
        self._appended = trio.Event()
        self._flush_wanted = False
        self._acked: dict[str, int] = {}
        # Redelivered exceptions: machine -> (poll counter, code, payload), and who waits for
        # them to be durable.
        self._redeliveries: dict[str, tuple[int, int, bytes]] = {}
        self._redelivery_waiters: list[trio.Event] = []
        self._delivered_persisted = self.delivered_seq
        self.durable_latencies: deque[float] = deque(maxlen=10_000)
        self.commit_listeners: list[Callable[[list[dict[str, Any]]], None]] = []
        self.commits = 0
        # Disk budget state, owned by the collector task (trio thread).
        self._internal: list[_Pending] = []  # the outbox's own events: committed even when low
        self._held: deque[_Pending] = deque()  # appends waiting for disk space, in order
        self._low_space = False
        self._low_since = 0.0
        self._next_disk_check = -math.inf
        self._shed_unreported = 0
        self._shed_reported_at = 0.0
        self.shed_total = 0
        self.pruned_total = 0
        self.full_disk_commits = 0
        self._prune_more = False
        self._db_free_bytes = 0
        self.free_bytes: int | None = None
        self.quarantined = 0
        self._signing: SignerProcess | None = None
        row = conn.execute("SELECT captured_at FROM events WHERE seq > ? ORDER BY seq LIMIT 1",
                           (self.delivered_seq,)).fetchone()
        self._oldest_undelivered_at: float | None = row[0] if row else None
        # What each machine sent last and whether it was acknowledged before the last stop:
        # the key to recognising a redelivered exception (drivers/redelivery.py).
        rows = conn.execute("SELECT machine, last_seq, last_code, last_payload, acked_seq, "
                            "last_counter FROM machine_state").fetchall()
        # The rules live in drivers/redelivery.py; the outbox only loads and persists them.
        self.redelivery = RedeliveryBook({
            m: Unacknowledged(last, (code, payload or b""), counter)
            for m, last, code, payload, acked, counter in rows
            if code is not None and acked < last})

    # Read-only views of `redelivery` (what is still in question after the restart).
    @property
    def unacknowledged(self) -> dict[str, tuple[int, bytes]]:
        return {m: u.key for m, u in self.redelivery.pending().items()}

    @property
    def unacknowledged_seq(self) -> dict[str, int]:
        return {m: u.seq for m, u in self.redelivery.pending().items()}

    @property
    def unacknowledged_counter(self) -> dict[str, int | None]:
        return {m: u.counter for m, u in self.redelivery.pending().items()}

    @property
    def kids(self) -> list[str]:
        """Key ids of this chain's session: retired ones first, the signing key last."""
        return [*self._retired_kids, self._signer.kid]

    @property
    def signer(self) -> Signer:
        return self._signer

    @property
    def intake_stopped(self) -> bool:
        """True while free space is under the floor (appends of non-droppable events wait)."""
        return self._low_space

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, settings: OutboxSettings, signer: Signer) -> Outbox:
        """Open (or create) the outbox, check its tail, quarantine a corrupt tail.

        Raises StoreError if the outbox belongs to another gateway, is in use by another
        process, or its chain is signed by a different key than `signer` (an interrupted or
        unannounced key change)."""
        settings.path.parent.mkdir(parents=True, exist_ok=True)
        lock_fd = _lock(settings.path)
        try:
            try:
                conn, quarantined = _open_checked(settings, signer)
            except sqlite3.DatabaseError as err:
                if isinstance(err, sqlite3.OperationalError):
                    raise
                conn, quarantined = _start_over(settings, signer, err)
            return_value = cls(settings, signer, conn, _connect(settings.path), lock_fd)
        except sqlite3.Error as err:
            os.close(lock_fd)
            raise StoreError(f"cannot initialise outbox {settings.path}: {err}") from err
        except BaseException:
            os.close(lock_fd)
            raise
        return_value.quarantined = quarantined
        return return_value

    def close(self) -> None:
        """Close the connections and release the outbox lock (the writer must have stopped).
        Acks heard since the writer's last commit are persisted first: the next start must not
        resend what the platform already confirmed."""
        if self.delivered_seq != self._delivered_persisted:
            self._conn.execute("UPDATE meta SET value=? WHERE key='delivered_seq'",
                               (str(self.delivered_seq),))  # autocommit
            self._delivered_persisted = self.delivered_seq
        self._conn.close()
        self._read.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def aclose(self) -> None:
        self.close()

    # -- the write side --------------------------------------------------------------------------

    async def append(self, draft: Draft) -> int:
        """Queue `draft` for the next group commit; return its seq once it is durable.

        While free space is under the floor this waits (the caller's machine keeps its
        exception); a draft of a droppable type is shed instead and 0 is returned."""
        pending = _Pending(draft)
        await self._send.send(pending)
        await pending.done.wait()
        if pending.shed:
            return 0
        if pending.seq == 0:
            raise StoreError("the outbox writer stopped before this event was committed")
        return pending.seq

    async def append_system(self, event_type: str, data: dict[str, Any]) -> int:
        return await self.append(system_draft(event_type, data, now=time.time(),
                                              monotonic=trio.current_time()))

    async def rotate_key(self, new_signer: Signer) -> int:
        """Write `keyRotated` (signed by the current key, naming the new kid and public key) and
        sign every later event with `new_signer`. Returns the keyRotated event's seq once durable.
        Not subject to the disk floor: a rotation is one small event."""
        if new_signer.kid == self._signer.kid:
            raise ValueError("the new key is the key already in use")
        pending = _Pending(system_draft(
            "keyRotated", {"new_kid": new_signer.kid,
                           "new_public_key": bytes(new_signer.verify_key).hex()},
            now=time.time(), monotonic=trio.current_time()), rotate_to=new_signer)
        self._internal.append(pending)
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

    def note_acknowledged(self, machine: str, seq: int) -> None:
        """The machine has been told about `seq`; committed at once (one commit interval), as
        until then a restart cannot tell a redelivery from a new identical exception."""
        if seq > self._acked.get(machine, 0):
            self._acked[machine] = seq
            self.redelivery.acknowledged(machine, seq)
            self._flush_wanted = True
            self._wake()

    async def expect_redelivery(self, machine: str, counter: int, code: int,
                                payload: bytes) -> None:
        """`machine` re-sent its last recorded exception (as `code`, `payload`) in answer to a
        new poll, and is about to be acknowledged: store `counter` as the poll that elicited it,
        and mark it unacknowledged again (a machine that reset re-sends an exception it had
        been told about, as far as the gateway knew), so that a restart before the ACK still
        recognises it. Returns once committed."""
        self._redeliveries[machine] = (counter, code, payload)
        done = trio.Event()
        self._redelivery_waiters.append(done)
        self._flush_wanted = True
        self._wake()
        await done.wait()

    async def mark_delivered(self, seq: int) -> None:
        """The platform acknowledged everything up to `seq` (cumulative)."""
        if seq > self.delivered_seq:
            self.delivered_seq = min(seq, self.last_seq)
            self._flush_wanted = True

    async def run_writer(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                         ) -> None:
        """The one writer: a collector task forms groups while a committer task commits the
        previous one in a worker thread (the fsync blocks), then wakes its appenders. The
        one-slot hand-over keeps seq order and lets the next group fill during a commit."""
        groups_in, groups_out = trio.open_memory_channel[list[_Pending]](0)
        if self.settings.signing_process:
            try:
                self._signing = SignerProcess()
            except OSError as err:
                log.error("outbox cannot start its signing process; signing in-process",
                          error=str(err))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._commit_groups, groups_out)
                task_status.started()
                await self._collect_groups(groups_in)
        finally:
            signing, self._signing = self._signing, None
            if signing is not None:
                signing.close()

    def _idle_wait(self) -> float:
        if self._internal:
            return 0.0
        if self._low_space or self._prune_more:
            return self.settings.disk_check_interval_s
        if self._flush_wanted:
            return 0.5
        return self.settings.maintenance_interval_s

    async def _receive_into(self, batch: list[_Pending]) -> None:
        if self._low_space and len(self._held) >= self.settings.queue_max:
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

    async def _collect_groups(self, groups: trio.MemorySendChannel[list[_Pending]]) -> None:
        batch: list[_Pending] = []
        try:
            while True:
                # Bookkeeping (acks, delivered seq), retention and the disk check ride along with
                # the next group; without traffic they run on the idle timeout.
                idle = True
                with trio.move_on_after(self._idle_wait()):
                    await self._receive_into(batch)
                    idle = False
                if batch or self._flush_wanted or self._internal:
                    with trio.move_on_after(self.settings.commit_interval_s):
                        while len(batch) < self.settings.batch_max:
                            await self._receive_into(batch)
                self._check_disk()
                if self._low_space:
                    self._hold(batch)
                elif self._held:
                    batch[:0] = self._held
                    self._held.clear()
                group, self._internal = self._internal + batch, []
                if idle and not group:
                    self._flush_wanted = True  # maintenance: retention, free-page figures
                if not group and not self._flush_wanted:
                    continue
                self._flush_wanted = False
                batch = []
                await groups.send(group)
        finally:
            for pending in (*batch, *self._held, *self._internal):
                pending.done.set()

    def _hold(self, batch: list[_Pending]) -> None:
        """Under the floor: shed droppable drafts (their appenders get 0), hold the rest."""
        for pending in batch:
            if pending.draft.type in self.settings.droppable_types:
                pending.shed = True
                pending.done.set()
                self._shed_unreported += 1
                self.shed_total += 1
            else:
                self._held.append(pending)
        batch.clear()

    def _check_disk(self) -> None:
        """At most every `disk_check_interval_s`: compare free space with the floor; flip the
        intake state with one log line and one alert event each way."""
        s = self.settings
        now = trio.current_time()
        if (s.min_free_mb <= 0 and not self._low_space) or now < self._next_disk_check:
            return
        self._next_disk_check = now + s.disk_check_interval_s
        try:
            fs_free = s.free_space(s.path.parent)
        except OSError as err:
            log.error("outbox free-space check failed", path=str(s.path.parent), error=str(err))
            return
        free = fs_free + self._db_free_bytes
        self.free_bytes = free
        free_mb, floor = round(free / MB, 1), max(s.min_free_mb, 0.0)
        if not self._low_space and free < floor * MB:
            self._low_space, self._low_since, self._shed_reported_at = True, now, now
            log.warning("outbox disk space under the floor: intake stopped until space returns; "
                        "machines keep their exceptions unacknowledged",
                        path=str(s.path), free_mb=free_mb, floor_mb=floor)
            self._queue_internal("diskFull", {"free_mb": free_mb, "floor_mb": floor,
                                              "path": str(s.path.parent)})
        elif self._low_space and free >= floor * MB * 1.1:
            self._low_space = False
            blocked = round(now - self._low_since, 3)
            log.warning("outbox disk space restored: intake resumed", path=str(s.path),
                        free_mb=free_mb, floor_mb=floor, blocked_s=blocked,
                        held=len(self._held), shed=self.shed_total)
            # A diskFull alert held back by a failed commit goes before the restore.
            if any(p.alert for p in self._held):
                self._internal[:0] = [p for p in self._held if p.alert]
                self._held = deque(p for p in self._held if not p.alert)
            self._report_shed()
            self._queue_internal("diskSpaceRestored", {"free_mb": free_mb, "floor_mb": floor,
                                                       "blocked_s": blocked,
                                                       "shed": self.shed_total})
        elif self._low_space and now - self._shed_reported_at >= SHED_REPORT_INTERVAL_S:
            self._shed_reported_at = now
            self._report_shed()

    def _commit_hit_full_disk(self, batch: list[_Pending], acked: dict[str, int],
                              err: StoreError) -> None:
        """SQLITE_FULL despite the floor (another process filled the disk between two checks,
        or a quota): nothing was written and no seq was used, so the group waits at the head
        of the held events and intake stops as under the floor; it is retried after the next
        disk check finds room (at most once per `disk_check_interval_s`)."""
        for machine, seq in acked.items():
            self._acked[machine] = max(seq, self._acked.get(machine, 0))
        for pending in batch:
            pending.seq, pending.envelope = 0, None
        # A diskSpaceRestored that did not make it is stale; a diskFull waits with the group
        # (and goes first when space returns), so there is never more than one.
        retry = [p for p in batch if not (p.alert and p.draft.type == "diskSpaceRestored")]
        self._held.extendleft(reversed(retry))
        self.full_disk_commits += 1
        self._next_disk_check = trio.current_time() + self.settings.disk_check_interval_s
        alert_waiting = any(p.alert for p in self._held)
        if not self._low_space or not alert_waiting:
            if not self._low_space:
                self._low_space, self._low_since = True, trio.current_time()
                self._shed_reported_at = self._low_since
            log.warning("outbox commit failed: disk full; intake stopped until space returns",
                        path=str(self.settings.path), error=str(err.__cause__ or err))
        if not alert_waiting:
            self._queue_internal("diskFull", {
                "free_mb": round((self.free_bytes or 0) / MB, 1),
                "floor_mb": self.settings.min_free_mb, "path": str(self.settings.path.parent)})

    def _report_shed(self) -> None:
        if self._shed_unreported:
            self._queue_internal("lossMarker", {
                "reason": "shed", "count": self._shed_unreported,
                "detail": f"droppable events ({', '.join(self.settings.droppable_types)}) "
                          f"shed while free space was under {self.settings.min_free_mb} MB"})
            self._shed_unreported = 0

    def _queue_internal(self, event_type: str, data: dict[str, Any]) -> None:
        self._internal.append(_Pending(
            system_draft(event_type, data, now=time.time(), monotonic=trio.current_time()),
            alert=event_type in ("diskFull", "diskSpaceRestored")))

    async def _commit_groups(self, groups: trio.MemoryReceiveChannel[list[_Pending]]) -> None:
        limiter = trio.CapacityLimiter(1)
        async for batch in groups:
            acked, self._acked = self._acked, {}
            redeliveries, self._redeliveries = self._redeliveries, {}
            waiters, self._redelivery_waiters = self._redelivery_waiters, []
            try:
                with trio.CancelScope(shield=True):
                    envelopes = await trio.to_thread.run_sync(
                        self._commit, batch, acked, self.delivered_seq, self._low_space,
                        redeliveries, limiter=limiter)
            except StoreError as err:
                if not _disk_full(err):
                    raise
                self._redeliveries = {**redeliveries, **self._redeliveries}
                self._redelivery_waiters[:0] = waiters
                self._commit_hit_full_disk(batch, acked, err)
                continue
            for waiter in waiters:
                waiter.set()
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

    def _commit(self, batch: list[_Pending], acked: dict[str, int], delivered: int,
                low_space: bool = False,
                redeliveries: dict[str, tuple[int, int, bytes]] | None = None
                ) -> list[dict[str, Any]]:
        """Runs in the writer thread: seal and insert the group in one FULL-sync transaction,
        with a bounded slice of retention."""
        conn = self._conn
        seq, prev, signer = self.last_seq, self._last_hash, self._signer
        retired: list[str] = []
        rows, states, envelopes = [], {}, []
        now = time.time()
        # Hash in chunks and keep up to SIGN_AHEAD chunks at the signing process: it signs one
        # chunk while this thread hashes the next and finishes (packs) the one before.
        chunks: deque[list[_Sealing]] = deque()
        chunk: list[_Sealing] = []
        # A small group is signed here: a round trip to the other process would only add
        # latency at venue load, where throughput is no concern.
        use_process = len(batch) >= SIGN_PROCESS_MIN

        def finish(done: list[_Sealing], sigs: list[bytes]) -> None:
            for (pending, envelope, prev_hash, kid, parts), sig in zip(done, sigs, strict=True):
                sealed, body = finish_seal(envelope, prev_hash, kid, parts, sig)
                digest = parts.digest
                draft = pending.draft
                key = machine_key(draft.machine)
                code = draft.source[0] if draft.source else None
                rows.append((sealed["seq"], draft.type, draft.channel, key, now, code, digest,
                             body))
                if key is not None and draft.source is not None:
                    states[key] = (sealed["seq"], *draft.source)
                pending.seq, pending.envelope = sealed["seq"], sealed
                envelopes.append(sealed)

        def finish_here(done: list[_Sealing]) -> None:
            keys = self._chunk_signers(done, batch)
            finish(done, [k.key.sign(item[4].digest).signature
                          for k, item in zip(keys, done, strict=True)])

        def drain(limit: int) -> None:
            """Finish the oldest outstanding chunks until at most `limit` remain (in order;
            if the signing process fails, the rest are signed here)."""
            while len(chunks) > limit:
                if self._signing is not None and use_process:
                    try:
                        finish(chunks[0], self._signing.receive(len(chunks[0])))
                        chunks.popleft()
                        continue
                    except OSError as err:
                        self._signing_failed(err)
                finish_here(chunks.popleft())

        def send(ready: list[_Sealing], key: Signer) -> None:
            if self._signing is not None and use_process:
                try:
                    self._signing.request(key, [item[4].digest for item in ready])
                except OSError as err:
                    self._signing_failed(err)
            chunks.append(ready)
            drain(SIGN_AHEAD if self._signing is not None and use_process else 0)

        for pending in batch:
            seq += 1
            envelope = envelope_for(self.settings, self.epoch, pending.draft, seq)
            parts = seal_parts(envelope, prev, signer.kid)
            chunk.append((pending, envelope, prev, signer.kid, parts))
            prev = parts.digest
            if pending.rotate_to is not None or len(chunk) >= SIGN_CHUNK:
                send(chunk, signer)
                chunk = []
            if pending.rotate_to is not None:
                retired.append(signer.kid)
                signer = pending.rotate_to
        if chunk:
            send(chunk, signer)
        drain(0)
        try:
            conn.execute("BEGIN")
            _insert_events(conn, rows)
            conn.executemany(
                "INSERT INTO machine_state (machine, last_seq, last_code, last_payload, "
                "last_counter) VALUES (?, ?, ?, ?, ?) ON CONFLICT(machine) DO UPDATE SET "
                "last_seq=excluded.last_seq, last_code=excluded.last_code, "
                "last_payload=excluded.last_payload, last_counter=excluded.last_counter",
                [(k, *state) for k, state in states.items()])
            conn.executemany(
                "INSERT INTO machine_state (machine, last_seq, acked_seq) VALUES (?, 0, ?) "
                "ON CONFLICT(machine) DO UPDATE SET acked_seq=max(acked_seq, excluded.acked_seq)",
                list(acked.items()))
            conn.executemany(
                "UPDATE machine_state SET last_counter = ?, last_code = ?, last_payload = ?, "
                "acked_seq = min(acked_seq, last_seq - 1) WHERE machine = ?",
                [(*state, machine) for machine, state in (redeliveries or {}).items()])
            if delivered != self._delivered_persisted:
                conn.execute("UPDATE meta SET value=? WHERE key='delivered_seq'", (str(delivered),))
            pruned = self._prune(conn, min(delivered, self.last_seq - 1), low_space)
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for pending in batch:
                pending.seq = 0
            raise StoreError(f"outbox commit failed: {err}") from err
        if delivered != self._delivered_persisted or self._oldest_undelivered_at is None:
            row = conn.execute("SELECT captured_at FROM events WHERE seq > ? ORDER BY seq LIMIT 1",
                               (delivered,)).fetchone()
            self._oldest_undelivered_at = row[0] if row else None
        self.last_seq, self._last_hash, self._signer = seq, prev, signer
        self._retired_kids += retired
        self._delivered_persisted = delivered
        self.pruned_total += pruned
        self._prune_more = pruned >= self.settings.prune_batch
        self.commits += 1
        return envelopes

    def _signing_failed(self, err: OSError) -> None:
        """A failed signing process is replaced by signing in-process, with one log line:
        slower, never wedged."""
        log.error("outbox signing process failed; signing in-process from now on",
                  error=str(err))
        signing, self._signing = self._signing, None
        if signing is not None:
            signing.kill()

    def _chunk_signers(self, chunk: list[_Sealing],
                       batch: list[_Pending]) -> list[Signer]:
        """The key each event of `chunk` is signed with: the current one, switched after each
        keyRotated event earlier in the batch."""
        signer, by_pending = self._signer, {}
        for pending in batch:
            by_pending[id(pending)] = signer
            if pending.rotate_to is not None:
                signer = pending.rotate_to
        return [by_pending[id(item[0])] for item in chunk]

    def _prune(self, conn: sqlite3.Connection, prunable: int, low_space: bool) -> int:
        """Delete at most `prune_batch` of the oldest delivered rows (seq <= `prunable`, which
        never includes the newest row: the chain continues from it) if they are older than the
        retention period, the database is over its size cap, or free space is under the floor.
        Bounded work: one primary-key range."""
        s = self.settings
        page_size, pages, free_pages = (conn.execute(f"PRAGMA {name}").fetchone()[0]
                                        for name in ("page_size", "page_count", "freelist_count"))
        self._db_free_bytes = free_pages * page_size
        oldest = conn.execute("SELECT seq, captured_at FROM events ORDER BY seq LIMIT 1").fetchone()
        if oldest is None or oldest[0] > prunable:
            return 0
        upto = min(prunable, oldest[0] + s.prune_batch - 1)
        over_cap = s.retention_max_mb > 0 and (pages - free_pages) * page_size > \
            s.retention_max_mb * MB
        if low_space or over_cap:
            cur = conn.execute("DELETE FROM events WHERE seq BETWEEN ? AND ?", (oldest[0], upto))
        elif s.retention_days > 0 and oldest[1] < time.time() - s.retention_days * 86400:
            cur = conn.execute("DELETE FROM events WHERE seq BETWEEN ? AND ? AND captured_at < ?",
                               (oldest[0], upto, time.time() - s.retention_days * 86400))
        else:
            return 0
        return cur.rowcount

    # -- the read side ---------------------------------------------------------------------------

    async def read_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        async with self._read_lock:
            return await trio.to_thread.run_sync(self._read_after, seq, limit)

    def _read_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        return self._read.execute("SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                                  (seq, limit)).fetchall()

    async def read_time_range(self, since: float, until: float, after_seq: int = 0,
                              limit: int = 1000) -> list[tuple[int, bytes]]:
        """One page (at most `limit` rows, seq > `after_seq`) of the events committed in
        [since, until), Unix seconds; call again from the last seq returned until it is empty.
        Bounded memory whatever the range; the start is a binary search, not a scan."""
        async with self._read_lock:
            return await trio.to_thread.run_sync(self._read_time_range, since, until, after_seq,
                                                 limit)

    def _read_time_range(self, since: float, until: float, after_seq: int, limit: int
                         ) -> list[tuple[int, bytes]]:
        first = _first_seq_at_or_after(self._read, since)
        if first is None:
            return []
        page: list[tuple[int, bytes]] = []
        for seq, body in iter_time_range(self._read, since, until, page=limit,
                                         after=max(after_seq, first - 1)):
            page.append((seq, body))
            if len(page) >= limit:
                break
        return page

    async def wait_appended(self, after_seq: int) -> None:
        while self.last_seq <= after_seq:
            await self._appended.wait()

    def depth(self) -> int:
        return self.last_seq - self.delivered_seq

    def oldest_undelivered_s(self) -> float:
        """Age of the oldest event the platform has not acknowledged (0 when none), as of the
        last commit (acks are persisted with the next group, so this lags by one commit)."""
        if self._oldest_undelivered_at is None or self.depth() <= 0:
            return 0.0
        return round(max(0.0, time.time() - self._oldest_undelivered_at), 3)

    def statistics(self) -> dict[str, Any]:
        lat = sorted(self.durable_latencies)
        return {
            "epoch": self.epoch, "last_seq": self.last_seq, "delivered_seq": self.delivered_seq,
            "depth": self.depth(), "commits": self.commits,
            "durable_p50_ms": _pct(lat, 0.50), "durable_p99_ms": _pct(lat, 0.99),
            "oldest_undelivered_s": self.oldest_undelivered_s(),
            "intake_stopped": self._low_space, "held": len(self._held),
            "free_mb": None if self.free_bytes is None else round(self.free_bytes / MB, 1),
            "shed": self.shed_total, "pruned": self.pruned_total,
            "full_disk_commits": self.full_disk_commits,
            "quarantined_at_open": self.quarantined, "kid": self._signer.kid,
        }


def _disk_full(err: StoreError) -> bool:
    cause = err.__cause__
    return isinstance(cause, sqlite3.OperationalError) and (
        getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        or "disk is full" in str(cause))


def _pct(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] * 1000, 3)


# -- offline access (CLI, demo summary, tests) -----------------------------------------------------

def open_readonly(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise StoreError(f"no outbox at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def iter_envelopes(conn: sqlite3.Connection, after: int = 0) -> Iterator[tuple[int, bytes]]:
    """Every stored event in seq order, fetched in pages so memory stays flat."""
    while True:
        page = conn.execute("SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT 1000",
                            (after,)).fetchall()
        if not page:
            return
        yield from page
        after = page[-1][0]


def _first_seq_at_or_after(conn: sqlite3.Connection, when: float) -> int | None:
    """Binary search over seq for the first row committed at or after `when` (commit times
    increase with seq while the wall clock does not step back): O(log n) primary-key lookups."""
    lo, hi = conn.execute("SELECT min(seq), max(seq) FROM events").fetchone()
    if lo is None:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        row = conn.execute("SELECT seq, captured_at FROM events WHERE seq >= ? ORDER BY seq "
                           "LIMIT 1", (mid,)).fetchone()
        if row[1] < when:
            lo = row[0] + 1
        else:
            hi = mid if row[0] > mid else row[0]
    return lo


def iter_time_range(conn: sqlite3.Connection, since: float, until: float, page: int = 1000,
                    after: int | None = None) -> Iterator[tuple[int, bytes]]:
    """Stored events committed in [since, until) (Unix seconds), in seq order, in pages: memory
    stays flat and the start is found by binary search, not a scan. `after` resumes past a seq."""
    if after is None:
        first = _first_seq_at_or_after(conn, since)
        if first is None:
            return
        after = first - 1
    while True:
        rows = conn.execute("SELECT seq, captured_at, body FROM events WHERE seq > ? "
                            "ORDER BY seq LIMIT ?", (after, page)).fetchall()
        if not rows:
            return
        for seq, captured_at, body in rows:
            if captured_at >= until:
                return
            if captured_at >= since:
                yield seq, body
        after = rows[-1][0]


def outbox_figures(conn: sqlite3.Connection) -> dict[str, Any]:
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    last = conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
    recorded = conn.execute("SELECT count(*) FROM events WHERE source_code IS NOT NULL"
                            ).fetchone()[0]
    delivered = int(meta.get("delivered_seq", "0"))
    oldest = conn.execute("SELECT captured_at FROM events WHERE seq > ? ORDER BY seq LIMIT 1",
                          (delivered,)).fetchone()
    quarantined = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0] \
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name='quarantine'").fetchone() else 0
    return {
        "gateway_id": meta.get("gateway_id"), "epoch": meta.get("epoch"), "events": last,
        "machine_exceptions": recorded, "delivered_seq": delivered, "depth": last - delivered,
        "oldest_undelivered_s": round(time.time() - oldest[0], 3) if oldest else 0.0,
        "quarantined_rows": quarantined,
    }


def describe(body: bytes) -> str:
    env = decode_envelope(body)
    machine = env.get("machine") or {}
    where = f" {machine.get('port')}/{machine.get('address')}" if machine else ""
    return (f"{env['seq']:>8} {env['timestamp']} {env['channel']:<7} {env['event']:<18}{where} "
            f"{json.dumps(env.get('data'), separators=(',', ':'))}")
