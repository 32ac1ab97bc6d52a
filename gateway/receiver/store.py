"""The reference platform's own SQLite store: registered gateways, their keys, received events.

WAL with synchronous=FULL: an ack is only sent after `ingest` / `ingest_frames` has committed. They
are the whole per-frame decision (duplicate / next in chain / gap / bad) in one transaction (one
for several frames when the server has more than one verified frame waiting: a group commit);
synchronous, meant to run in a worker thread, one at a time (the server holds a lock around it).
`verify_events` and `decide` (gateway/receiver/verdict.py) are the checks; this module stores.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.signing
import structlog

from gateway.receiver.verdict import (
    COUNTERS,
    Checked,
    IngestResult,
    check_stored,
    decide,
    verify_events,
)
from gateway.signing import GENESIS, key_id

__all__ = ["COMMAND_FIELDS", "Checked", "IngestResult", "ReceiverStore", "check_stored",
           "token_digest", "verify_events"]

log = structlog.get_logger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS gateways (
    gateway_id TEXT PRIMARY KEY,
    token_sha256 TEXT NOT NULL,
    registered_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS keys (
    gateway_id TEXT NOT NULL,
    kid TEXT NOT NULL,
    public_key TEXT NOT NULL,
    PRIMARY KEY (gateway_id, kid)
);
CREATE TABLE IF NOT EXISTS revoked_keys (
    gateway_id TEXT NOT NULL,
    kid TEXT NOT NULL,
    revoked_at REAL NOT NULL,
    PRIMARY KEY (gateway_id, kid)
);
CREATE TABLE IF NOT EXISTS events (
    gateway_id TEXT NOT NULL,
    epoch TEXT NOT NULL,
    seq INTEGER NOT NULL,
    event TEXT NOT NULL,
    body BLOB NOT NULL,
    received_at REAL NOT NULL,
    PRIMARY KEY (gateway_id, epoch, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chains (
    gateway_id TEXT NOT NULL,
    epoch TEXT NOT NULL,
    high_water INTEGER NOT NULL,
    last_hash BLOB NOT NULL,
    PRIMARY KEY (gateway_id, epoch)
);
CREATE TABLE IF NOT EXISTS counters (
    gateway_id TEXT PRIMARY KEY,
    received INTEGER NOT NULL DEFAULT 0,
    duplicates INTEGER NOT NULL DEFAULT 0,
    bad_signatures INTEGER NOT NULL DEFAULT 0,
    chain_breaks INTEGER NOT NULL DEFAULT 0,
    gaps INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    gateway_id TEXT NOT NULL,
    name TEXT NOT NULL,
    target TEXT,                 -- JSON or NULL
    args TEXT NOT NULL,          -- JSON object
    status TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'done')),
    result TEXT,                 -- ok / rejected / failed once done
    reason TEXT,
    data TEXT,                   -- JSON object once done
    created_at REAL NOT NULL,
    done_at REAL
);
CREATE INDEX IF NOT EXISTS commands_open ON commands (gateway_id, status);
"""

COMMAND_FIELDS = ("id", "gateway_id", "name", "target", "args", "status", "result", "reason",
                  "data", "created_at", "done_at")


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA busy_timeout=5000")
    return db


class ReceiverStore:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = _connect(self.path)
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    # -- registration and auth ---------------------------------------------------------------

    def register(self, gateway_id: str, token: str, public_key_hex: str) -> str:
        """Register (or re-key) a gateway; return the key id of `public_key_hex`."""
        verify_key = nacl.signing.VerifyKey(bytes.fromhex(public_key_hex.strip()))
        kid = key_id(verify_key)
        if self.revoked(gateway_id, kid):
            raise ValueError(f"key {kid} of {gateway_id} was revoked; register a new key")
        with self._transaction():
            self._db.execute(
                "INSERT INTO gateways VALUES (?, ?, ?) ON CONFLICT(gateway_id) DO UPDATE SET "
                "token_sha256 = excluded.token_sha256", (gateway_id, token_digest(token), time.time()))
            self._db.execute("INSERT OR REPLACE INTO keys VALUES (?, ?, ?)",
                             (gateway_id, kid, bytes(verify_key).hex()))
            self._db.execute("INSERT OR IGNORE INTO counters (gateway_id) VALUES (?)",
                             (gateway_id,))
        return kid

    def revoke_key(self, gateway_id: str, kid: str) -> bool:
        """A compromised key (docs/uplink-protocol.md section 14): events it signs are refused
        on every connection opened from now on, and no keyRotated can bring it back. Returns
        whether the key was registered."""
        with self._transaction():
            known = self._db.execute("DELETE FROM keys WHERE gateway_id = ? AND kid = ?",
                                     (gateway_id, kid)).rowcount > 0
            self._db.execute("INSERT OR IGNORE INTO revoked_keys VALUES (?, ?, ?)",
                             (gateway_id, kid, time.time()))
        return known

    def revoked(self, gateway_id: str, kid: str) -> bool:
        return self._db.execute("SELECT 1 FROM revoked_keys WHERE gateway_id = ? AND kid = ?",
                                (gateway_id, kid)).fetchone() is not None

    def token_known(self, token: str) -> bool:
        row = self._db.execute("SELECT 1 FROM gateways WHERE token_sha256 = ?",
                               (token_digest(token),)).fetchone()
        return row is not None

    def check_token(self, gateway_id: str, token: str) -> bool:
        row = self._db.execute("SELECT token_sha256 FROM gateways WHERE gateway_id = ?",
                               (gateway_id,)).fetchone()
        presented = token_digest(token)
        if row is None:
            hmac.compare_digest(presented, presented)  # same work either way
            return False
        return hmac.compare_digest(row[0], presented)

    def keys(self, gateway_id: str) -> dict[str, nacl.signing.VerifyKey]:
        out = {}
        for kid, hex_key in self._db.execute(
                "SELECT kid, public_key FROM keys WHERE gateway_id = ?", (gateway_id,)):
            try:
                out[kid] = nacl.signing.VerifyKey(bytes.fromhex(hex_key))
            except (ValueError, nacl.exceptions.CryptoError):
                log.error("receiver bad stored key", gateway_id=gateway_id, kid=kid)
        return out

    def high_water(self, gateway_id: str, epoch: str) -> int:
        row = self._db.execute("SELECT high_water FROM chains WHERE gateway_id = ? AND epoch = ?",
                               (gateway_id, epoch)).fetchone()
        return row[0] if row else 0

    # -- ingest ------------------------------------------------------------------------------

    def ingest(self, gateway_id: str, epoch: str, raws: list[bytes],
               keys: dict[str, nacl.signing.VerifyKey], *,
               checked: list[Checked] | None = None) -> IngestResult:
        """Verify and store one frame in one transaction; stop at the first bad event.

        `checked` is `verify_events(raws, keys)` when the caller already ran it (in parallel
        worker threads); the chain link, duplicates and gaps are always decided here, in order.
        """
        if checked is None:
            checked = verify_events(raws, keys)
        return self.ingest_frames(gateway_id, epoch, [checked], keys)[0]

    def ingest_frames(self, gateway_id: str, epoch: str, frames: list[list[Checked]],
                      keys: dict[str, nacl.signing.VerifyKey]) -> list[IngestResult]:
        """Store several verified frames, in order, in one transaction (a group commit).

        One result per frame, each with the high-water mark after that frame (what its ack
        says); the list ends at the frame holding the first bad event, whose result carries the
        error: the events before it, in that frame and the ones before, are committed. Keys
        learnt from keyRotated events are stored in the same transaction."""
        now = time.time()
        with self._transaction():
            row = self._db.execute(
                "SELECT high_water, last_hash FROM chains WHERE gateway_id = ? AND epoch = ?",
                (gateway_id, epoch)).fetchone()
            high_water, last_hash = (row[0], row[1]) if row else (0, GENESIS)
            decision = decide(gateway_id, epoch, high_water, last_hash, frames, keys,
                              lambda kid: self.revoked(gateway_id, kid))
            self._db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", [
                (gateway_id, epoch, a.seq, a.event, a.raw, now) for a in decision.accepted])
            self._db.executemany("INSERT OR REPLACE INTO keys VALUES (?, ?, ?)", [
                (gateway_id, kid, bytes(key).hex()) for kid, key in decision.learned.items()])
            self._db.execute(
                "INSERT INTO chains VALUES (?, ?, ?, ?) ON CONFLICT(gateway_id, epoch) DO UPDATE "
                "SET high_water = excluded.high_water, last_hash = excluded.last_hash",
                (gateway_id, epoch, decision.high_water, decision.last_hash))
            self._db.execute("INSERT OR IGNORE INTO counters (gateway_id) VALUES (?)",
                             (gateway_id,))
            self._db.execute(
                "UPDATE counters SET " + ", ".join(f"{c} = {c} + ?" for c in COUNTERS)
                + " WHERE gateway_id = ?", (*decision.counts.values(), gateway_id))
        return decision.results

    # -- figures -----------------------------------------------------------------------------

    def figures(self, gateway_id: str | None = None) -> dict[str, Any]:
        """Counters and high-water mark, for one gateway or summed over all of them."""
        db = _connect(self.path)  # its own read connection: safe while a batch is committing
        try:
            where, args = ("WHERE gateway_id = ?", (gateway_id,)) if gateway_id else ("", ())
            sums = db.execute("SELECT " + ", ".join(f"COALESCE(SUM({c}), 0)" for c in COUNTERS)
                              + f" FROM counters {where}", args).fetchone()
            high = db.execute(f"SELECT COALESCE(MAX(high_water), 0) FROM chains {where}",
                              args).fetchone()[0]
            stored = db.execute(f"SELECT COUNT(*) FROM events {where}", args).fetchone()[0]
        finally:
            db.close()
        return {**dict(zip(COUNTERS, sums, strict=True)), "high_water": high, "stored": stored}

    def events(self, gateway_id: str, epoch: str) -> list[tuple[int, bytes]]:
        """Stored (seq, body) in seq order (tests, export)."""
        db = _connect(self.path)
        try:
            return list(db.execute("SELECT seq, body FROM events WHERE gateway_id = ? AND "
                                   "epoch = ? ORDER BY seq", (gateway_id, epoch)))
        finally:
            db.close()

    # -- commands (platform -> gateway) ------------------------------------------------------------

    def add_command(self, gateway_id: str, name: str, target: dict[str, Any] | None = None,
                    args: dict[str, Any] | None = None, command_id: str | None = None) -> str:
        """Queue a command for `gateway_id` (status pending); return its id. An id already used
        raises ValueError: the gateway executes each id at most once, so reusing one is a mistake."""
        command_id = command_id or uuid.uuid4().hex
        try:
            with self._transaction():
                self._db.execute(
                    "INSERT INTO commands (id, gateway_id, name, target, args, status, "
                    "created_at) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                    (command_id, gateway_id, name,
                     None if target is None else json.dumps(target, sort_keys=True),
                     json.dumps(args or {}, sort_keys=True), time.time()))
        except sqlite3.IntegrityError:
            raise ValueError(f"command id {command_id!r} is already used") from None
        return command_id

    def open_commands(self, gateway_id: str, *, include_sent: bool) -> list[dict[str, Any]]:
        """Commands to send to `gateway_id`: pending ones, and (after a reconnect) sent ones whose
        result never came back. Oldest first."""
        statuses = ("pending", "sent") if include_sent else ("pending", "pending")
        rows = self._db.execute(
            f"SELECT {', '.join(COMMAND_FIELDS)} FROM commands WHERE gateway_id = ? AND status "
            "IN (?, ?) ORDER BY created_at, id", (gateway_id, *statuses)).fetchall()
        return [_command_row(row) for row in rows]

    def mark_sent(self, command_ids: list[str]) -> None:
        with self._transaction():
            self._db.executemany("UPDATE commands SET status = 'sent' WHERE id = ? AND "
                                 "status = 'pending'", [(i,) for i in command_ids])

    def complete_command(self, gateway_id: str, command_id: str, result: str, reason: str,
                         data: dict[str, Any]) -> bool:
        """Store a gateway's answer; False if no open command of that gateway has this id (an
        unknown id, another gateway's, or a repeated answer)."""
        with self._transaction():
            cursor = self._db.execute(
                "UPDATE commands SET status = 'done', result = ?, reason = ?, data = ?, "
                "done_at = ? WHERE id = ? AND gateway_id = ? AND status != 'done'",
                (result, reason, json.dumps(data, sort_keys=True, default=repr), time.time(),
                 command_id, gateway_id))
        return cursor.rowcount == 1

    def command(self, command_id: str) -> dict[str, Any] | None:
        """One command (its own read connection: usable from another process or thread)."""
        db = _connect(self.path)
        try:
            row = db.execute(f"SELECT {', '.join(COMMAND_FIELDS)} FROM commands WHERE id = ?",
                             (command_id,)).fetchone()
        finally:
            db.close()
        return None if row is None else _command_row(row)

    def commands(self, gateway_id: str | None = None) -> list[dict[str, Any]]:
        db = _connect(self.path)
        try:
            where, params = ("WHERE gateway_id = ?", (gateway_id,)) if gateway_id else ("", ())
            rows = db.execute(f"SELECT {', '.join(COMMAND_FIELDS)} FROM commands {where} "
                              "ORDER BY created_at, id", params).fetchall()
        finally:
            db.close()
        return [_command_row(row) for row in rows]

    def _transaction(self) -> _Tx:
        return _Tx(self._db)


def _command_row(row: tuple[Any, ...]) -> dict[str, Any]:
    out = dict(zip(COMMAND_FIELDS, row, strict=True))
    for key in ("target", "args", "data"):
        if out[key] is not None:
            out[key] = json.loads(out[key])
    return out


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
