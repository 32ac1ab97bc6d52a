"""`casino-gateway keys ...` and `casino-gateway outbox ...`: the signing key and the outbox,
offline (the daemon need not run; `keys rotate` needs it stopped). Wired into gateway/cli.py by
`add_commands`. docs/outbox.md describes the export file format."""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import os
import sqlite3
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gateway.errors import EXIT_FAILURE, StoreError

__all__ = ["EXPORT_FORMAT", "add_commands", "export_range", "open_db", "read_export"]

EXPORT_FORMAT = "casino-gateway-export/1"


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="the gateway's Ed25519 signing key",
                       description="Create, show, export and rotate the gateway's Ed25519 "
                       "signing key (the platform verifies every event with its public key).")
    keys = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    k = keys.add_parser("init", help="create a new private key file (mode 0600)",
                        description="Create a new private key file, mode 0600; refuses to "
                        "overwrite one (the platform knows this gateway by it).")
    _key_file(k)
    k = keys.add_parser("show", help="print the key id and public key",
                        description="Print the key id (kid) and the public key of a private "
                        "key file.")
    _key_file(k)
    k = keys.add_parser("export-public", help="write the public key for the platform",
                        description="Write the public key and its kid (one line, hex) for "
                        "the platform to register this gateway with.")
    _key_file(k)
    k.add_argument("--out", type=Path, default=None,
                   help="write to this file (default: standard output)")
    k = keys.add_parser("rotate", help="replace the key, announcing the new one (gateway "
                        "stopped)", description=inspect.cleandoc(_rotate.__doc__ or ""),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    _key_file(k)
    k.add_argument("--db", type=Path, default=None,
                   help="the outbox that records the keyRotated event (gateway stopped)")
    p.set_defaults(func=_cmd_keys)

    p = sub.add_parser("outbox", help="inspect, verify, export or replay the outbox offline",
                       description="Read the outbox database offline (the daemon may run). "
                       "The file is readable by the service user only: run these as that "
                       "user (sudo -u casino-gateway ...); `casino-gateway diag` shows the "
                       "outbox figures to the service's group.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = actions.add_parser("stats", help="depth, delivered, oldest undelivered",
                           description="Depth, delivered mark, oldest undelivered event.")
    _db(a, required=True)
    _json(a, "one JSON object")
    a = actions.add_parser("tail", help="the last events [-f: and follow]",
                           description="The last events, oldest first; -f keeps following "
                           "the file as the daemon commits.")
    _db(a, required=True)
    a.add_argument("-n", "--lines", type=int, default=20, help="events to show (default 20)")
    a.add_argument("-f", "--follow", action="store_true", help="keep following")
    _json(a, "one JSON object per event (bytes as hex)")
    a = actions.add_parser("verify", help="check every signature and link [FILE: outbox or "
                           "export]", description="Check every event's hash, signature and "
                           "link to the one before. FILE is an outbox or an export; exit 0 "
                           "OK, 1 BROKEN.")
    a.add_argument("file", nargs="?", type=Path, default=None)
    _db(a, required=False)
    _trust(a)
    _json(a, "the report as one JSON object")
    a = actions.add_parser("export", help="write a self-contained, verifiable file of a range",
                           description="Write a self-contained file of a range of events, "
                           "with the public keys needed to verify it.")
    a.add_argument("file", nargs="?", type=Path, default=None)
    _db(a, required=True)
    _trust(a)
    a.add_argument("--from", dest="from_seq", type=int, default=None, help="first seq")
    a.add_argument("--to", dest="to_seq", type=int, default=None, help="last seq")
    _time_range(a)
    a = actions.add_parser("replay", help="events between --since and --until",
                           description="Events committed between --since and --until.")
    _db(a, required=True)
    _time_range(a)
    _json(a, "one JSON object per event (bytes as hex)")
    p.set_defaults(func=_cmd_outbox, file=None)


def _key_file(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key-file", type=Path, required=True, help="the private key file")


def _db(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--db", type=Path, required=required, help="the outbox database file")


def _json(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=what)


def _trust(p: argparse.ArgumentParser) -> None:
    p.add_argument("--public-key", type=Path, help="public key file (hex) to verify against")
    p.add_argument("--key-file", type=Path, help="or the private key file")


def _time_range(p: argparse.ArgumentParser) -> None:
    p.add_argument("--since", type=_timestamp, default=None,
                   help="from this UTC time (ISO 8601, 2026-11-21T06:00Z)")
    p.add_argument("--until", type=_timestamp, default=None,
                   help="up to (not including) this UTC time")


def _timestamp(text: str) -> float:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


# -- keys ---------------------------------------------------------------------------------------

def _cmd_keys(args: argparse.Namespace) -> int:
    from gateway.signing import load_signing_key, write_signing_key

    path: Path = args.key_file
    if args.action == "init":
        if path.exists():
            print(f"{path} already exists; refusing to overwrite a signing key "
                  f"(the platform knows this gateway by it)", file=sys.stderr)
            return EXIT_FAILURE
        signer = write_signing_key(path)
        print(f"created {path} (mode 0600)\nkid: {signer.kid}\n"
              f"public key: {bytes(signer.verify_key).hex()}")
        return 0
    if args.action == "rotate":
        return _rotate(args)
    signer = load_signing_key(path)
    public = bytes(signer.verify_key).hex()
    if args.action == "show":
        print(f"key file: {path}\nkid: {signer.kid}\npublic key: {public}")
    elif args.action == "export-public":
        text = f"{public} {signer.kid}\n"
        if args.out:
            args.out.write_text(text)
            print(f"wrote {args.out}; register it with the platform for this gateway")
        else:
            sys.stdout.write(text)
    return 0


def _rotate(args: argparse.Namespace) -> int:
    """Offline rotation (the gateway stopped; the outbox lock enforces it):
      1. the new key is written to KEY.next (0600) -- or taken from there if a previous
         attempt was interrupted;
      2. the outbox records keyRotated, signed by the current key, naming the new kid and
         carrying its public key;
      3. KEY becomes KEY.previous and KEY.next becomes KEY.
    A crash between any two steps is finished by running the command again."""
    import trio

    from gateway.outbox import Outbox, OutboxSettings, open_readonly
    from gateway.signing import (
        decode_envelope,
        install_next_key,
        load_signing_key,
        write_signing_key,
    )

    path: Path = args.key_file
    if args.db is None:
        print("keys rotate needs --db OUTBOX: the outbox records the keyRotated event that "
              "tells the platform about the new key", file=sys.stderr)
        return 2
    old = load_signing_key(path)
    next_path = path.with_name(path.name + ".next")
    new = load_signing_key(next_path) if next_path.exists() else write_signing_key(next_path)
    conn = open_readonly(args.db)
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        last = conn.execute("SELECT seq, body FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    last_env = decode_envelope(last[1]) if last else {}
    already = last_env.get("event") == "keyRotated" and \
        (last_env.get("data") or {}).get("new_kid") == new.kid
    seq = last[0] if already else 0
    if not already:
        settings = OutboxSettings(path=args.db, gateway_id=meta["gateway_id"],
                                  venue=last_env.get("venue", ""),
                                  region=last_env.get("region", ""), min_free_mb=0)
        try:
            outbox = Outbox.open(settings, old)
        except StoreError as err:
            print(f"casino-gateway: cannot rotate: {err}\n(stop the gateway first, e.g. "
                  f"systemctl stop casino-gateway)", file=sys.stderr)
            return EXIT_FAILURE

        async def record() -> int:
            with trio.fail_after(30):
                async with trio.open_nursery() as nursery:
                    await nursery.start(outbox.run_writer)
                    committed = await outbox.rotate_key(new)
                    nursery.cancel_scope.cancel()
            return committed

        try:
            seq = trio.run(record)
        finally:
            outbox.close()
    previous = install_next_key(path, next_path)
    print(f"rotated {old.kid} -> {new.kid}\nkeyRotated recorded at seq {seq} "
          f"(signed by the old key)\nold key kept as {previous}\n"
          f"new public key: {bytes(new.verify_key).hex()}\n"
          f"register it with the platform (keys export-public); start the gateway again")
    return 0


# -- outbox ---------------------------------------------------------------------------------------

def open_db(path: Path) -> sqlite3.Connection:
    """open_readonly, with what stops this user reading the file said in one line (a StoreError,
    which the CLI prints and exits 1 with) instead of a traceback."""
    from gateway.outbox import open_readonly

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
    except sqlite3.DatabaseError as err:
        conn.close()
        raise StoreError(f"cannot read {path}: {err} (the WAL files beside it must be "
                         "readable and writable too: run as the service user)") from None
    return conn


def _owner(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _json_envelope(body: bytes) -> str:
    from gateway.signing import decode_envelope

    env = decode_envelope(body)
    return json.dumps({k: v.hex() if isinstance(v, bytes) else v for k, v in env.items()},
                      sort_keys=True)


def _cmd_outbox(args: argparse.Namespace) -> int:
    from gateway.outbox import describe, iter_envelopes, outbox_figures

    if args.action == "verify":
        return _verify(args)
    conn = open_db(args.db)
    if args.action == "stats":
        figures = outbox_figures(conn)
        if args.json:
            print(json.dumps(figures))
        else:
            for key, value in figures.items():
                print(f"{key:>22}: {value}")
        return 0
    if args.action == "tail":
        last = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        after = max(0, last - args.lines)
        watch = None
        if args.follow:
            from gateway.filewatch import DirectoryWatch

            # Armed before the first read: a commit in between still wakes the first wait.
            watch = DirectoryWatch(args.db.resolve().parent, prefix=args.db.name)
        woke = False
        while True:
            printed = False
            for seq, body in iter_envelopes(conn, after):
                print(_json_envelope(body) if args.json else describe(body), flush=True)
                after, printed = seq, True
            if watch is None:
                return 0
            # Each commit of the writing process writes the -wal file. A wake-up that found
            # nothing new is a commit not yet visible (docs in gateway/filewatch.py): look again
            # in a few ms; otherwise wait for the next write, re-checking once a second.
            woke = watch.wait(recheck_s=0.005 if woke and not printed else 1.0)
    if args.action == "export":
        return _export(conn, args)
    if args.action == "replay":
        return _replay(conn, args)
    raise AssertionError(args.action)


def _replay(conn: sqlite3.Connection, args: argparse.Namespace) -> int:
    from gateway.outbox import describe, iter_time_range

    since = args.since if args.since is not None else 0.0
    until = args.until if args.until is not None else float("inf")
    for _, body in iter_time_range(conn, since, until):
        print(_json_envelope(body) if args.json else describe(body))
    return 0


def _trusted_keys(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.signing import key_id, load_signing_key, load_verify_key

    if args.public_key:
        verify_key = load_verify_key(args.public_key)
    elif args.key_file:
        verify_key = load_signing_key(args.key_file).verify_key
    else:
        return {}
    return {key_id(verify_key): verify_key}


def _export_rows(conn: sqlite3.Connection, args: argparse.Namespace
                 ) -> Iterator[tuple[int, bytes]]:
    from gateway.outbox import iter_envelopes, iter_time_range

    low = args.from_seq if args.from_seq is not None else 1
    high = args.to_seq if args.to_seq is not None else float("inf")
    if args.since is not None or args.until is not None:
        rows: Iterator[tuple[int, bytes]] = iter_time_range(
            conn, args.since or 0.0, args.until if args.until is not None else float("inf"))
    else:
        rows = iter_envelopes(conn, low - 1)
    for seq, body in rows:
        if seq > high:
            return
        if seq >= low:
            yield seq, body


def export_range(conn: sqlite3.Connection, out: Path, rows: Iterator[tuple[int, bytes]],
                 keys: dict[str, Any]) -> dict[str, Any]:
    """Write a self-contained export: the rows, the public keys (given, and announced by
    keyRotated events in the range), gateway id, epoch and the first row's prev_hash.
    Streams: memory stays flat however long the range."""
    import nacl.signing

    from gateway.signing import decode_envelope

    if out.exists():
        raise StoreError(f"{out} already exists; refusing to overwrite an export")
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
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


def _export(conn: sqlite3.Connection, args: argparse.Namespace) -> int:
    if args.file is None:
        print("outbox export needs the FILE to write", file=sys.stderr)
        return 2
    figures = export_range(conn, args.file, _export_rows(conn, args), _trusted_keys(args))
    if not figures["count"]:
        args.file.unlink()
        print("nothing to export in that range", file=sys.stderr)
        return EXIT_FAILURE
    print(f"exported {figures['count']:,} events (seq {figures['first_seq']}.."
          f"{figures['last_seq']}) of {figures['gateway_id']} epoch {figures['epoch']} to "
          f"{args.file}\nverify with: casino-gateway outbox verify {args.file} "
          f"--public-key GATEWAY.pub")
    return 0


def progress_bar(total: int, stream: Any = None) -> Callable[[int], None] | None:
    """A one-line progress bar on a terminal (None when `stream` is not a tty)."""
    stream = stream or sys.stderr
    if not stream.isatty() or total <= 0:
        return None
    started = time.monotonic()

    def show(done: int) -> None:
        fraction = min(1.0, done / total)
        filled = int(fraction * 30)
        rate = done / max(time.monotonic() - started, 1e-9)
        print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {fraction:4.0%} {done:,}/{total:,} "
              f"events {rate:,.0f}/s", end="", file=stream, flush=True)

    return show


def _verify(args: argparse.Namespace) -> int:
    from gateway.outbox import iter_envelopes
    from gateway.verify import verify_events

    path = args.file or args.db
    if path is None:
        print("outbox verify needs a FILE (an outbox or an export) or --db", file=sys.stderr)
        return 2
    conn = open_db(path)
    export = read_export(conn)
    keys = _trusted_keys(args)
    first_prev = None
    if export is not None:
        first_prev = bytes.fromhex(export["first_prev_hash"])
        if not keys:
            keys = {kid: _verify_key_hex(hex_key) for kid, hex_key in
                    conn.execute("SELECT kid, public_key FROM keys")}
            print("WARNING: no --public-key given; using the keys inside the file, which proves "
                  "the file is consistent, not that this gateway wrote it", file=sys.stderr)
    if not keys:
        print("give --public-key FILE (or --key-file FILE) to verify against", file=sys.stderr)
        return 2
    total = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    show = None if args.json else progress_bar(total)
    report = verify_events(iter_envelopes(conn), keys, progress=show, first_prev=first_prev)
    if show is not None:
        show(report.checked)
        print(file=sys.stderr)
    result = {"ok": report.ok, "checked": report.checked, "first_seq": report.first_seq,
              "last_seq": report.last_seq, "break_at": report.break_at, "reason": report.reason,
              "kids": list(report.kids)}
    if report.ok and export is not None and (
            report.checked != export["count"] or report.first_seq != export["first_seq"]
            or report.last_seq != export["last_seq"]):
        text = (f"BROKEN: the export says seq {export['first_seq']}..{export['last_seq']} "
                f"({export['count']:,} events) but holds seq {report.first_seq}.."
                f"{report.last_seq} ({report.checked:,} events)")
        result.update(ok=False, reason="export-mismatch")
    elif report.ok:
        rotated = f"; keys {', '.join(report.kids)}" if len(report.kids) > 1 else ""
        text = (f"OK: {report.checked:,} events verified (seq {report.first_seq}.."
                f"{report.last_seq}){rotated}")
    else:
        text = (f"BROKEN at seq {report.break_at}: {report.reason} "
                f"({report.checked:,} events verified before it)")
    print(json.dumps(result) if args.json else text)
    return 0 if result["ok"] else EXIT_FAILURE


def _verify_key_hex(hex_key: str) -> Any:
    import nacl.signing

    return nacl.signing.VerifyKey(bytes.fromhex(hex_key))
