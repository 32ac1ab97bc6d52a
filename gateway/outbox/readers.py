"""The one read API over an outbox file: every module outside this package reads through it.

Offline readers (CLI, diag's file figures, the demo's summary, tests, benches) open the file
read-only beside a running gateway (WAL: readers never block the writer). Everything iterates in
pages so memory stays flat however long the backlog."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.errors import StoreError
from gateway.outbox.migrations import stored_version
from gateway.outbox.schema import read_meta
from gateway.outbox.tail import row_problem
from gateway.signing import decode_envelope

__all__ = ["chain_kid", "count_events", "describe", "first_seq_at_or_after", "iter_envelopes",
           "iter_key_rotations", "iter_time_range", "last_event", "last_seq",
           "oldest_undelivered_at", "open_db", "open_readonly", "outbox_figures", "read_meta",
           "recorded_codes", "seq_bounds"]


def open_readonly(path: Path, *, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    if not path.exists():
        raise StoreError(f"no outbox at {path}")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    return conn


def _owner(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def open_db(path: Path) -> sqlite3.Connection:
    """open_readonly, with what stops this user reading the file said in one line (a StoreError,
    which the CLI prints and exits 1 with) instead of a traceback."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise StoreError(f"no outbox at {path}") from None
    except PermissionError:
        raise StoreError(f"cannot reach {path}: permission denied on its directory; run as the "
                         "service user (sudo -u casino-gateway ...), or use casino-gateway "
                         "diag, which shows the outbox to the service's group") from None
    if not os.access(path, os.R_OK):
        raise StoreError(
            f"cannot read {path}: permission denied (mode {stat.S_IMODE(st.st_mode):04o}, owner "
            f"{_owner(st.st_uid)}); run as the service user (sudo -u {_owner(st.st_uid)} "
            "casino-gateway outbox ...), or use casino-gateway diag, which shows the outbox "
            "to the service's group")
    conn = open_readonly(path)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except (sqlite3.DatabaseError, UnicodeDecodeError) as err:  # a damaged schema's text too
        conn.close()
        raise StoreError(f"cannot read {path}: {err} (the WAL files beside it must be "
                         "readable and writable too: run as the service user)") from None
    return conn


def iter_envelopes(conn: sqlite3.Connection, after: int = 0) -> Iterator[tuple[int, bytes]]:
    """Every stored event in seq order, fetched in pages so memory stays flat."""
    while True:
        page = conn.execute("SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT 1000",
                            (after,)).fetchall()
        if not page:
            return
        yield from page
        after = page[-1][0]


def first_seq_at_or_after(conn: sqlite3.Connection, when: float) -> int | None:
    """Binary search over seq for the first row committed at or after `when` (commit times
    increase with seq while the wall clock does not step back): O(log n) primary-key lookups."""
    lo, hi = conn.execute("SELECT min(seq), max(seq) FROM events").fetchone()
    if lo is None:
        return None
    while lo < hi:
        mid = (lo + hi) // 2
        row = conn.execute("SELECT seq, captured_at FROM events WHERE seq >= ? ORDER BY seq "
                           "LIMIT 1", (mid,)).fetchone()
        if row[1] < when:
            lo = row[0] + 1
        else:
            hi = mid if row[0] > mid else row[0]
    return lo


def iter_time_range(conn: sqlite3.Connection, since: float, until: float, page: int = 1000,
                    after: int | None = None) -> Iterator[tuple[int, bytes]]:
    """Stored events committed in [since, until) (Unix seconds), in seq order, in pages: memory
    stays flat and the start is found by binary search, not a scan. `after` resumes past a seq."""
    if after is None:
        first = first_seq_at_or_after(conn, since)
        if first is None:
            return
        after = first - 1
    while True:
        rows = conn.execute("SELECT seq, captured_at, body FROM events WHERE seq > ? "
                            "ORDER BY seq LIMIT ?", (after, page)).fetchall()
        if not rows:
            return
        for seq, captured_at, body in rows:
            if captured_at >= until:
                return
            if captured_at >= since:
                yield seq, body
        after = rows[-1][0]


def time_range_page(conn: sqlite3.Connection, since: float, until: float, after_seq: int,
                    limit: int) -> list[tuple[int, bytes]]:
    """One page (at most `limit` rows, seq > `after_seq`) of the events committed in
    [since, until)."""
    first = first_seq_at_or_after(conn, since)
    if first is None:
        return []
    page: list[tuple[int, bytes]] = []
    for seq, body in iter_time_range(conn, since, until, page=limit,
                                     after=max(after_seq, first - 1)):
        page.append((seq, body))
        if len(page) >= limit:
            break
    return page


def rows_after(conn: sqlite3.Connection, seq: int, limit: int) -> list[tuple[int, bytes]]:
    return conn.execute("SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                        (seq, limit)).fetchall()


def checked_rows_after(conn: sqlite3.Connection, seq: int, limit: int, last_seq: int
                       ) -> tuple[list[tuple[int, bytes]], list[tuple[int, str]]]:
    """`rows_after` up to `last_seq`, each row checked (decodes, holds its seq, hashes to its
    bytes): the intact rows, and the damaged ones (seq, why) for quarantine. A page SQLite
    cannot read falls back to one primary-key lookup per seq, so it costs only its rows."""
    try:
        rows = rows_after(conn, seq, limit)
    except sqlite3.OperationalError:
        raise  # busy, locked, I/O: not damage; never a reason to quarantine
    except (sqlite3.DatabaseError, UnicodeDecodeError):
        rows = []
        for candidate in range(seq + 1, last_seq + 1):
            try:
                row = conn.execute("SELECT seq, body FROM events WHERE seq = ?",
                                   (candidate,)).fetchone()
            except sqlite3.OperationalError:
                raise
            except (sqlite3.DatabaseError, UnicodeDecodeError):
                rows.append((candidate, None))
                continue
            if row is not None:
                rows.append(row)
            if len(rows) >= limit:
                break
    good, bad = [], []
    for row_seq, body in (row for row in rows if row[0] <= last_seq):  # none past the release
        problem = f"seq {row_seq}: unreadable page" if body is None else \
            row_problem(row_seq, body, {}, None)[0]
        if problem:
            bad.append((row_seq, problem))
        else:
            good.append((row_seq, body))
    return good, bad


def last_event(conn: sqlite3.Connection) -> tuple[int, bytes] | None:
    """(seq, body) of the newest stored event."""
    return conn.execute("SELECT seq, body FROM events ORDER BY seq DESC LIMIT 1").fetchone()


def last_seq(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]


def seq_bounds(conn: sqlite3.Connection) -> tuple[int | None, int | None]:
    """(lowest, highest) stored seq; (None, None) when empty."""
    return conn.execute("SELECT min(seq), max(seq) FROM events").fetchone()


def count_events(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM events").fetchone()[0]


def oldest_undelivered_at(conn: sqlite3.Connection, delivered: int) -> float | None:
    """Commit time of the oldest event after `delivered` (None: all delivered)."""
    row = conn.execute("SELECT captured_at FROM events WHERE seq > ? ORDER BY seq LIMIT 1",
                       (delivered,)).fetchone()
    return row[0] if row else None


def recorded_codes(conn: sqlite3.Connection, machine: str) -> list[int]:
    """The machine exception codes recorded for `machine` ("port/address"), in seq order."""
    return [code for (code,) in conn.execute(
        "SELECT source_code FROM events WHERE machine = ? AND source_code IS NOT NULL "
        "ORDER BY seq", (machine,))]


def iter_key_rotations(conn: sqlite3.Connection, *, newest_first: bool = False
                       ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(seq, envelope) of each keyRotated event. An export file (no `type` column) has none
    listed: its keys travel in its own table."""
    if not any(row[1] == "type" for row in conn.execute("PRAGMA table_info(events)")):
        return
    order = "DESC" if newest_first else "ASC"
    for seq, body in conn.execute(f"SELECT seq, body FROM events WHERE type = 'keyRotated' "
                                  f"ORDER BY seq {order}"):
        yield seq, decode_envelope(body)


def chain_kid(conn: sqlite3.Connection) -> str | None:
    """The key the chain is signed with now (None: no event yet)."""
    last = last_event(conn)
    if last is None:
        return None
    env = decode_envelope(last[1])
    return (env.get("data") or {}).get("new_kid") if env.get("event") == "keyRotated" \
        else env.get("kid")


def outbox_figures(conn: sqlite3.Connection) -> dict[str, Any]:
    meta = read_meta(conn)
    last = last_seq(conn)
    recorded = conn.execute("SELECT count(*) FROM events WHERE source_code IS NOT NULL"
                            ).fetchone()[0]
    delivered = int(meta.get("delivered_seq", "0"))
    oldest = oldest_undelivered_at(conn, delivered)
    quarantined = conn.execute("SELECT count(*) FROM quarantine").fetchone()[0] \
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name='quarantine'").fetchone() else 0
    return {
        "gateway_id": meta.get("gateway_id"), "epoch": meta.get("epoch"), "events": last,
        "machine_exceptions": recorded, "delivered_seq": delivered, "depth": last - delivered,
        "oldest_undelivered_s": round(time.time() - oldest, 3) if oldest is not None else 0.0,
        "quarantined_rows": quarantined, "schema": stored_version(conn),
    }


def describe(body: bytes) -> str:
    env = decode_envelope(body)
    machine = env.get("machine") or {}
    where = f" {machine.get('port')}/{machine.get('address')}" if machine else ""
    return (f"{env['seq']:>8} {env['timestamp']} {env['channel']:<7} {env['event']:<18}{where} "
            f"{json.dumps(env.get('data'), separators=(',', ':'))}")
