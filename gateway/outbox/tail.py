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
class TailCheck:
    """What `check_tail` found. `bad_from` is the first seq of a corrupt tail (None: intact);
    `last_seq`/`last_hash`/`last_envelope` describe the last good row."""

    checked: int
    last_seq: int
    last_hash: bytes
    last_envelope: dict[str, Any] | None
    bad_from: int | None = None
    reason: str = ""


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


def check_tail(conn: sqlite3.Connection, keys: dict[str, Any], window: int = TAIL_CHECK_ROWS
               ) -> TailCheck:
    """Check the last `window` rows; if the first of them is itself bad, look further back
    (the work grows with the size of the damage, never with the backlog)."""
    while True:
        rows = conn.execute("SELECT seq, body FROM events ORDER BY seq DESC LIMIT ?",
                            (window + 1,)).fetchall()[::-1]
        if not rows:
            return TailCheck(0, 0, GENESIS, None)
        reached_start = len(rows) <= window
        seq0, body0 = rows[0]
        anchor = (0, GENESIS) if seq0 == 1 else None
        problem, env = row_problem(seq0, body0, keys, anchor)
        if problem and not reached_start:
            window *= 4
            continue
        if problem:  # even the oldest row is bad: the whole table is the damaged tail
            return TailCheck(0, seq0 - 1, GENESIS, None, seq0, problem)
        last = (seq0, env["hash"], env)
        for checked, (seq, body) in enumerate(rows[1:], start=1):
            problem, env = row_problem(seq, body, keys, last[:2])
            if problem:
                return TailCheck(checked, last[0], last[1], last[2], seq, problem)
            last = (seq, env["hash"], env)
        return TailCheck(len(rows), last[0], last[1], last[2])
