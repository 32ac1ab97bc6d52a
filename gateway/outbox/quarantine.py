"""Quarantine: damaged rows leave the chain one by one, and each hole gets a signed lossMarker.

A damaged row (it does not decode, hash or sign) is moved to the `quarantine` table on its own;
the intact rows after it stay where they are. Each run of missing seqs becomes a hole explained
by a `lossMarker` (`reason: quarantine`, `first_seq..last_seq`) appended at the end of the
chain: a seq is never reused, since the rows after the hole may be at the platform already.
`resume_hash` is the `prev_hash` of the row after the hole, so a verifier binds that side of it
(docs/uplink-protocol.md, P-HOLE-1). Found at start (the tail check) or when a row is read back
for the uplink or the feed."""

from __future__ import annotations

import sqlite3
import time

import structlog

from gateway.events import system_draft
from gateway.outbox.epochs import insert_event
from gateway.outbox.ledger import forget_recorded_from
from gateway.outbox.settings import OutboxSettings
from gateway.outbox.tail import Hole, row_problem
from gateway.signing import Signer, decode_envelope

__all__ = ["holes_of", "move_rows", "still_damaged", "write_markers"]

log = structlog.get_logger("gateway.outbox")


def still_damaged(conn: sqlite3.Connection, reported: list[tuple[int, str]]
                  ) -> list[tuple[int, str]]:
    """The reported rows that are still in the chain and still damaged, read again on the
    writer's connection. A reader's report can be late: its snapshot predates the commit that
    already moved the row (two readers met it), or an epoch change (the seq is now another,
    intact row). Only what is damaged now becomes a hole, so one hole gets one marker. A row
    SQLite cannot read stays reported (moving it fails, and the caller starts over)."""
    damaged = []
    for seq, reason in reported:
        try:
            row = conn.execute("SELECT body FROM events WHERE seq = ?", (seq,)).fetchone()
        except sqlite3.OperationalError:
            raise
        except (sqlite3.DatabaseError, UnicodeDecodeError):
            damaged.append((seq, reason))
            continue
        if row is not None and row_problem(seq, row[0], {}, None)[0]:
            damaged.append((seq, reason))
    return damaged


def move_rows(conn: sqlite3.Connection, bad: list[tuple[int, str]]) -> int:
    """Move each damaged row to `quarantine` (inside the caller's transaction)."""
    moved = 0
    for seq, reason in bad:
        conn.execute(
            "INSERT INTO quarantine (seq, type, channel, machine, captured_at, source_code, "
            "hash, body, reason, quarantined_at) SELECT seq, CAST(type AS BLOB), "
            "CAST(channel AS BLOB), CAST(machine AS BLOB), captured_at, source_code, hash, body, "
            "?, ? FROM events WHERE seq = ?", (reason, time.time(), seq))
        moved += conn.execute("DELETE FROM events WHERE seq = ?", (seq,)).rowcount
    if bad:
        forget_recorded_from(conn, min(seq for seq, _ in bad))
    return moved


def write_markers(conn: sqlite3.Connection, settings: OutboxSettings, epoch: str,
                  signer: Signer, head: tuple[int, bytes], top_seq: int, holes: list[Hole]
                  ) -> tuple[int, bytes]:
    """One lossMarker per hole, after `head` (seq, hash), numbered above `top_seq`. Returns the
    new head."""
    seq, prev = head
    seq = max(seq, top_seq)
    # A hole at the end first: its marker then comes right after it (the old form, no
    # resume_hash); the holes with intact rows after them follow.
    for hole in sorted(holes, key=lambda h: (h.resume_hash is not None, h.first_seq)):
        data = {"reason": "quarantine", "count": hole.last_seq - hole.first_seq + 1,
                "first_seq": hole.first_seq, "last_seq": hole.last_seq,
                "detail": f"damaged or missing rows moved aside: {hole.reason}"}
        if hole.resume_hash is not None:
            data["resume_hash"] = hole.resume_hash.hex()
        seq += 1
        prev = insert_event(conn, settings, epoch, signer, seq,
                            prev, system_draft("lossMarker", data, now=time.time()))
        log.warning("outbox rows quarantined; a lossMarker names them", path=str(settings.path),
                    first_seq=hole.first_seq, last_seq=hole.last_seq, marker_seq=seq,
                    reason=hole.reason)
    return seq, prev


def holes_of(conn: sqlite3.Connection, bad: list[tuple[int, str]]) -> list[Hole]:
    """The holes the damaged rows `bad` leave once moved: runs of consecutive seqs, each with the
    prev_hash of the intact row after it (read now; None if there is none)."""
    holes: list[Hole] = []
    for seq, reason in sorted(bad):
        if holes and holes[-1].last_seq == seq - 1:
            holes[-1] = Hole(holes[-1].first_seq, seq, None, holes[-1].reason)
        else:
            holes.append(Hole(seq, seq, None, reason))
    resolved = []
    for hole in holes:
        row = conn.execute("SELECT body FROM events WHERE seq > ? ORDER BY seq LIMIT 1",
                           (hole.last_seq,)).fetchone()
        resume = None
        if row is not None:
            try:
                resume = decode_envelope(row[0])["prev_hash"]
            except (ValueError, KeyError, TypeError):
                resume = None
        resolved.append(Hole(hole.first_seq, hole.last_seq, resume, hole.reason))
    return resolved
