"""How much outage the disk can still hold: the outbox file's size per event, the free space
beside it, and at the current event rate the hours of uplink outage until the disk floor.

One computation for `diag status` (gateway/control.py) and /metrics (gateway/monitor.py), so the
two never disagree. Reads the file system and the database: run it in a worker thread. A
failure is reported in the figures, never raised (diag must work when the disk is in trouble).
"""

from __future__ import annotations

import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import StoreError
from gateway.outbox import readers

__all__ = ["Footprint", "measure"]


@dataclass(frozen=True, slots=True)
class Footprint:
    db_bytes: int | None = None          # the database and its WAL
    rows: int = 0                        # events kept (delivered ones until retention)
    disk_free_bytes: int | None = None
    oldest_undelivered_at: float | None = None
    error: str | None = None

    @property
    def bytes_per_event(self) -> float | None:
        return self.db_bytes / self.rows if self.rows and self.db_bytes else None

    def outage_hours_left(self, events_per_s: float) -> float | None:
        """Hours of uplink outage the free space holds at `events_per_s` (None: no estimate,
        e.g. no events lately or an empty outbox)."""
        per_event = self.bytes_per_event
        if events_per_s <= 0 or not per_event or self.disk_free_bytes is None:
            return None
        return round(self.disk_free_bytes / (per_event * events_per_s * 3600), 1)


def measure(path: Path, delivered_seq: int) -> Footprint:
    """The outbox at `path` as it is on disk now."""
    try:
        free = shutil.disk_usage(path.parent).free
        size = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
        conn = readers.open_readonly(path, busy_timeout_ms=2000)
        try:
            low, high = readers.seq_bounds(conn)
            oldest = readers.oldest_undelivered_at(conn, delivered_seq)
        finally:
            conn.close()
    except (OSError, sqlite3.Error, StoreError) as err:
        return Footprint(error=str(err))
    rows = (high - low + 1) if low is not None and high is not None else 0
    return Footprint(db_bytes=size, rows=rows, disk_free_bytes=free, oldest_undelivered_at=oldest)
