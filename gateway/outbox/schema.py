"""The outbox database: its tables, how a connection is made, the one-writer file lock, and the
row-level statements the writer and the open path share (the only place events rows are built)."""

from __future__ import annotations

import fcntl
import os
import sqlite3
from pathlib import Path
from typing import Any

from gateway.errors import StoreError

__all__ = ["SCHEMA", "connect", "connect_raw", "insert_events", "lock", "machine_key", "read_meta"]

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


def machine_key(machine: dict[str, Any] | None) -> str | None:
    return None if machine is None else f"{machine['port']}/{machine['address']}"


def connect_raw(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def connect(path: Path) -> sqlite3.Connection:
    try:
        return connect_raw(path)
    except sqlite3.Error as err:
        raise StoreError(f"cannot open outbox {path}: {err}") from err


def lock(path: Path) -> int:
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


def read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


_INSERT_CHUNK = 500  # rows per INSERT statement (8 parameters each)


def insert_events(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert (seq, type, channel, machine, captured_at, source_code, hash, body) rows with one
    multi-row statement per chunk rather than `executemany`: the sqlite3 module releases and
    re-takes the GIL around every step, and while the trio thread is busy each re-take can wait
    a whole switch interval (5 ms); one step per chunk keeps a busy feed or SAS poller from
    stretching a commit by hundreds of such waits."""
    size = min(_INSERT_CHUNK, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 8)
    for start in range(0, len(rows), size):
        chunk = rows[start:start + size]
        conn.execute(
            "INSERT INTO events (seq, type, channel, machine, captured_at, source_code, hash, "
            "body) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk)),
            [value for row in chunk for value in row])
