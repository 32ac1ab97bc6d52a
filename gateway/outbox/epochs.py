"""A new epoch in the same outbox file: what a gateway does when events it committed are gone.

Never reuse a (epoch, seq): when the outbox is behind what it once committed (its witness, or
the platform's welcome on a box without one) the seqs after its last row may be at the platform
already. The old epoch ends: a copy of the file is kept aside (`outbox.db.epoch-<old>`), the
events table starts again at seq 1 of a fresh epoch with a signed `lossMarker` naming the old
epoch and the range it no longer has, then the old epoch's intact undelivered events, re-sealed
in the new epoch (`salvaged` counts them; their data and timestamps are unchanged). A marker is
written if and only if something is missing: when every seq the outbox no longer has was
delivered or is salvaged, seq 1 is a signed `epochStarted` instead (the same fields, no range). The machine
ledger is cleared: an exception a machine re-sends is then recorded again, never taken for a
redelivery of a row that is not in this epoch (a possible duplicate, never a loss)."""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from gateway.events import Draft, system_draft
from gateway.outbox.copy import copy_connection
from gateway.outbox.schema import machine_key
from gateway.outbox.sealing import envelope_for
from gateway.outbox.settings import OutboxSettings
from gateway.outbox.tail import row_problem
from gateway.signing import GENESIS, Signer, seal

__all__ = ["EpochChange", "aside_path", "change_epoch", "insert_event", "missing_count",
           "salvage_rows"]

log = structlog.get_logger("gateway.outbox")


@dataclass(frozen=True, slots=True)
class EpochChange:
    """Why the epoch ends and what the platform may be missing of it."""

    reason: str  # rollback (behind the witness or the platform) or database-corrupt
    previous_epoch: str
    first_missing: int | None  # the old epoch's seqs the outbox no longer has (None: none)
    last_missing: int | None
    detail: str
    salvage_after: int = 0  # old rows above this seq are re-sealed into the new epoch
    unknown: bool = False  # what the old epoch had cannot be told (no meta, no witness)


def aside_path(db_path: Path, label: str) -> Path:
    return db_path.with_name(f"{db_path.name}.{label}")


def insert_event(conn: sqlite3.Connection, settings: OutboxSettings, epoch: str, signer: Signer,
                 seq: int, prev: bytes, draft: Draft) -> bytes:
    """Seal `draft` at `seq` after `prev` and insert it; returns its hash."""
    sealed, body = seal(envelope_for(settings, epoch, draft, seq), prev, signer)
    conn.execute("INSERT INTO events (seq, type, channel, machine, captured_at, source_code, "
                 "hash, body) VALUES (?, ?, ?, ?, ?, NULL, ?, ?)",
                 (seq, draft.type, draft.channel, machine_key(draft.machine), time.time(),
                  sealed["hash"], body))
    return sealed["hash"]


def salvage_rows(rows: list[tuple[int, bytes]], keys: dict[str, Any]) -> list[dict[str, Any]]:
    """The envelopes of the rows that are intact by themselves (decode, hash, signature)."""
    good = []
    for seq, body in rows:
        problem, env = row_problem(seq, body, keys, None)
        if not problem and env is not None:
            good.append(env)
    return good


def _draft_of(env: dict[str, Any]) -> Draft:
    return Draft(type=env["event"], channel=env["channel"], schema_version=env["schema_version"],
                 timestamp=env["timestamp"], trace_id=env["trace_id"], data=env["data"],
                 machine=env.get("machine"))


def missing_count(change: EpochChange, salvaged: list[dict[str, Any]]) -> int | None:
    """Seqs of the old epoch in the range the outbox no longer has that no salvaged row
    carries: what is missing (0: nothing; None: cannot be told). Only rows of that epoch
    count: a restored file of an older epoch holds none of the witnessed epoch's seqs."""
    if change.unknown:
        return None
    if change.first_missing is None or change.last_missing is None:
        return 0
    first, last = change.first_missing, change.last_missing
    kept = sum(1 for env in salvaged
               if env.get("epoch") == change.previous_epoch and first <= env["seq"] <= last)
    return max(0, last - first + 1 - kept)


def first_draft(change: EpochChange, salvaged: list[dict[str, Any]]) -> Draft:
    """Seq 1 of the new epoch: a lossMarker if something is (or may be) missing, otherwise an
    epochStarted announcing the change with the same fields but no range."""
    data: dict[str, Any] = {"reason": change.reason, "previous_epoch": change.previous_epoch,
                            "detail": change.detail, "salvaged": len(salvaged)}
    if salvaged:
        data.update(salvaged_first_seq=salvaged[0]["seq"], salvaged_last_seq=salvaged[-1]["seq"])
    count = missing_count(change, salvaged)
    if count == 0:
        return system_draft("epochStarted", data, now=time.time())
    if count is not None:
        assert change.first_missing is not None and change.last_missing is not None
        data.update(first_seq=change.first_missing, last_seq=change.last_missing, count=count)
    return system_draft("lossMarker", data, now=time.time())


def write_new_epoch(conn: sqlite3.Connection, settings: OutboxSettings, signer: Signer,
                    change: EpochChange, salvaged: list[dict[str, Any]]) -> tuple[str, int, bytes]:
    """Inside a transaction on an emptied events table: a fresh epoch, its lossMarker or
    epochStarted (seq 1) and the salvaged events. Returns (epoch, last seq, last hash)."""
    epoch = os.urandom(8).hex()
    conn.execute("UPDATE meta SET value=? WHERE key='epoch'", (epoch,))
    conn.execute("UPDATE meta SET value='0' WHERE key='delivered_seq'")
    prev = insert_event(conn, settings, epoch, signer, 1, GENESIS, first_draft(change, salvaged))
    seq = 1
    for env in salvaged:
        seq += 1
        prev = insert_event(conn, settings, epoch, signer, seq, prev, _draft_of(env))
    return epoch, seq, prev


def change_epoch(conn: sqlite3.Connection, settings: OutboxSettings, signer: Signer,
                 change: EpochChange) -> tuple[str, int, bytes]:
    """End the outbox's epoch (no transaction open on `conn`): keep a copy of the file aside,
    then in one transaction salvage, empty, and start the new epoch."""
    aside = aside_path(settings.path, f"epoch-{change.previous_epoch}")
    if not aside.exists():
        copy_connection(conn, aside)
    conn.execute("BEGIN IMMEDIATE")
    try:
        rows = conn.execute("SELECT seq, body FROM events WHERE seq > ? ORDER BY seq",
                            (change.salvage_after,)).fetchall()
        salvaged = salvage_rows(rows, {signer.kid: signer.verify_key})
        conn.execute("DELETE FROM events")
        conn.execute("DELETE FROM machine_state")
        result = write_new_epoch(conn, settings, signer, change, salvaged)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    log.error("outbox behind what it once committed: a new epoch starts",
              path=str(settings.path), reason=change.reason,
              missing=missing_count(change, salvaged),
              previous_epoch=change.previous_epoch, epoch=result[0],
              first_missing=change.first_missing, last_missing=change.last_missing,
              salvaged=len(salvaged), old_file=str(aside))
    return result
