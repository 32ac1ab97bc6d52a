"""The SQLite outbox: where every event becomes durable, gets its seq and its place in the chain.

Durability contract (design.md section 4): `await outbox.append(draft)` returns only once the event
is committed with `synchronous=FULL` in WAL mode. One writer task owns the write connection and
commits in groups (every `commit_interval_s` or `batch_max` events, whichever first), so the fsync
is shared by every port. Sequence numbers and the hash chain are assigned inside the writer, in
commit order, so the stored bytes are exactly what is streamed and verified upstream.

Start-up reads only the last row and a few small tables, so it does not grow with the backlog.
"""

from __future__ import annotations

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

import trio

from gateway.errors import StoreError
from gateway.events import Draft, system_draft
from gateway.signing import GENESIS, Signer, decode_envelope, seal

__all__ = ["Outbox", "OutboxSettings", "StoredEvent", "open_readonly"]

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
    acked_seq INTEGER NOT NULL DEFAULT 0
);
"""


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    path: Path
    gateway_id: str
    venue: str = ""
    region: str = ""
    commit_interval_s: float = 0.002
    batch_max: int = 500
    queue_max: int = 10_000


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


def machine_key(machine: dict[str, Any] | None) -> str | None:
    return None if machine is None else f"{machine['port']}/{machine['address']}"


def _connect(path: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
    except sqlite3.Error as err:
        raise StoreError(f"cannot open outbox {path}: {err}") from err
    return conn


class Outbox:
    """The async facade over the outbox database. Create with `Outbox.open`, then start
    `run_writer` in the daemon's nursery before anything appends."""

    def __init__(self, settings: OutboxSettings, signer: Signer, conn: sqlite3.Connection,
                 read_conn: sqlite3.Connection) -> None:
        self.settings = settings
        self.gateway_id = settings.gateway_id
        self._signer = signer
        self._conn = conn
        self._read = read_conn
        self._read_lock = trio.Lock()
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        self.epoch: str = meta["epoch"]
        self.delivered_seq: int = int(meta.get("delivered_seq", "0"))
        row = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        self.last_seq: int = row[0] if row else 0
        self._last_hash: bytes = row[1] if row else GENESIS
        self._oldest_undelivered_at: float | None = None
        # None in the queue is a wake-up: commit pending bookkeeping (ack marks) promptly.
        self._send, self._receive = trio.open_memory_channel[_Pending | None](settings.queue_max)
        self._appended = trio.Event()
        self._flush_wanted = False
        self._acked: dict[str, int] = {}
        self._delivered_persisted = self.delivered_seq
        self.durable_latencies: deque[float] = deque(maxlen=10_000)
        self.commit_listeners: list[Callable[[list[dict[str, Any]]], None]] = []
        self.commits = 0
        # What each machine sent last and whether it was acknowledged before the last stop:
        # the key to recognising a redelivered exception (design.md section 4 rule 3).
        rows = conn.execute("SELECT machine, last_seq, last_code, last_payload, acked_seq "
                            "FROM machine_state").fetchall()
        self.unacknowledged: dict[str, tuple[int, bytes]] = {
            m: (code, payload or b"") for m, last, code, payload, acked in rows
            if code is not None and acked < last}
        self.unacknowledged_seq: dict[str, int] = {
            m: last for m, last, code, _, acked in rows if code is not None and acked < last}

    @property
    def kids(self) -> list[str]:
        return [self._signer.kid]

    @property
    def signer(self) -> Signer:
        return self._signer

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, settings: OutboxSettings, signer: Signer) -> Outbox:
        settings.path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(settings.path)
        try:
            conn.executescript(SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            if "epoch" not in meta:
                conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", [
                    ("epoch", os.urandom(8).hex()), ("gateway_id", settings.gateway_id),
                    ("created_at", str(time.time())), ("delivered_seq", "0"),
                    ("schema", "1"),
                ])
            elif meta.get("gateway_id") != settings.gateway_id:
                conn.execute("ROLLBACK")
                raise StoreError(
                    f"outbox {settings.path} belongs to gateway {meta.get('gateway_id')!r}, "
                    f"not {settings.gateway_id!r}; refusing to mix chains")
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            raise StoreError(f"cannot initialise outbox {settings.path}: {err}") from err
        return cls(settings, signer, conn, _connect(settings.path))

    async def aclose(self) -> None:
        self._conn.close()
        self._read.close()

    # -- the write side --------------------------------------------------------------------------

    async def append(self, draft: Draft) -> int:
        """Queue `draft` for the next group commit; return its seq once it is durable."""
        pending = _Pending(draft)
        await self._send.send(pending)
        await pending.done.wait()
        if pending.seq == 0:
            raise StoreError("the outbox writer stopped before this event was committed")
        return pending.seq

    async def append_system(self, event_type: str, data: dict[str, Any]) -> int:
        return await self.append(system_draft(event_type, data, now=time.time(),
                                              monotonic=trio.current_time()))

    def note_acknowledged(self, machine: str, seq: int) -> None:
        """The machine has been told about `seq`; committed at once (one commit interval), as
        until then a restart cannot tell a redelivery from a new identical exception."""
        if seq > self._acked.get(machine, 0):
            self._acked[machine] = seq
            self.unacknowledged.pop(machine, None)
            self._flush_wanted = True
            try:
                self._send.send_nowait(None)  # wake the collector; a full queue commits soon anyway
            except trio.WouldBlock:
                pass

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
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._commit_groups, groups_out)
            task_status.started()
            await self._collect_groups(groups_in)

    async def _collect_groups(self, groups: trio.MemorySendChannel[list[_Pending]]) -> None:
        batch: list[_Pending] = []
        try:
            while True:
                # Bookkeeping (acks, delivered seq) rides along with the next group; with no
                # traffic it is flushed after at most half a second.
                with trio.move_on_after(0.5 if self._flush_wanted else math.inf):
                    item = await self._receive.receive()
                    if item is not None:
                        batch.append(item)
                if batch or self._flush_wanted:
                    with trio.move_on_after(self.settings.commit_interval_s):
                        while len(batch) < self.settings.batch_max:
                            item = await self._receive.receive()
                            if item is not None:
                                batch.append(item)
                if not batch and not self._flush_wanted:
                    continue
                self._flush_wanted = False
                await groups.send(batch)
                batch = []
        finally:
            for pending in batch:
                pending.done.set()

    async def _commit_groups(self, groups: trio.MemoryReceiveChannel[list[_Pending]]) -> None:
        limiter = trio.CapacityLimiter(1)
        async for batch in groups:
            acked, self._acked = self._acked, {}
            with trio.CancelScope(shield=True):
                envelopes = await trio.to_thread.run_sync(
                    self._commit, batch, acked, self.delivered_seq, limiter=limiter)
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

    def _commit(self, batch: list[_Pending], acked: dict[str, int], delivered: int
                ) -> list[dict[str, Any]]:
        """Runs in the writer thread: seal and insert the group in one FULL-sync transaction."""
        conn = self._conn
        seq, prev = self.last_seq, self._last_hash
        rows, states, envelopes = [], {}, []
        for pending in batch:
            draft = pending.draft
            seq += 1
            envelope = {
                "event": draft.type, "channel": draft.channel,
                "schema_version": draft.schema_version,
                "id": f"{self.gateway_id}:{self.epoch}:{seq}", "seq": seq, "epoch": self.epoch,
                "gateway_id": self.gateway_id, "venue": self.settings.venue,
                "region": self.settings.region, "machine": draft.machine,
                "timestamp": draft.timestamp, "trace_id": draft.trace_id, "data": draft.data,
            }
            sealed, body = seal(envelope, prev, self._signer)
            prev = sealed["hash"]
            key = machine_key(draft.machine)
            code = draft.source[0] if draft.source else None
            rows.append((seq, draft.type, draft.channel, key, time.time(), code, prev, body))
            if key is not None and draft.source is not None:
                states[key] = (seq, draft.source[0], draft.source[1])
            pending.seq, pending.envelope = seq, sealed
            envelopes.append(sealed)
        try:
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO events (seq, type, channel, machine, captured_at, "
                             "source_code, hash, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            conn.executemany(
                "INSERT INTO machine_state (machine, last_seq, last_code, last_payload) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(machine) DO UPDATE SET last_seq=excluded.last_seq,"
                " last_code=excluded.last_code, last_payload=excluded.last_payload",
                [(k, s, c, p) for k, (s, c, p) in states.items()])
            conn.executemany(
                "INSERT INTO machine_state (machine, last_seq, acked_seq) VALUES (?, 0, ?) "
                "ON CONFLICT(machine) DO UPDATE SET acked_seq=max(acked_seq, excluded.acked_seq)",
                list(acked.items()))
            if delivered != self._delivered_persisted:
                conn.execute("UPDATE meta SET value=? WHERE key='delivered_seq'", (str(delivered),))
            conn.execute("COMMIT")
        except sqlite3.Error as err:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"outbox commit failed: {err}") from err
        self.last_seq, self._last_hash = seq, prev
        self._delivered_persisted = delivered
        self.commits += 1
        return envelopes

    # -- the read side ---------------------------------------------------------------------------

    async def read_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        async with self._read_lock:
            return await trio.to_thread.run_sync(self._read_after, seq, limit)

    def _read_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        return self._read.execute("SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                                  (seq, limit)).fetchall()

    async def wait_appended(self, after_seq: int) -> None:
        while self.last_seq <= after_seq:
            await self._appended.wait()

    def depth(self) -> int:
        return self.last_seq - self.delivered_seq

    def statistics(self) -> dict[str, Any]:
        lat = sorted(self.durable_latencies)
        return {
            "epoch": self.epoch, "last_seq": self.last_seq, "delivered_seq": self.delivered_seq,
            "depth": self.depth(), "commits": self.commits,
            "durable_p50_ms": _pct(lat, 0.50), "durable_p99_ms": _pct(lat, 0.99),
        }


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


def outbox_figures(conn: sqlite3.Connection) -> dict[str, Any]:
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    last = conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
    recorded = conn.execute("SELECT count(*) FROM events WHERE source_code IS NOT NULL"
                            ).fetchone()[0]
    delivered = int(meta.get("delivered_seq", "0"))
    oldest = conn.execute("SELECT captured_at FROM events WHERE seq = ?", (delivered + 1,)
                          ).fetchone()
    return {
        "gateway_id": meta.get("gateway_id"), "epoch": meta.get("epoch"), "events": last,
        "machine_exceptions": recorded, "delivered_seq": delivered, "depth": last - delivered,
        "oldest_undelivered_s": round(time.time() - oldest[0], 3) if oldest else 0.0,
    }


def describe(body: bytes) -> str:
    env = decode_envelope(body)
    machine = env.get("machine") or {}
    where = f" {machine.get('port')}/{machine.get('address')}" if machine else ""
    return (f"{env['seq']:>8} {env['timestamp']} {env['channel']:<7} {env['event']:<18}{where} "
            f"{json.dumps(env.get('data'), separators=(',', ':'))}")
