"""Schema versions of the outbox database, and the numbered forward migrations between them.

The version is read at every open. From version 4 on it is SQLite's `PRAGMA user_version` (in the
file header, so `casino-gateway check` reads it without opening the database) and `meta.schema`;
the files of earlier releases all said `meta.schema = "1"` and are recognised by their shape:

    1  meta, events, machine_state                   (the first release)
    2  + quarantine                                  (corrupt tails moved aside, not deleted)
    3  + machine_state.last_counter                  (the poll counter of a recorded exception)
    4  the version recorded in the header and meta   (this module)

An older version is migrated forward in one transaction, after a copy of the file is taken with
SQLite's backup API (`<outbox>.before-schema-N`, mode 0600): the way back if the upgrade has to be
undone (docs/operations.md, "Upgrade and downgrade"). A newer version is refused with one line
(exit 78): an older release must not write into a layout it does not know."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from gateway.errors import ConfigError, StoreError
from gateway.outbox.copy import copy_connection

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration", "OutboxTooNewError", "backup_path",
           "file_version", "migrate", "stored_version", "too_new_message"]

log = structlog.get_logger("gateway.outbox")

SCHEMA_VERSION = 4
_HEADER = b"SQLite format 3\x00"


class OutboxTooNewError(ConfigError):
    """The database was written by a newer release (exit 78: restarting cannot help)."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int  # the version this step produces
    what: str
    apply: Callable[[sqlite3.Connection], None]


def _base_tables(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("""CREATE TABLE IF NOT EXISTS events (
        seq INTEGER PRIMARY KEY, type TEXT NOT NULL, channel TEXT NOT NULL, machine TEXT,
        captured_at REAL NOT NULL, source_code INTEGER, hash BLOB NOT NULL, body BLOB NOT NULL)""")
    conn.execute("""CREATE TABLE IF NOT EXISTS machine_state (
        machine TEXT PRIMARY KEY, last_seq INTEGER NOT NULL, last_code INTEGER,
        last_payload BLOB, acked_seq INTEGER NOT NULL DEFAULT 0)""")


def _add_quarantine(conn: sqlite3.Connection) -> None:
    conn.execute("""CREATE TABLE IF NOT EXISTS quarantine (
        id INTEGER PRIMARY KEY, seq INTEGER, type TEXT, channel TEXT, machine TEXT,
        captured_at REAL, source_code INTEGER, hash BLOB, body BLOB, reason TEXT NOT NULL,
        quarantined_at REAL NOT NULL)""")


def _add_last_counter(conn: sqlite3.Connection) -> None:
    if "last_counter" not in _columns(conn, "machine_state"):
        conn.execute("ALTER TABLE machine_state ADD COLUMN last_counter INTEGER")


def _record_version(conn: sqlite3.Connection) -> None:
    """Nothing to reshape: from now on the version is written, not inferred (see `_stamp`)."""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "meta, events, machine_state", _base_tables),
    Migration(2, "quarantine table", _add_quarantine),
    Migration(3, "machine_state.last_counter", _add_last_counter),
    Migration(4, "schema version recorded", _record_version),
)


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def stored_version(conn: sqlite3.Connection) -> int:
    """The schema version of the database on `conn`; 0 for a new file (no events table)."""
    recorded = conn.execute("PRAGMA user_version").fetchone()[0]
    if recorded:
        return recorded
    tables = _tables(conn)
    if "events" not in tables:
        return 0
    if "quarantine" not in tables:
        return 1
    return 3 if "last_counter" in _columns(conn, "machine_state") else 2


def file_version(path: Path) -> int | None:
    """The version in the file's header without opening it as a database (None: not an
    SQLite file; 0: new or written before version 4). Exact after every migration, which
    checkpoints the header into the main file."""
    with open(path, "rb") as f:
        header = f.read(100)
    if len(header) < 100 or not header.startswith(_HEADER):
        return None
    return int.from_bytes(header[60:64], "big")


def backup_path(path: Path, version: int) -> Path:
    return path.with_name(f"{path.name}.before-schema-{version}")


def too_new_message(path: Path, version: int) -> str:
    from gateway import __version__

    return (f"{path} has schema version {version}, newer than casino-gateway {__version__} "
            f"knows (up to {SCHEMA_VERSION}): a newer release upgraded it; run that release, or "
            f"restore the backup taken before the upgrade (docs/operations.md, \"Upgrade and "
            f"downgrade\")")


def _too_new(path: Path, version: int) -> OutboxTooNewError:
    return OutboxTooNewError("outbox.path", too_new_message(path, version))


def _stamp(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("INSERT INTO meta (key, value) VALUES ('schema', ?) ON CONFLICT(key) DO UPDATE "
                 "SET value = excluded.value", (str(SCHEMA_VERSION),))


def _keep_systemd_waiting(copied: int, total: int) -> None:
    """The copy of a large outbox can outlast systemd's start timeout (90 s by default): each
    step asks for 60 s more and says why in the unit's status (no-op outside systemd)."""
    from gateway.systemd import Notifier

    notifier = Notifier()
    try:
        notifier.notify("EXTEND_TIMEOUT_USEC=60000000",
                        f"STATUS=backing up the outbox before its schema upgrade: "
                        f"{100 * copied // max(total, 1)}%")
    finally:
        notifier.close()


def _backup(conn: sqlite3.Connection, path: Path, version: int) -> Path:
    """A consistent copy of the database as it is, 0600, beside it."""
    target = backup_path(path, version)
    log.warning("outbox schema upgrade: copying the outbox first", path=str(path),
                from_version=version, to_version=SCHEMA_VERSION, copy=str(target))
    try:
        copy_connection(conn, target, progress=_keep_systemd_waiting)
    except sqlite3.Error as err:
        raise StoreError(f"cannot back up {path} before upgrading its schema from version "
                         f"{version}: {err}; nothing was changed") from err
    return target


def _in_transaction(conn: sqlite3.Connection,
                    steps: list[Callable[[sqlite3.Connection], None]]) -> None:
    """Run `steps` and stamp the version in one transaction (all or nothing), then checkpoint
    so that the header on disk says the new version."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for step in steps:
            step(conn)
        _stamp(conn)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Bring the database on `conn` (autocommit, outside a transaction) to SCHEMA_VERSION: a
    new file goes through every step from 1 (so the steps are the one definition of the
    layout), an older one through the steps after its version (after a backup); a newer one
    is refused. Returns the version found."""
    found = stored_version(conn)
    if found > SCHEMA_VERSION:
        raise _too_new(path, found)
    if found == SCHEMA_VERSION:
        return found
    copy = _backup(conn, path, found) if found else None
    steps = [m for m in MIGRATIONS if m.version > found]
    _in_transaction(conn, [step.apply for step in steps])
    if copy is None:
        return found
    log.warning("outbox schema upgraded", path=str(path), from_version=found,
                to_version=SCHEMA_VERSION, steps=[s.what for s in steps], backup=str(copy))
    return found
