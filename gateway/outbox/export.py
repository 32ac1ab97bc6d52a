"""The export file: a self-contained, verifiable range of events (docs/outbox.md, "Export").

An SQLite file of its own: `export_meta` (format, gateway id, epoch, range, the first row's
prev_hash), `keys` (the public keys needed to verify it) and `events` (seq, body)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.errors import StoreError
from gateway.outbox.schema import read_meta

__all__ = ["EXPORT_FORMAT", "export_keys", "export_range", "read_export"]

EXPORT_FORMAT = "casino-gateway-export/1"


def export_range(conn: sqlite3.Connection, out: Path, rows: Iterator[tuple[int, bytes]],
                 keys: dict[str, Any]) -> dict[str, Any]:
    """Write a self-contained export: the rows, the public keys (given, and announced by
    keyRotated events in the range), gateway id, epoch and the first row's prev_hash.
    Streams: memory stays flat however long the range."""
    import nacl.signing

    from gateway.signing import decode_envelope

    if out.exists():
        raise StoreError(f"{out} already exists; refusing to overwrite an export")
    meta = read_meta(conn)
    dst = sqlite3.connect(out, isolation_level=None)
    try:
        dst.executescript("""
            CREATE TABLE export_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE keys (kid TEXT PRIMARY KEY, public_key TEXT NOT NULL);
            CREATE TABLE events (seq INTEGER PRIMARY KEY, body BLOB NOT NULL);
        """)
        dst.execute("BEGIN")
        first = last = None
        first_prev = b""
        count = 0
        page: list[tuple[int, bytes]] = []
        for seq, body in rows:
            env = decode_envelope(body)
            if first is None:
                first, first_prev = seq, env["prev_hash"]
            if env.get("event") == "keyRotated" and (env.get("data") or {}).get("new_public_key"):
                public = env["data"]["new_public_key"]
                keys.setdefault(env["data"]["new_kid"],
                                nacl.signing.VerifyKey(bytes.fromhex(public)))
            keys.setdefault(env["kid"], None)
            page.append((seq, body))
            last, count = seq, count + 1
            if len(page) >= 1000:
                dst.executemany("INSERT INTO events VALUES (?, ?)", page)
                page.clear()
        dst.executemany("INSERT INTO events VALUES (?, ?)", page)
        dst.executemany("INSERT INTO keys VALUES (?, ?)",
                        [(kid, bytes(k).hex()) for kid, k in keys.items() if k is not None])
        figures = {"format": EXPORT_FORMAT, "gateway_id": meta.get("gateway_id", ""),
                   "epoch": meta.get("epoch", ""), "first_seq": first, "last_seq": last,
                   "count": count, "first_prev_hash": first_prev.hex(),
                   "exported_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                   "kids": sorted(keys)}
        dst.executemany("INSERT INTO export_meta VALUES (?, ?)",
                        [(k, json.dumps(v)) for k, v in figures.items()])
        dst.execute("COMMIT")
    except BaseException:
        dst.close()
        out.unlink(missing_ok=True)
        raise
    dst.close()
    return figures


def read_export(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """The export's metadata, or None if `conn` is an outbox rather than an export."""
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name='export_meta'").fetchone():
        return None
    meta = {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM export_meta")}
    if meta.get("format") != EXPORT_FORMAT:
        raise StoreError(f"unknown export format {meta.get('format')!r}")
    return meta


def export_keys(conn: sqlite3.Connection) -> dict[str, str]:
    """kid -> public key (hex) carried inside an export."""
    return dict(conn.execute("SELECT kid, public_key FROM keys").fetchall())
