"""`casino-gateway outbox ...`: the outbox, offline (the daemon may run). Each action has its own
options and function; every read goes through gateway.outbox's reader API. Wired into
gateway/cli.py by `add_commands`; docs/outbox.md describes the export file format. (The signing
key's commands are gateway/keys_cli.py.)"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gateway.errors import EXIT_FAILURE

__all__ = ["add_commands", "progress_bar"]


def add_commands(sub: argparse._SubParsersAction) -> None:
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
    a.set_defaults(func=_stats)
    a = actions.add_parser("tail", help="the last events [-f: and follow]",
                           description="The last events, oldest first; -f keeps following "
                           "the file as the daemon commits.")
    _db(a, required=True)
    a.add_argument("-n", "--lines", type=int, default=20, help="events to show (default 20)")
    a.add_argument("-f", "--follow", action="store_true", help="keep following")
    _json(a, "one JSON object per event (bytes as hex)")
    a.set_defaults(func=_tail)
    a = actions.add_parser("verify", help="check every signature and link [FILE: outbox or "
                           "export]", description="Check every event's hash, signature and "
                           "link to the one before. FILE is an outbox or an export; exit 0 "
                           "OK, 1 BROKEN.")
    a.add_argument("file", nargs="?", type=Path, default=None,
                   help="the outbox or export to check (or --db)")
    _db(a, required=False)
    _trust(a)
    _json(a, "the report as one JSON object")
    a.set_defaults(func=_verify)
    a = actions.add_parser("export", help="write a range: a verifiable file, JSON lines or CSV",
                           description="Write a range of events: by default a self-contained "
                           "file with the public keys needed to verify it; --format json (one "
                           "object per line, bytes as hex) or csv (one row per event, data as "
                           "JSON) for a spreadsheet or a script.")
    a.add_argument("file", nargs="?", type=Path, default=None,
                   help="the file to write ('-': standard output, json and csv only)")
    a.add_argument("--format", choices=("export", "json", "csv"), default="export",
                   help="export: verifiable SQLite file (default); json; csv")
    _db(a, required=True)
    _trust(a)
    a.add_argument("--from", dest="from_seq", type=int, default=None, help="first seq")
    a.add_argument("--to", dest="to_seq", type=int, default=None, help="last seq")
    _time_range(a)
    a.set_defaults(func=_export)
    a = actions.add_parser("replay", help="events between --since and --until",
                           description="Events committed between --since and --until.")
    _db(a, required=True)
    _time_range(a)
    _json(a, "one JSON object per event (bytes as hex)")
    a.set_defaults(func=_replay)


def _db(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--db", type=Path, required=required, help="the outbox database file")


def _json(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=what)


def _trust(p: argparse.ArgumentParser) -> None:
    p.add_argument("--public-key", type=Path, action="append", default=[],
                   help="public key file (hex) to verify against (repeatable: the keys "
                   "before a rotation)")
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


# -- outbox ---------------------------------------------------------------------------------------

def _json_envelope(body: bytes) -> str:
    from gateway.signing import decode_envelope

    env = decode_envelope(body)
    return json.dumps({k: v.hex() if isinstance(v, bytes) else v for k, v in env.items()},
                      sort_keys=True)


def _stats(args: argparse.Namespace) -> int:
    from gateway.outbox import open_db, outbox_figures

    figures = outbox_figures(open_db(args.db))
    if args.json:
        print(json.dumps(figures))
    else:
        for key, value in figures.items():
            print(f"{key:>22}: {value}")
    return 0


def _tail(args: argparse.Namespace) -> int:
    from gateway.outbox import describe, iter_envelopes, open_db, readers

    conn = open_db(args.db)
    after = max(0, readers.last_seq(conn) - args.lines)
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


def _replay(args: argparse.Namespace) -> int:
    from gateway.outbox import describe, iter_time_range, open_db

    conn = open_db(args.db)
    since = args.since if args.since is not None else 0.0
    until = args.until if args.until is not None else float("inf")
    for _, body in iter_time_range(conn, since, until):
        print(_json_envelope(body) if args.json else describe(body))
    return 0


def _trusted_keys(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.signing import key_id, load_signing_key, load_verify_key

    keys = [load_verify_key(p) for p in args.public_key]
    if args.key_file:
        keys.append(load_signing_key(args.key_file).verify_key)
    return {key_id(k): k for k in keys}


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


def _export(args: argparse.Namespace) -> int:
    from gateway.outbox import open_db
    from gateway.outbox.export import export_range

    if args.file is None:
        print("outbox export needs the FILE to write", file=sys.stderr)
        return 2
    conn = open_db(args.db)
    if args.format != "export":
        return _export_text(args, _export_rows(conn, args))
    if str(args.file) == "-":
        print("the verifiable export is a database file: give a FILE, not '-'", file=sys.stderr)
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


CSV_COLUMNS = ("seq", "epoch", "timestamp", "channel", "event", "machine", "kid", "data", "hash")


def _export_text(args: argparse.Namespace, rows: Iterator[tuple[int, bytes]]) -> int:
    """JSON lines or CSV of the decoded envelopes, streamed (memory stays flat)."""
    import csv

    from gateway.signing import decode_envelope

    to_stdout = str(args.file) == "-"
    if not to_stdout and args.file.exists():
        print(f"{args.file} already exists; refusing to overwrite an export", file=sys.stderr)
        return EXIT_FAILURE
    out = sys.stdout if to_stdout else open(args.file, "x", newline="")
    count = 0
    try:
        table = csv.writer(out) if args.format == "csv" else None
        if table is not None:
            table.writerow(CSV_COLUMNS)
        for _, body in rows:
            if table is None:
                out.write(_json_envelope(body) + "\n")
            else:
                env = decode_envelope(body)
                machine = env.get("machine") or {}
                table.writerow([env["seq"], env["epoch"], env["timestamp"], env["channel"],
                                env["event"], f"{machine['port']}/{machine['address']}"
                                if machine else "", env["kid"],
                                json.dumps(env.get("data"), sort_keys=True), env["hash"].hex()])
            count += 1
    finally:
        if not to_stdout:
            out.close()
    if not to_stdout:
        print(f"wrote {count:,} events to {args.file} ({args.format})")
    return 0 if count else EXIT_FAILURE


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
    from gateway.outbox import open_db, readers
    from gateway.outbox.ends import check_ends, tolerant_envelopes
    from gateway.outbox.export import export_keys, read_export
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
            keys = {kid: _verify_key_hex(hex_key) for kid, hex_key in export_keys(conn).items()}
            print("WARNING: no --public-key given; using the keys inside the file, which proves "
                  "the file is consistent, not that this gateway wrote it", file=sys.stderr)
    if not keys:
        print("give --public-key FILE (or --key-file FILE) to verify against", file=sys.stderr)
        return 2
    try:
        total = readers.count_events(conn)
    except (sqlite3.DatabaseError, UnicodeDecodeError):  # damaged: verify reports what it can
        total = 0
    show = None if args.json else progress_bar(total)
    unreadable: list[int] = []
    report = verify_events(tolerant_envelopes(conn, unreadable), keys, progress=show,
                           first_prev=first_prev)
    if show is not None:
        show(report.checked)
        print(file=sys.stderr)
    result = {"ok": report.ok, "checked": report.checked, "first_seq": report.first_seq,
              "last_seq": report.last_seq, "break_at": report.break_at, "reason": report.reason,
              "kids": list(report.kids)}
    if unreadable:
        result["unreadable"] = unreadable
    ends = [] if export is not None else check_ends(conn, Path(path), report.first_seq,
                                                     report.last_seq)
    if ends:
        result["ends"] = ends
    text = _verdict(conn, report, export, keys, result)
    if unreadable and not args.json:
        text += f"\n{len(unreadable)} rows unreadable (a damaged page): seqs {unreadable[0]}.." \
                f"{unreadable[-1]}"
    print(json.dumps(result) if args.json else text)
    return 0 if result["ok"] else EXIT_FAILURE


def _verdict(conn: sqlite3.Connection, report: Any, export: dict[str, Any] | None,
             keys: dict[str, Any], result: dict[str, Any]) -> str:
    """The one-line verdict of `outbox verify` (and `result` marked not ok where the ends or an
    export's own count disagree with a chain that verified)."""
    if report.ok and result.get("ends"):
        result.update(ok=False, reason="ends")
        return "BROKEN: " + "; ".join(result["ends"])
    if report.ok and export is not None and (
            report.checked != export["count"] or report.first_seq != export["first_seq"]
            or report.last_seq != export["last_seq"]):
        result.update(ok=False, reason="export-mismatch")
        return (f"BROKEN: the export says seq {export['first_seq']}..{export['last_seq']} "
                f"({export['count']:,} events) but holds seq {report.first_seq}.."
                f"{report.last_seq} ({report.checked:,} events)")
    if report.ok:
        rotated = f"; keys {', '.join(report.kids)}" if len(report.kids) > 1 else ""
        return (f"OK: {report.checked:,} events verified (seq {report.first_seq}.."
                f"{report.last_seq}){rotated}")
    text = (f"BROKEN at seq {report.break_at}: {report.reason} "
            f"({report.checked:,} events verified before it)")
    if report.reason.startswith("unknown-key: "):
        result["needs_kid"] = needed = report.reason.removeprefix("unknown-key: ")
        text += "\n" + _explain_unknown_key(conn, needed, keys, report.break_at)
    return text


def _explain_unknown_key(conn: sqlite3.Connection, needed: str, keys: dict[str, Any],
                         seq: int | None) -> str:
    """Why a kid is unknown and where its public key is (a rotation is the usual reason)."""
    from gateway.outbox import readers

    given = ", ".join(sorted(keys))
    text = (f"seq {seq} is signed by key {needed}, which is not among the keys given ({given}). "
            f"verify needs the public key the range starts with; the keys after it are learned "
            f"from the keyRotated events, which carry them.")
    for seq_, env in readers.iter_key_rotations(conn):
        data = env.get("data") or {}
        if data.get("new_kid") in keys:
            text += (f" The key you gave, {data['new_kid']}, was rotated in at seq {seq_}: "
                     f"the events before are signed by an older key.")
            break
    archived = needed.replace(":", "-") + ".key"
    return (text + f" Give {needed}'s public key too (--public-key is repeatable): the one "
            f"registered with the platform before the rotation, or from the archived key with "
            f"`casino-gateway keys export-public --key-file "
            f"/var/lib/casino-gateway/retired-keys/{archived}`.")


def _verify_key_hex(hex_key: str) -> Any:
    import nacl.signing

    return nacl.signing.VerifyKey(bytes.fromhex(hex_key))
