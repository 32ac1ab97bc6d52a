"""The start-up check of the last rows: decode, hash, link, signature for known keys.

Not `PRAGMA quick_check`, which reads the whole file: the work grows with the size of the damage,
never with the backlog, so a gateway with months of undelivered events still starts at once."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

import msgpack
import nacl.exceptions

from gateway.signing import GENESIS, INTEGRITY_FIELDS, canonical, chain_hash, decode_envelope
from gateway.verify import gap_explained

__all__ = ["TAIL_CHECK_ROWS", "TailCheck", "check_tail", "row_problem"]

TAIL_CHECK_ROWS = 64  # rows checked at start-up; the window grows only while its first row is bad

_CORRUPT = (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException,
            nacl.exceptions.CryptoError)


@dataclass(frozen=True, slots=True)
class Hole:
    """Seqs missing from the chain that no lossMarker explains yet: damaged rows (quarantined)
    or rows that are simply gone. `resume_hash` is the prev_hash of the row after the hole
    (None: the hole is at the end)."""

    first_seq: int
    last_seq: int
    resume_hash: bytes | None
    reason: str


@dataclass(frozen=True, slots=True)
class TailCheck:
    """What `check_tail` found. `bad` lists the damaged rows (seq, why), each quarantined on its
    own; `holes` the runs of missing seqs that need a lossMarker; `last_seq`/`last_hash`/
    `last_envelope` describe the newest intact row."""

    checked: int
    last_seq: int
    last_hash: bytes
    last_envelope: dict[str, Any] | None
    bad: tuple[tuple[int, str], ...] = ()
    holes: tuple[Hole, ...] = ()
    top_seq: int = 0  # the highest seq seen, damaged or not: a marker takes a seq above it

    @property
    def bad_from(self) -> int | None:
        return self.bad[0][0] if self.bad else None

    @property
    def reason(self) -> str:
        return self.bad[0][1] if self.bad else ""


def explained_ranges(envelopes: list[dict[str, Any]]) -> set[tuple[int, int]]:
    """(first_seq, last_seq) of every quarantine lossMarker among `envelopes`."""
    ranges = set()
    for env in envelopes:
        data = env.get("data") or {}
        if env.get("event") == "lossMarker" and data.get("reason") == "quarantine" and \
                isinstance(data.get("first_seq"), int) and isinstance(data.get("last_seq"), int):
            ranges.add((data["first_seq"], data["last_seq"]))
    return ranges


def row_problem(seq: int, body: Any, keys: dict[str, Any],
                 prev: tuple[int, bytes] | None) -> tuple[str, dict[str, Any] | None]:
    """'' if the row decodes, hashes, signs (for a known kid) and links to `prev` (seq, hash)."""
    try:
        env = decode_envelope(body)
        digest = env["hash"]
        if env.get("seq") != seq:
            return f"row {seq} holds event seq {env.get('seq')!r}", None
        if chain_hash(env["prev_hash"], canonical(env, without=INTEGRITY_FIELDS)) != digest:
            return f"seq {seq}: hash does not match the stored bytes", None
        verify_key = keys.get(env["kid"])
        if verify_key is not None:
            verify_key.verify(digest, env["sig"])
    except _CORRUPT as err:
        return f"seq {seq}: undecodable or unsigned ({type(err).__name__})", None
    if prev is not None:
        prev_seq, prev_hash = prev
        if env["prev_hash"] != prev_hash:
            return f"seq {seq}: does not link to seq {prev_seq}", None
        if seq != prev_seq + 1 and not gap_explained(env, prev_seq, seq):
            return f"seq {seq}: gap after seq {prev_seq}", None
    return "", env


def _window(conn: sqlite3.Connection, keys: dict[str, Any], window: int
            ) -> tuple[list[tuple[int, str, dict[str, Any] | None]], bool]:
    """The last rows with their own problems ('' if intact), growing the window while its first
    row is damaged (the work grows with the damage, never with the backlog)."""
    while True:
        rows = conn.execute("SELECT seq, body FROM events ORDER BY seq DESC LIMIT ?",
                            (window + 1,)).fetchall()[::-1]
        reached_start = len(rows) <= window
        checked = [(seq, *row_problem(seq, body, keys, None)) for seq, body in rows]
        if not checked or not checked[0][1] or reached_start:
            return checked, reached_start
        window *= 4


def check_tail(conn: sqlite3.Connection, keys: dict[str, Any], window: int = TAIL_CHECK_ROWS
               ) -> TailCheck:
    """Check the last `window` rows one by one: each damaged row is listed on its own (the
    intact rows after it stay), and each run of missing seqs no quarantine lossMarker explains
    becomes a hole."""
    rows, reached_start = _window(conn, keys, window)
    if not rows:
        return TailCheck(0, 0, GENESIS, None)
    bad = tuple((seq, problem) for seq, problem, _ in rows if problem)
    good = [(seq, env) for seq, problem, env in rows if not problem and env is not None]
    explained = explained_ranges([env for _, env in good])
    holes: list[Hole] = []
    prev: tuple[int, bytes] | None = (0, GENESIS) if rows[0][0] == 1 else None
    expected_first = rows[0][0] if reached_start else None
    why = dict(bad)
    for seq, env in good:
        first_missing = prev[0] + 1 if prev is not None else expected_first
        if first_missing is not None and seq > first_missing and \
                (first_missing, seq - 1) not in explained:
            holes.append(Hole(first_missing, seq - 1, env["prev_hash"],
                              why.get(first_missing, f"seqs {first_missing}..{seq - 1} missing")))
        prev = (seq, env["hash"])
        expected_first = None
    top = rows[-1][0]
    if good and good[-1][0] < top:
        holes.append(Hole(good[-1][0] + 1, top, None, why.get(good[-1][0] + 1, "")))
    elif not good:
        holes.append(Hole(rows[0][0], top, None, bad[0][1]))
    last = good[-1] if good else None
    if last is None:
        return TailCheck(0, rows[0][0] - 1, GENESIS, None, bad, tuple(holes), top)
    return TailCheck(len(rows), last[0], last[1]["hash"], last[1], bad, tuple(holes), top)
