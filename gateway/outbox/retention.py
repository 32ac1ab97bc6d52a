"""Retention: delivered events leave by age, by size, or under the disk floor, a slice per commit.

Undelivered events are never deleted, nor the newest row (the chain continues from it). Bounded
work per commit: one primary-key range of at most `prune_batch` rows, always the oldest, and the
last pruned row's seq and hash recorded as the anchor (meta `anchor_seq`, `anchor_hash`)."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from gateway.outbox.settings import MB, RETENTION_DISK_SHARE, OutboxSettings

__all__ = ["Pruned", "cap_bytes", "prune", "record_anchor"]


@dataclass(frozen=True, slots=True)
class Pruned:
    rows: int
    db_free_bytes: int  # free pages inside the database (they count as free space)


def cap_bytes(settings: OutboxSettings) -> int:
    """The size cap of delivered events in bytes (0: none): `retention_max_mb`, or by default
    RETENTION_DISK_SHARE of the filesystem holding the outbox."""
    if settings.retention_max_mb is not None:
        return int(settings.retention_max_mb * MB)
    return int(settings.filesystem_size(settings.path.parent) * RETENTION_DISK_SHARE)


def _pages(conn: sqlite3.Connection) -> tuple[int, int, int]:
    page_size, pages, free_pages = (conn.execute(f"PRAGMA {name}").fetchone()[0]
                                    for name in ("page_size", "page_count", "freelist_count"))
    return page_size, pages, free_pages


def prune(conn: sqlite3.Connection, settings: OutboxSettings, prunable: int,
          low_space: bool, cap: int) -> Pruned:
    """Delete at most `prune_batch` of the oldest delivered rows (seq <= `prunable`) if they are
    older than the retention period, the database is over its size cap, or free space is under
    the floor. `cap` is `cap_bytes(settings)` (0: no cap). Runs inside the commit's transaction."""
    s = settings
    page_size, pages, free_pages = _pages(conn)
    free = free_pages * page_size
    oldest = conn.execute("SELECT seq, captured_at FROM events ORDER BY seq LIMIT 1").fetchone()
    if oldest is None or oldest[0] > prunable:
        return Pruned(0, free)
    upto = min(prunable, oldest[0] + s.prune_batch - 1)
    over_cap = cap > 0 and (pages - free_pages) * page_size > cap
    cutoff = time.time() - s.retention_days * 86400
    if not (low_space or over_cap):
        if not (s.retention_days > 0 and oldest[1] < cutoff):
            return Pruned(0, free)
        # Always a prefix of the table: the anchor then says where the kept chain starts.
        upto = conn.execute("SELECT max(seq) FROM events WHERE seq BETWEEN ? AND ? AND "
                            "captured_at < ?", (oldest[0], upto, cutoff)).fetchone()[0]
    record_anchor(conn, upto)
    cur = conn.execute("DELETE FROM events WHERE seq BETWEEN ? AND ?", (oldest[0], upto))
    return Pruned(cur.rowcount, free)


def record_anchor(conn: sqlite3.Connection, upto: int) -> None:
    """Before rows up to `upto` are pruned: the seq and hash of the last of them (`anchor_seq`,
    `anchor_hash` in meta), so `outbox verify` can tell pruned rows from rows gone missing: the
    oldest kept row must be the next seq and link to that hash."""
    row = conn.execute("SELECT seq, hash FROM events WHERE seq <= ? ORDER BY seq DESC LIMIT 1",
                       (upto,)).fetchone()
    if row is None:
        return
    conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
                     "SET value = excluded.value",
                     [("anchor_seq", str(row[0])), ("anchor_hash", bytes(row[1]).hex())])
