"""Opening the outbox: the one-writer lock, the schema, the tail check and quarantine.

A torn or corrupt tail is moved to the `quarantine` table and a signed lossMarker takes the seq
after it; a database SQLite cannot read at all is moved aside and a new outbox (new epoch)
starts with a lossMarker naming it (docs/outbox.md)."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from gateway.errors import StoreError
from gateway.events import system_draft
from gateway.outbox.ledger import forget_recorded_from
from gateway.outbox.migrations import migrate
from gateway.outbox.schema import connect, connect_raw, lock, read_meta
from gateway.outbox.sealing import envelope_for
from gateway.outbox.settings import OutboxSettings
from gateway.outbox.tail import TailCheck, check_tail
from gateway.signing import GENESIS, Signer, seal

__all__ = ["Opened", "open_store"]

log = structlog.get_logger("gateway.outbox")


@dataclass(frozen=True, slots=True)
class Opened:
    conn: sqlite3.Connection  # the writer's connection
    read_conn: sqlite3.Connection
    lock_fd: int
    quarantined: int  # rows moved to quarantine at this open


def _insert_marker(conn: sqlite3.Connection, settings: OutboxSettings, epoch: str,
                   signer: Signer, seq: int, prev: bytes, data: dict[str, Any]) -> None:
    draft = system_draft("lossMarker", data, now=time.time())
    sealed, body = seal(envelope_for(settings, epoch, draft, seq), prev, signer)
    conn.execute("INSERT INTO events (seq, type, channel, machine, captured_at, source_code, "
                 "hash, body) VALUES (?, ?, ?, NULL, ?, NULL, ?, ?)",
                 (seq, draft.type, draft.channel, time.time(), sealed["hash"], body))


def _meta(conn: sqlite3.Connection, settings: OutboxSettings) -> dict[str, str]:
    """The outbox's identity, created on first open; another gateway's outbox is refused."""
    meta = read_meta(conn)
    if "epoch" not in meta:
        meta = {"epoch": os.urandom(8).hex(), "gateway_id": settings.gateway_id,
                "created_at": str(time.time()), "delivered_seq": "0"}
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
    elif meta.get("gateway_id") != settings.gateway_id:
        raise StoreError(
            f"outbox {settings.path} belongs to gateway {meta.get('gateway_id')!r}, "
            f"not {settings.gateway_id!r}; refusing to mix chains")
    return meta


def _check_key(settings: OutboxSettings, signer: Signer, tail: TailCheck) -> None:
    """The chain must continue with the key it was signed with (or announced by keyRotated)."""
    env = tail.last_envelope
    if env is None:
        return
    chain_kid = env["data"]["new_kid"] if env["event"] == "keyRotated" else env["kid"]
    if chain_kid != signer.kid:
        raise StoreError(
            f"outbox {settings.path} is signed by key {chain_kid} but the key file holds "
            f"{signer.kid}. If a key rotation was interrupted, finish it with "
            f"`casino-gateway keys rotate --key-file KEY --db {settings.path}`; otherwise "
            f"configure the key this gateway has been using")


def _create(path: Path) -> None:
    """A new outbox is built beside its place and renamed into it: a process killed during its
    first start leaves no file, or a complete one, never an outbox without tables."""
    building = path.with_name(path.name + ".new")
    for suffix in ("", "-wal", "-shm", "-journal"):
        building.with_name(building.name + suffix).unlink(missing_ok=True)
    conn = connect_raw(building)
    try:
        migrate(conn, building)
    finally:
        conn.close()  # the last connection checkpoints and removes the -wal
    os.replace(building, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _open_checked(settings: OutboxSettings, signer: Signer) -> tuple[sqlite3.Connection, int]:
    """Create or open the database, check its tail and quarantine a corrupt one. Raises the
    raw sqlite3 errors (the caller tells an unreadable file from other failures)."""
    if not settings.path.exists():
        _create(settings.path)
    conn = connect_raw(settings.path)
    try:
        migrate(conn, settings.path)
        conn.execute("BEGIN IMMEDIATE")
        meta = _meta(conn, settings)
        tail = check_tail(conn, {signer.kid: signer.verify_key})
        _check_key(settings, signer, tail)
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
    forget_recorded_from(conn, tail.bad_from)
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
    epoch = read_meta(conn)["epoch"]
    conn.execute("BEGIN IMMEDIATE")
    _insert_marker(conn, settings, epoch, signer, 1, GENESIS, {
        "reason": "database-corrupt",
        "detail": f"unreadable outbox moved to {aside.name}: {err}"})
    conn.execute("COMMIT")
    return conn, 0


def open_store(settings: OutboxSettings, signer: Signer) -> Opened:
    """Lock, open (or create), check the tail, quarantine a corrupt tail; start over from an
    unreadable file. Raises StoreError (another gateway's outbox, in use by another process,
    signed by another key, or SQLite failing)."""
    settings.path.parent.mkdir(parents=True, exist_ok=True)
    lock_fd = lock(settings.path)
    try:
        try:
            conn, quarantined = _open_checked(settings, signer)
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError):
                raise
            conn, quarantined = _start_over(settings, signer, err)
        read_conn = connect(settings.path)
    except sqlite3.Error as err:
        os.close(lock_fd)
        raise StoreError(f"cannot initialise outbox {settings.path}: {err}") from err
    except BaseException:
        os.close(lock_fd)
        raise
    return Opened(conn, read_conn, lock_fd, quarantined)
