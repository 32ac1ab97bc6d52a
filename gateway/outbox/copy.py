"""Consistent copies of a live database with SQLite's online backup API (the writer keeps
writing; the copy is the database as of one moment). Used before a schema upgrade and by
`casino-gateway backup`; the copy is one self-contained file (rollback journal, no -wal), 0600."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from gateway.errors import StoreError

__all__ = ["copy_connection", "online_copy"]


COPY_STEP_PAGES = 16_384  # pages per backup step (64 MiB at 4 KiB pages): progress between them


def copy_connection(conn: sqlite3.Connection, target: Path,
                    progress: Callable[[int, int], None] | None = None) -> None:
    """Copy the database on `conn` to the new file `target` (mode 0600; replaced if present).
    `progress(copied_pages, total_pages)` is called between steps of a large copy."""
    target.unlink(missing_ok=True)
    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    dst = sqlite3.connect(target, isolation_level=None)
    try:
        if progress is None:
            conn.backup(dst)
        else:
            conn.backup(dst, pages=COPY_STEP_PAGES,
                        progress=lambda _status, remaining, total: progress(total - remaining,
                                                                            total))
        dst.execute("PRAGMA journal_mode=DELETE")  # one file: readable anywhere, read-only too
    except sqlite3.Error:
        dst.close()
        target.unlink(missing_ok=True)
        raise
    dst.close()


def online_copy(source: Path, target: Path) -> None:
    """Copy the database file `source` (it may be in use) to `target`."""
    try:
        conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as err:
        raise StoreError(f"cannot open {source} to copy it: {err}") from err
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        copy_connection(conn, target)
    except sqlite3.Error as err:
        raise StoreError(f"cannot copy {source} to {target}: {err}") from err
    finally:
        conn.close()
