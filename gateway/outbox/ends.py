"""Both ends of a stored chain, checked against what says where they should be: the retention
anchor (the oldest kept row follows the last pruned one), the witness (the newest row is the
highest seq this box committed) and the delivered mark. For `casino-gateway outbox verify`, which
reports and never crashes: a page SQLite cannot read is reported with the seqs it cost."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from gateway.outbox.schema import read_meta
from gateway.outbox.witness import read_witness
from gateway.signing import decode_envelope

__all__ = ["check_ends", "tolerant_envelopes"]

_PAGE = 1000


def tolerant_envelopes(conn: sqlite3.Connection, unreadable: list[int]
                       ) -> Iterator[tuple[int, bytes]]:
    """Every stored row in seq order; where SQLite cannot read a page, one lookup per seq, the
    seqs that fail appended to `unreadable` (and left out: verify sees the hole)."""
    after = 0
    while True:
        try:
            page = conn.execute("SELECT seq, body FROM events WHERE seq > ? ORDER BY seq "
                                "LIMIT ?", (after, _PAGE)).fetchall()
        except (sqlite3.DatabaseError, UnicodeDecodeError):
            page = _slow_page(conn, after, unreadable)
        if not page:
            return
        yield from page
        after = page[-1][0]


def _slow_page(conn: sqlite3.Connection, after: int, unreadable: list[int]
               ) -> list[tuple[int, bytes]]:
    try:
        top = conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
    except (sqlite3.DatabaseError, UnicodeDecodeError):
        top = after + _PAGE * 10  # the rightmost path is damaged too: probe a bounded range
    page = []
    for seq in range(after + 1, top + 1):
        try:
            row = conn.execute("SELECT seq, body FROM events WHERE seq = ?", (seq,)).fetchone()
        except (sqlite3.DatabaseError, UnicodeDecodeError):
            unreadable.append(seq)
            continue
        if row is not None:
            page.append(row)
            if len(page) >= _PAGE:
                break
    return page


def _meta(conn: sqlite3.Connection) -> dict[str, str]:
    try:
        return read_meta(conn)
    except (sqlite3.DatabaseError, UnicodeDecodeError):
        return {}


def _first_prev(conn: sqlite3.Connection, seq: int) -> bytes | None:
    try:
        row = conn.execute("SELECT body FROM events WHERE seq = ?", (seq,)).fetchone()
        return decode_envelope(row[0])["prev_hash"] if row else None
    except (sqlite3.DatabaseError, ValueError, KeyError, TypeError):
        return None


def _front_explained(conn: sqlite3.Connection, first_missing: int, first_seq: int) -> bool:
    """A quarantine lossMarker names exactly the seqs before the oldest row, with its
    prev_hash as `resume_hash` (the oldest rows were damaged, not lost unexplained)."""
    resume = _first_prev(conn, first_seq)
    try:
        bodies = conn.execute("SELECT body FROM events WHERE type = 'lossMarker'").fetchall()
    except (sqlite3.DatabaseError, UnicodeDecodeError):
        return False
    for (body,) in bodies:
        try:
            data = decode_envelope(body).get("data") or {}
        except ValueError:
            continue
        if (data.get("reason"), data.get("first_seq"), data.get("last_seq")) == \
                ("quarantine", first_missing, first_seq - 1) and resume is not None and \
                data.get("resume_hash") == resume.hex():
            return True
    return False


def check_ends(conn: sqlite3.Connection, path: Path, first_seq: int | None,
               last_seq: int | None) -> list[str]:
    """What is wrong at either end of the chain `first_seq..last_seq` of the outbox at `path`
    (empty: both ends are where the anchor, the witness and the delivered mark put them)."""
    meta = _meta(conn)
    problems = []
    anchor_seq = int(meta.get("anchor_seq", "0"))
    if first_seq is not None and first_seq != anchor_seq + 1 and \
            not _front_explained(conn, anchor_seq + 1, first_seq):
        kept = f"the last pruned row is seq {anchor_seq}" if anchor_seq else "nothing was pruned"
        problems.append(f"oldest row is seq {first_seq} but {kept}: seqs {anchor_seq + 1}.."
                        f"{first_seq - 1} are missing")
    elif first_seq is not None and anchor_seq and \
            _first_prev(conn, first_seq) != bytes.fromhex(meta.get("anchor_hash", "")):
        problems.append(f"oldest row seq {first_seq} does not link to the anchor (the last "
                        f"pruned row, seq {anchor_seq})")
    mark = read_witness(path)
    newest = last_seq or 0
    if mark is not None and mark.epoch == meta.get("epoch") and mark.seq > newest:
        problems.append(f"newest row is seq {newest} but the witness says seq {mark.seq} was "
                        f"committed: seqs {newest + 1}..{mark.seq} are missing")
    delivered = int(meta.get("delivered_seq", "0"))
    if delivered > newest:
        problems.append(f"the delivered mark ({delivered}) is beyond the newest row ({newest})")
    if anchor_seq > delivered:
        problems.append(f"rows up to seq {anchor_seq} were pruned but only {delivered} were "
                        f"delivered")
    return problems
