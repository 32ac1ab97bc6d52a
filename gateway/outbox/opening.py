"""Opening the outbox: the one-writer lock, the schema, the tail check and quarantine.

A torn or corrupt tail is moved to the `quarantine` table and a signed lossMarker takes the seq
after it; a database SQLite cannot read at all is moved aside and a new outbox (new epoch)
starts with a lossMarker naming it, or an epochStarted when nothing is missing (docs/outbox.md)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import msgpack
import structlog

from gateway.errors import StoreError
from gateway.outbox.epochs import (
    EpochChange,
    aside_path,
    change_epoch,
    salvage_rows,
    write_new_epoch,
)
from gateway.outbox.migrations import migrate
from gateway.outbox.quarantine import move_rows, write_markers
from gateway.outbox.schema import connect, connect_raw, lock, read_meta
from gateway.outbox.settings import OutboxSettings
from gateway.outbox.tail import TailCheck, check_tail
from gateway.outbox.witness import Mark, Witness, read_witness
from gateway.signing import Signer, decode_envelope

__all__ = ["Opened", "open_store", "start_over"]

log = structlog.get_logger("gateway.outbox")


@dataclass(frozen=True, slots=True)
class Opened:
    conn: sqlite3.Connection  # the writer's connection
    read_conn: sqlite3.Connection
    lock_fd: int
    quarantined: int  # rows moved to quarantine at this open
    witness: Witness
    witnessed: Mark | None  # what the witness said at open (None: no witness on this box)
    epoch_change: EpochChange | None  # why this open started a new epoch, if it did


def _meta(conn: sqlite3.Connection, settings: OutboxSettings) -> tuple[dict[str, str], bool]:
    """The outbox's identity, created on first open (True); another gateway's outbox is
    refused."""
    meta = read_meta(conn)
    created = "epoch" not in meta
    if created:
        meta = {"epoch": os.urandom(8).hex(), "gateway_id": settings.gateway_id,
                "created_at": str(time.time()), "delivered_seq": "0"}
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", meta.items())
    elif meta.get("gateway_id") != settings.gateway_id:
        raise StoreError(
            f"outbox {settings.path} belongs to gateway {meta.get('gateway_id')!r}, "
            f"not {settings.gateway_id!r}; refusing to mix chains")
    return meta, created


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


def behind_witness(meta: dict[str, str], last_seq: int, created: bool, witnessed: Mark | None,
                   ) -> EpochChange | None:
    """The epoch change an outbox needs at open, if it is behind what this box committed."""
    if witnessed is None or (witnessed.epoch == meta["epoch"] and witnessed.seq <= last_seq):
        return None
    if witnessed.epoch == meta["epoch"]:
        return EpochChange("rollback", witnessed.epoch, last_seq + 1, witnessed.seq,
                           f"the outbox ends at seq {last_seq} but this gateway committed up to "
                           f"seq {witnessed.seq} (torn write-ahead log or restored file)",
                           int(meta.get("delivered_seq", "0")))
    if created:
        return EpochChange("database-lost", witnessed.epoch, 1, witnessed.seq,
                           f"the outbox of epoch {witnessed.epoch} (committed up to seq "
                           f"{witnessed.seq}) is gone; a new outbox started")
    return EpochChange("rollback", witnessed.epoch, 1, witnessed.seq,
                       f"the outbox holds epoch {meta['epoch']} but this gateway last committed "
                       f"seq {witnessed.seq} of epoch {witnessed.epoch} (an older file restored)",
                       int(meta.get("delivered_seq", "0")))


@dataclass(frozen=True, slots=True)
class _Checked:
    conn: sqlite3.Connection
    quarantined: int
    epoch_change: EpochChange | None


def _open_checked(settings: OutboxSettings, signer: Signer, witnessed: Mark | None) -> _Checked:
    """Create or open the database, check its tail, quarantine a corrupt one, and start a new
    epoch if it is behind the witness. Raises the raw sqlite3 errors (the caller tells an
    unreadable file from other failures)."""
    if not settings.path.exists():
        _create(settings.path)
    conn = connect_raw(settings.path)
    try:
        migrate(conn, settings.path)
        conn.execute("BEGIN IMMEDIATE")
        meta, created = _meta(conn, settings)
        tail = check_tail(conn, {signer.kid: signer.verify_key})
        _check_key(settings, signer, tail)
        quarantined = 0
        if tail.bad or tail.holes:
            quarantined = _quarantine(conn, settings, meta["epoch"], signer, tail)
        last_seq = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        conn.execute("COMMIT")
        change = behind_witness(meta, last_seq, created, witnessed)
        if change is not None and _succeeds(conn, meta["epoch"], witnessed):
            change = None  # ahead of the witness: a crash beat the new epoch's witness write
        if change is not None and created:
            conn.execute("BEGIN IMMEDIATE")
            write_new_epoch(conn, settings, signer, change, [])
            conn.execute("COMMIT")
        elif change is not None:
            change_epoch(conn, settings, signer, change)
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()
        raise
    return _Checked(conn, quarantined, change)


def _succeeds(conn: sqlite3.Connection, epoch: str, witnessed: Mark | None) -> bool:
    """True if the file's epoch began by ending the witnessed one: its seq 1 is the new epoch's
    first event naming it as `previous_epoch`, whose range already accounts for every seq of it
    the witness can name (a start-over or epoch change counts from the chain head, which is
    never behind the witness). A crash came before the new epoch's witness was written."""
    if witnessed is None or witnessed.epoch == epoch:
        return False
    row = conn.execute("SELECT body FROM events WHERE seq = 1").fetchone()
    try:
        first = decode_envelope(row[0]) if row else {}
    except (ValueError, UnicodeDecodeError, msgpack.UnpackException):
        return False
    data = first.get("data")
    return first.get("epoch") == epoch and first.get("event") in ("lossMarker", "epochStarted") \
        and isinstance(data, dict) and data.get("previous_epoch") == witnessed.epoch


def _quarantine(conn: sqlite3.Connection, settings: OutboxSettings, epoch: str, signer: Signer,
                tail: TailCheck) -> int:
    """Move each damaged row to `quarantine` and explain each hole with a lossMarker after the
    newest intact row (gateway/outbox/quarantine.py)."""
    moved = move_rows(conn, list(tail.bad))
    write_markers(conn, settings, epoch, signer, (tail.last_seq, tail.last_hash), tail.top_seq,
                  list(tail.holes))
    return moved


_MAGIC = b"SQLite format 3\x00"


_Readable = tuple[dict[str, str], list[tuple[int, bytes]], int | None]


def _readable_rows(path: Path) -> _Readable:
    """What can still be read of a damaged outbox file: its meta, its undelivered rows, one
    primary-key lookup each, skipping any that SQLite cannot read, and its last seq (None if
    that cannot be read). A damaged magic string (the file's first 16 bytes) is mended in a
    scratch copy first."""
    meta, rows, last = _read_rows(path)
    if meta or not path.exists() or path.read_bytes()[:16] == _MAGIC:
        return meta, rows, last
    mended = path.with_name(path.name + ".mended")
    try:
        shutil.copyfile(path, mended)
        wal = path.with_name(path.name + "-wal")
        if wal.exists():
            shutil.copyfile(wal, mended.with_name(mended.name + "-wal"))
        with open(mended, "r+b") as f:
            f.write(_MAGIC)
        return _read_rows(mended)
    finally:
        for suffix in ("", "-wal", "-shm"):
            mended.with_name(mended.name + suffix).unlink(missing_ok=True)


def _mended(settings: OutboxSettings, signer: Signer, witnessed: Mark | None
            ) -> _Checked | None:
    """Only the magic string (the first 16 bytes) is damaged: keep a copy aside, write it back
    and open normally (nothing is lost, so no new epoch). None if that is not the damage."""
    path = settings.path
    try:
        with open(path, "rb") as f:
            head = f.read(len(_MAGIC))
    except OSError:
        return None
    if head == _MAGIC or len(head) < len(_MAGIC):
        return None
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    shutil.copyfile(path, aside_path(path, f"corrupt-{stamp}"))
    with open(path, "r+b") as f:
        f.write(_MAGIC)
        os.fsync(f.fileno())
    log.error("outbox file header damaged; mended (a copy kept aside)", path=str(path))
    try:
        return _open_checked(settings, signer, witnessed)
    except (sqlite3.DatabaseError, UnicodeDecodeError) as err:
        if isinstance(err, sqlite3.OperationalError):
            raise
        return None


def _read_rows(path: Path) -> _Readable:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error:
        return {}, [], None
    rows: list[tuple[int, bytes]] = []
    meta: dict[str, str] = {}
    last: int | None = None
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        delivered = int(meta.get("delivered_seq", "0"))
        last = conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
        for seq in range(delivered + 1, last + 1):
            try:
                row = conn.execute("SELECT seq, body FROM events WHERE seq=?", (seq,)).fetchone()
            except (sqlite3.DatabaseError, UnicodeDecodeError):
                continue
            if row is not None:
                rows.append(row)
    except (sqlite3.Error, ValueError):
        pass  # what was read so far is what can be salvaged
    finally:
        conn.close()
    return meta, rows, last


def start_over(settings: OutboxSettings, signer: Signer, err: Exception,
                witnessed: Mark | None) -> _Checked:
    """SQLite cannot read the file: keep it aside for forensics, start a new outbox (new epoch)
    whose first event is a lossMarker naming it and what it had (an epochStarted if nothing
    is missing), then the intact undelivered events salvaged from it."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = aside_path(settings.path, f"corrupt-{stamp}")
    for suffix in ("", "-wal", "-shm"):
        src = settings.path.with_name(settings.path.name + suffix)
        if src.exists():
            os.replace(src, aside.with_name(aside.name + suffix))
    log.error("outbox unreadable; moved aside and starting a new outbox (new epoch)",
              path=str(settings.path), moved_to=str(aside), error=str(err))
    meta, rows, file_last = _readable_rows(aside)
    salvaged = salvage_rows(rows, {signer.kid: signer.verify_key})
    old_epoch = meta.get("epoch") or (witnessed.epoch if witnessed else "unknown")
    witness_last = witnessed.seq if witnessed and witnessed.epoch == old_epoch else None
    ends = [seq for seq, _ in rows] + [n for n in (file_last, witness_last) if n is not None]
    last = max(ends, default=0)
    first = int(meta.get("delivered_seq", "0") or 0) + 1
    change = EpochChange("database-corrupt", old_epoch, first if last >= first else None,
                         last if last >= first else None,
                         f"unreadable outbox moved to {aside.name}: {err}",
                         unknown=file_last is None and witness_last is None)
    conn = connect_raw(settings.path)
    try:
        migrate(conn, settings.path)
        conn.execute("BEGIN IMMEDIATE")
        _meta(conn, settings)
        write_new_epoch(conn, settings, signer, change, salvaged)
        conn.execute("COMMIT")
    except BaseException:
        conn.close()
        raise
    return _Checked(conn, 0, change)


def open_store(settings: OutboxSettings, signer: Signer,
               damaged: Exception | None = None) -> Opened:
    """Lock, open (or create), check the tail, quarantine a corrupt tail, start a new epoch if
    the outbox is behind its witness; start over from an unreadable file. Raises StoreError
    (another gateway's outbox, in use by another process, signed by another key, or SQLite
    failing)."""
    settings.path.parent.mkdir(parents=True, exist_ok=True)
    lock_fd = lock(settings.path)
    witnessed = read_witness(settings.path)
    try:
        try:
            if damaged is not None:
                raise damaged
            checked = _open_checked(settings, signer, witnessed)
        except (sqlite3.DatabaseError, UnicodeDecodeError) as err:
            if isinstance(err, sqlite3.OperationalError):
                raise  # locked, busy, I/O: not damage, and not for this function to repair
            checked = _mended(settings, signer, witnessed) if damaged is None else None
            if checked is None:
                checked = start_over(settings, signer, err, witnessed)
        read_conn = connect(settings.path)
        witness = Witness(settings.path)
    except sqlite3.Error as err:
        os.close(lock_fd)
        raise StoreError(f"cannot initialise outbox {settings.path}: {err}") from err
    except OSError as err:
        os.close(lock_fd)
        raise StoreError(f"cannot open the outbox witness beside {settings.path}: {err}") \
            from err
    except BaseException:
        os.close(lock_fd)
        raise
    return Opened(checked.conn, read_conn, lock_fd, checked.quarantined, witness, witnessed,
                  checked.epoch_change)
