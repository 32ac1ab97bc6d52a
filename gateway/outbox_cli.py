"""`casino-gateway keys ...` and `casino-gateway outbox ...`: the signing key and the outbox,
offline (the daemon need not run; `keys rotate` goes through it when it does). Wired into gateway/cli.py by
`add_commands`. docs/outbox.md describes the export file format."""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gateway.errors import EXIT_FAILURE, StoreError

__all__ = ["add_commands", "progress_bar"]


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
    k = keys.add_parser("rotate", help="replace the key, announcing the new one (running "
                        "or stopped gateway)", description=inspect.cleandoc(_rotate.__doc__ or ""),
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    k.add_argument("--config", type=Path, default=None,
                   help="the gateway's configuration (key file, outbox, control socket)")
    k.add_argument("--key-file", type=Path, default=None,
                   help="without --config: the private key file (with --db, gateway stopped)")
    k.add_argument("--db", type=Path, default=None,
                   help="without --config: the outbox that records keyRotated")
    retired = k.add_mutually_exclusive_group()
    retired.add_argument("--archive-dir", type=Path, default=None,
                         help="where the retired private key goes (default: "
                         "STATE_DIR/retired-keys, outside /etc)")
    retired.add_argument("--destroy", action="store_true",
                         help="overwrite and delete the retired private key instead")
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
    """Rotate the signing key in one command, as root or as the service user:
      1. a new key is written to KEY.next (0600, owned like KEY: made by root, it is given to
         the key's owner), or taken from there if an earlier attempt was interrupted;
      2. keyRotated is recorded, signed by the current key and carrying the new public key (the
         platform learns the key from it): by the running gateway through its control socket,
         which signs with the new key from the next event on (no restart, no downtime), or,
         with the gateway stopped, in the outbox directly;
      3. KEY.next becomes KEY (an atomic rename) and the retired private key leaves the key
         directory: archived in STATE_DIR/retired-keys (--archive-dir) or destroyed (--destroy).
    Running it again finishes an interrupted rotation."""
    from gateway.config import load_config
    from gateway.control import control_socket_path
    from gateway.signing import install_next_key, load_signing_key, retire_key_file

    socket_path = None
    if args.config is not None:
        config = load_config(args.config)
        path, db = config.gateway.key_file, config.outbox_path
        socket_path = control_socket_path(config.gateway)
        archive = config.gateway.state_dir / "retired-keys"
    elif args.key_file is not None and args.db is not None:
        path, db = args.key_file, args.db
        archive = db.resolve().parent / "retired-keys"
    else:
        print("keys rotate needs --config FILE (or --key-file KEY and --db OUTBOX with the "
              "gateway stopped): the outbox records the keyRotated event that tells the "
              "platform about the new key", file=sys.stderr)
        return 2
    archive = None if args.destroy else (args.archive_dir or archive)
    next_path = path.with_name(path.name + ".next")
    retired = path.with_name(path.name + ".retired")
    if retired.exists():  # left by an interrupted run: finish it first
        if retired.samefile(path):
            retired.unlink()
        else:
            retire_key_file(retired, archive)
    old = load_signing_key(path)
    new = _prepare_next_key(path, next_path)
    chain_kid = _chain_kid(db) or old.kid
    if chain_kid == new.kid:
        seq, how = _announced_at(db, new.kid), "earlier"
    elif chain_kid != old.kid:
        print(f"casino-gateway: cannot rotate: the outbox {db} is signed by {chain_kid}, which "
              f"is neither {path} ({old.kid}) nor {next_path} ({new.kid})", file=sys.stderr)
        return EXIT_FAILURE
    else:
        answer = _ask_running_gateway(socket_path) if socket_path is not None else None
        if answer is not None and not answer.get("ok"):
            print(f"casino-gateway: cannot rotate: the running gateway says: {answer['error']}",
                  file=sys.stderr)
            return EXIT_FAILURE
        if answer is not None:
            seq, how = answer["rotated"]["seq"], "by the running gateway, which signs with " \
                "the new key from the next event on: no restart needed"
        else:
            seq = _record_offline(db, old, new)
            if seq is None:
                return EXIT_FAILURE
            how = "in the outbox (the gateway was stopped): start it again"
    _owned_like_the_outbox(db)
    retired = install_next_key(path, next_path)
    kept = retire_key_file(retired, archive)
    recorded = (f"keyRotated (signed by the old key) was already recorded at seq {seq}"
                if how == "earlier" else
                f"keyRotated recorded at seq {seq} (signed by the old key) {how}")
    print(f"rotated {old.kid} -> {new.kid}\n{recorded}\n"
          + (f"old private key archived as {kept} (outside {path.parent}; delete it when no "
             f"export needs re-signing, or rotate with --destroy)\n" if kept else
             "old private key destroyed\n")
          + f"new public key: {bytes(new.verify_key).hex()}\nthe platform learns it from "
          f"keyRotated; to register it by hand: keys export-public --key-file {path}")
    return 0


def _prepare_next_key(path: Path, next_path: Path) -> Any:
    """KEY.next, made now or by an interrupted run, owned like KEY (root makes it for the
    key's owner: the gateway must read it, and a root-owned key stopped the next start)."""
    from gateway.signing import load_signing_key, write_signing_key

    new = load_signing_key(next_path) if next_path.exists() else write_signing_key(next_path)
    owner = path.stat()
    if os.geteuid() == 0:
        os.chown(next_path, owner.st_uid, owner.st_gid)
    return new


def _chain_kid(db: Path) -> str | None:
    """The key the outbox's chain is signed with now (None: no outbox or no event yet)."""
    from gateway.outbox import readers

    if not db.exists():
        return None
    conn = readers.open_db(db)
    try:
        return readers.chain_kid(conn)
    finally:
        conn.close()


def _owned_like_the_outbox(db: Path) -> None:
    """Run as root, opening the outbox can leave root-owned -wal/-shm files the service user
    then cannot open: give them to the outbox's owner."""
    if os.geteuid() != 0 or not db.exists():
        return
    st = db.stat()
    for side in (db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        if side.exists():
            os.chown(side, st.st_uid, st.st_gid)


def _announced_at(db: Path, kid: str) -> int | None:
    """The seq of the keyRotated event that announced `kid`."""
    from gateway.outbox import readers

    conn = readers.open_db(db)
    try:
        for seq, env in readers.iter_key_rotations(conn, newest_first=True):
            if (env.get("data") or {}).get("new_kid") == kid:
                return seq
    finally:
        conn.close()
    return None


def _ask_running_gateway(socket_path: Path) -> dict[str, Any] | None:
    """The control socket's answer to rotate-key, or None when no gateway serves it."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    try:
        sock.connect(str(socket_path))
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    with sock:
        sock.sendall(b'{"cmd": "rotate-key"}\n')
        reply = b""
        while not reply.endswith(b"\n"):
            data = sock.recv(65536)
            if not data:
                raise StoreError(f"the gateway at {socket_path} closed the control socket "
                                 "without answering the rotation")
            reply += data
    return json.loads(reply)


def _record_offline(db: Path, old: Any, new: Any) -> int | None:
    """Record keyRotated in a stopped gateway's outbox (its lock refuses a running one)."""
    import trio

    from gateway.outbox import Outbox, OutboxSettings, readers
    from gateway.signing import decode_envelope

    conn = readers.open_readonly(db)
    try:
        meta = readers.read_meta(conn)
        last = readers.last_event(conn)
    finally:
        conn.close()
    last_env = decode_envelope(last[1]) if last else {}
    settings = OutboxSettings(path=db, gateway_id=meta["gateway_id"],
                              venue=last_env.get("venue", ""),
                              region=last_env.get("region", ""), min_free_mb=0)
    try:
        outbox = Outbox.open(settings, old)
    except StoreError as err:
        print(f"casino-gateway: cannot rotate: {err}\n(rotate through the running gateway with "
              f"--config FILE, or stop the gateway first, e.g. systemctl stop casino-gateway)",
              file=sys.stderr)
        return None

    async def record() -> int:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(outbox.run_writer)
                committed = await outbox.rotate_key(new)
                nursery.cancel_scope.cancel()
        return committed

    try:
        return trio.run(record)
    finally:
        outbox.close()


# -- outbox ---------------------------------------------------------------------------------------

def _json_envelope(body: bytes) -> str:
    from gateway.signing import decode_envelope

    env = decode_envelope(body)
    return json.dumps({k: v.hex() if isinstance(v, bytes) else v for k, v in env.items()},
                      sort_keys=True)


def _cmd_outbox(args: argparse.Namespace) -> int:
    from gateway.outbox import describe, iter_envelopes, open_db, outbox_figures, readers

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
        last = readers.last_seq(conn)
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


def _export(conn: sqlite3.Connection, args: argparse.Namespace) -> int:
    if args.file is None:
        print("outbox export needs the FILE to write", file=sys.stderr)
        return 2
    from gateway.outbox.export import export_range

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
    from gateway.outbox import iter_envelopes, open_db, readers
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
    total = readers.count_events(conn)
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
        if report.reason.startswith("unknown-key: "):
            result["needs_kid"] = needed = report.reason.removeprefix("unknown-key: ")
            text += "\n" + _explain_unknown_key(conn, needed, keys, report.break_at)
    print(json.dumps(result) if args.json else text)
    return 0 if result["ok"] else EXIT_FAILURE


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
