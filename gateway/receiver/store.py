"""The reference platform's own SQLite store: registered gateways, their keys, received events.

WAL with synchronous=FULL: an ack is only sent after `ingest` / `ingest_frames` has committed. They
are the whole per-frame decision (duplicate / next in chain / gap / bad) in one transaction (one
for several frames when the server has more than one verified frame waiting: a group commit);
synchronous, meant to run in a worker thread, one at a time (the server holds a lock around it).
`verify_events` is the stateless part (decode, hash, signature) and is safe in parallel threads.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import msgpack
import nacl.exceptions
import nacl.signing
import structlog

from gateway.signing import (
    GENESIS,
    INTEGRITY_FIELDS,
    ChainBreak,
    canonical,
    chain_hash,
    decode_envelope,
    key_id,
)

__all__ = ["COMMAND_FIELDS", "Checked", "IngestResult", "ReceiverStore", "token_digest",
           "verify_events"]

log = structlog.get_logger(__name__)

COUNTERS = ("received", "duplicates", "bad_signatures", "chain_breaks", "gaps")

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


@dataclass
class IngestResult:
    """What one batch did. `error` set means: reject the stream (close 4003 or 4002)."""

    high_water: int
    stored: int = 0
    duplicates: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (first missing, last missing)
    error: str | None = None
    error_code: int = 0


class Checked(NamedTuple):
    """One event after the stateless checks: decoded, hash and signature verified (or why not).
    (A NamedTuple: made once per received event, and cheaper to make than a dataclass.)"""

    raw: bytes
    envelope: dict[str, Any] | None  # None: not a msgpack map
    digest: bytes | None  # None: bad hash / bad signature / unknown key, see `problem`
    problem: str | None = None


def _recheck(item: Checked, keys: dict[str, nacl.signing.VerifyKey]) -> Checked:
    assert item.envelope is not None
    try:
        return Checked(item.raw, item.envelope, check_stored(item.envelope, keys))
    except ChainBreak as brk:
        return Checked(item.raw, item.envelope, None, str(brk))


_local = threading.local()


def _packer() -> msgpack.Packer:
    """This thread's Packer (a Packer is not thread-safe; making one per event costs more)."""
    try:
        return _local.packer  # type: ignore[no-any-return]
    except AttributeError:
        _local.packer = msgpack.Packer(use_bin_type=True)
        return _local.packer  # type: ignore[no-any-return]


def check_stored(envelope: dict[str, Any], keys: dict[str, nacl.signing.VerifyKey]) -> bytes:
    """`gateway.signing.check_event(envelope, keys, None)` for an envelope decoded from the stored
    (canonical) bytes, without sorting it again: return its hash or raise ChainBreak.

    Decoding keeps the sent key order, so when the sender sent canonical bytes (it always does)
    packing the decoded map minus hash and sig gives the canonical body with no sort; otherwise
    the body is made by `canonical` as the spec says. Either way the body packs exactly the
    decoded fields, so a good signature authenticates what is stored. Malformed integrity fields
    are a ChainBreak, never another exception."""
    prev, digest, sig, kid = (envelope.get("prev_hash"), envelope.get("hash"),
                              envelope.get("sig"), envelope.get("kid"))
    if not (isinstance(prev, bytes) and isinstance(digest, bytes) and isinstance(sig, bytes)):
        missing = [k for k in ("prev_hash", "hash", "sig") if not isinstance(envelope.get(k), bytes)]
        raise ChainBreak("bad-hash", f"{', '.join(missing)} missing or not bytes")
    fields = dict(envelope)  # keeps the received order
    del fields["hash"], fields["sig"]
    if chain_hash(prev, _packer().pack(fields)) != digest:
        try:
            body = canonical(envelope, without=INTEGRITY_FIELDS)
        except (TypeError, ValueError):  # map keys that do not sort (str and bytes mixed)
            raise ChainBreak("bad-hash", f"seq {envelope.get('seq')}: no canonical form") from None
        if chain_hash(prev, body) != digest:
            raise ChainBreak("bad-hash", f"seq {envelope.get('seq')}")
    verify_key = keys.get(kid) if isinstance(kid, str) else None
    if verify_key is None:
        raise ChainBreak("unknown-key", str(kid))
    try:
        verify_key.verify(digest, sig)
    except (nacl.exceptions.BadSignatureError, ValueError):  # ValueError: not 64 bytes
        raise ChainBreak("bad-signature", f"seq {envelope.get('seq')}") from None
    return digest


def verify_events(raws: list[bytes], keys: dict[str, nacl.signing.VerifyKey]) -> list[Checked]:
    """Decode and verify each event alone (no chain link): safe to run in parallel threads
    (the Ed25519 check, most of the time, runs in libsodium without the GIL)."""
    out = []
    for raw in raws:
        try:
            env = decode_envelope(raw)
        except Exception as err:  # msgpack raises several unrelated types on garbage
            out.append(Checked(raw, None, None, f"event is not a msgpack map: {err}"))
            continue
        try:
            out.append(Checked(raw, env, check_stored(env, keys)))
        except ChainBreak as brk:
            out.append(Checked(raw, env, None, str(brk)))
    return out


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
        error: the events before it, in that frame and the ones before, are committed."""
        now = time.time()
        counts = dict.fromkeys(COUNTERS, 0)
        results: list[IngestResult] = []
        with self._transaction():
            row = self._db.execute(
                "SELECT high_water, last_hash FROM chains WHERE gateway_id = ? AND epoch = ?",
                (gateway_id, epoch)).fetchone()
            high_water, last_hash = (row[0], row[1]) if row else (0, GENESIS)
            rows = []
            for checked in frames:
                result = IngestResult(high_water)
                results.append(result)
                stored_before = counts["received"]
                duplicates_before = counts["duplicates"]
                for item in checked:
                    env = item.envelope
                    if env is None:
                        result.error, result.error_code = item.problem, 4002
                        break
                    seq = env.get("seq")
                    if (not isinstance(seq, int) or isinstance(seq, bool) or seq < 1
                            or env.get("gateway_id") != gateway_id or env.get("epoch") != epoch):
                        result.error = (f"event {env.get('id')!r} does not belong to this stream "
                                        f"({gateway_id}, {epoch}) or has no valid seq")
                        result.error_code = 4002
                        break
                    if seq <= high_water:
                        counts["duplicates"] += 1
                        continue
                    if (item.digest is None and item.problem
                            and item.problem.startswith("unknown-key")):
                        # Perhaps signed by a key announced earlier in this very stream.
                        item = _recheck(item, keys)
                    if item.digest is None:
                        counts["bad_signatures"] += 1
                        result.error, result.error_code = f"seq {seq}: {item.problem}", 4003
                        break
                    if seq != high_water + 1:
                        counts["gaps"] += 1
                        counts["chain_breaks"] += 1
                        result.gaps.append((high_water + 1, seq - 1))
                        log.warning("receiver gap", gateway_id=gateway_id, epoch=epoch,
                                    missing_from=high_water + 1, missing_to=seq - 1)
                    elif env["prev_hash"] != last_hash:
                        # Authentic (signature good) but not linked to what we hold: keep it,
                        # flag it.
                        counts["chain_breaks"] += 1
                        log.warning("receiver chain break", gateway_id=gateway_id, epoch=epoch,
                                    seq=seq)
                    rows.append((gateway_id, epoch, seq, str(env.get("event")), item.raw, now))
                    counts["received"] += 1
                    high_water, last_hash = seq, item.digest
                    if env.get("event") == "keyRotated":
                        self._learn_key(gateway_id, env, keys)
                result.high_water = high_water
                result.stored = counts["received"] - stored_before
                result.duplicates = counts["duplicates"] - duplicates_before
                if result.error:
                    break
            self._db.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", rows)
            self._db.execute(
                "INSERT INTO chains VALUES (?, ?, ?, ?) ON CONFLICT(gateway_id, epoch) DO UPDATE "
                "SET high_water = excluded.high_water, last_hash = excluded.last_hash",
                (gateway_id, epoch, high_water, last_hash))
            self._db.execute("INSERT OR IGNORE INTO counters (gateway_id) VALUES (?)",
                             (gateway_id,))
            self._db.execute(
                "UPDATE counters SET " + ", ".join(f"{c} = {c} + ?" for c in COUNTERS)
                + " WHERE gateway_id = ?", (*counts.values(), gateway_id))
        return results

    def _learn_key(self, gateway_id: str, env: dict[str, Any],
                   keys: dict[str, nacl.signing.VerifyKey]) -> None:
        """A verified keyRotated event (signed by a key we trust) names the gateway's next key:
        trust it from here on, in `keys` (this connection) and in the keys table (durably, in
        the batch's transaction)."""
        data = env.get("data") or {}
        try:
            verify_key = nacl.signing.VerifyKey(bytes.fromhex(str(data.get("new_public_key"))))
        except (ValueError, nacl.exceptions.CryptoError):
            log.warning("receiver keyRotated without a usable public key", gateway_id=gateway_id,
                        seq=env.get("seq"))
            return
        kid = key_id(verify_key)
        if kid != data.get("new_kid"):
            log.warning("receiver keyRotated names a kid that is not its key's",
                        gateway_id=gateway_id, seq=env.get("seq"))
            return
        if self.revoked(gateway_id, kid):
            log.warning("receiver keyRotated names a revoked key; not learnt",
                        gateway_id=gateway_id, kid=kid, seq=env.get("seq"))
            return
        keys[kid] = verify_key
        self._db.execute("INSERT OR REPLACE INTO keys VALUES (?, ?, ?)",
                         (gateway_id, kid, bytes(verify_key).hex()))
        log.info("receiver learned rotated key", gateway_id=gateway_id, kid=kid,
                 seq=env.get("seq"))

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
