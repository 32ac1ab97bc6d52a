"""`casino-gateway`: the one command venue IT, technicians and the platform team use.

    run       the daemon (what systemd starts)
    demo      simulated machines + gateway + reference receiver on loopback, with a summary
    keys      create, show and export the gateway's signing key
    outbox    inspect and verify the local outbox offline
    receiver  the reference platform endpoint (run, register, stats)
    simulate  simulated machines on pseudo-terminals, for a gateway in another process

Exit codes: 0 ok, 1 failure, 2 usage, 78 configuration error (bad config, key file).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import gateway
from gateway.errors import EXIT_CONFIG, EXIT_FAILURE, ConfigError, StoreError
from gateway.signing import KeyFileError

__all__ = ["main"]


def _cmd_run(args: argparse.Namespace) -> int:
    import trio

    from gateway import daemon
    from gateway.config import load_config
    from gateway.logs import configure_logging

    config = load_config(args.config)
    configure_logging(config.log.level, config.log.format)
    trio.run(daemon.run, config)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(machines=args.machines, duration=args.duration, as_json=args.json,
                    state_dir=args.state_dir, rate=args.rate, feed_port=args.feed_port)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="casino-gateway", description="Edge gateway: SAS slot machines -> signed events -> "
        "the central platform, with a local alert feed.")
    parser.add_argument("--version", action="version", version=gateway.__version__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run the gateway daemon")
    p.add_argument("--config", type=Path, required=True, help="the TOML configuration file")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("demo", help="simulated machines, gateway and receiver on loopback")
    p.add_argument("--machines", type=int, default=4, help="simulated machines (default 4)")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds of play before the summary (default: until Ctrl-C)")
    p.add_argument("--rate", type=float, default=2.0,
                   help="exceptions per second per machine (default 2)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="keep the demo's outbox, keys and receiver db here (default: temporary)")
    p.add_argument("--feed-port", type=int, default=8080,
                   help="port of the alert board on 127.0.0.1 (default 8080; 0 = any free port)")
    p.set_defaults(func=_cmd_demo)

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

    from drivers.sim.cli import add_commands as add_sim_commands
    from gateway.receiver.cli import add_commands as add_receiver_commands

    add_receiver_commands(sub)
    add_sim_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from gateway.logs import configure_logging

    args = build_parser().parse_args(argv)
    # Logs go to stderr for every command, so stdout stays for results (URLs, paths, JSON).
    configure_logging("info", "auto")
    try:
        return args.func(args)
    except (ConfigError, KeyFileError) as err:
        print(f"casino-gateway: configuration error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except StoreError as err:
        print(f"casino-gateway: outbox error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
