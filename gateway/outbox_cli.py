"""`casino-gateway keys ...` and `casino-gateway outbox ...`: the signing key and the outbox,
offline (the daemon need not run). Wired into gateway/cli.py by `add_commands`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gateway.errors import EXIT_FAILURE

__all__ = ["add_commands"]


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="the gateway's Ed25519 signing key")
    p.add_argument("action", choices=["init", "show", "export-public"])
    p.add_argument("--key-file", type=Path, required=True)
    p.add_argument("--out", type=Path, default=None, help="export-public: write to this file")
    p.set_defaults(func=_cmd_keys)

    p = sub.add_parser("outbox", help="inspect or verify the outbox offline")
    p.add_argument("action", choices=["stats", "tail", "verify"])
    p.add_argument("--db", type=Path, required=True, help="the outbox database file")
    p.add_argument("--json", action="store_true", help="stats: one JSON object")
    p.add_argument("-n", "--lines", type=int, default=20, help="tail: events to show")
    p.add_argument("-f", "--follow", action="store_true", help="tail: keep following")
    p.add_argument("--public-key", type=Path, help="verify: public key file (hex)")
    p.add_argument("--key-file", type=Path, help="verify: or the private key file")
    p.set_defaults(func=_cmd_outbox)


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


def _cmd_outbox(args: argparse.Namespace) -> int:
    from gateway.outbox import describe, iter_envelopes, open_readonly, outbox_figures

    conn = open_readonly(args.db)
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
        while True:
            for seq, body in iter_envelopes(conn, after):
                print(describe(body), flush=True)
                after = seq
            if not args.follow:
                return 0
            time.sleep(0.5)  # a CLI follower polling a file; not daemon code
    if args.action == "verify":
        return _verify(conn, args)
    raise AssertionError(args.action)


def _verify(conn, args: argparse.Namespace) -> int:
    from gateway.outbox import iter_envelopes
    from gateway.signing import key_id, load_signing_key, load_verify_key
    from gateway.verify import verify_events

    if args.public_key:
        verify_key = load_verify_key(args.public_key)
    elif args.key_file:
        verify_key = load_signing_key(args.key_file).verify_key
    else:
        print("give --public-key FILE (or --key-file FILE) to verify against", file=sys.stderr)
        return 2
    total = conn.execute("SELECT count(*) FROM events").fetchone()[0]

    def progress(n: int) -> None:
        if sys.stderr.isatty():
            print(f"\rverified {n:,}/{total:,}", end="", file=sys.stderr, flush=True)

    report = verify_events(iter_envelopes(conn), {key_id(verify_key): verify_key},
                           progress=progress)
    if sys.stderr.isatty():
        print(file=sys.stderr)
    if report.ok:
        print(f"OK: {report.checked:,} events verified (seq {report.first_seq}..{report.last_seq})")
        return 0
    print(f"BROKEN at seq {report.break_at}: {report.reason} "
          f"({report.checked:,} events verified before it)")
    return EXIT_FAILURE
