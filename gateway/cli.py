"""`casino-gateway`: the one command venue IT, technicians and the platform team use.

    run       the daemon (what systemd starts)
    check     validate a configuration and every file and device it names, starting nothing
    demo      simulated machines + gateway + reference receiver on loopback, with a summary
    diag      status table, live poll trace and port probe for technicians
    keys      create, show and export the gateway's signing key
    tokens    make staff tokens for the alert board (printed once; only the hash is configured)
    outbox    inspect and verify the local outbox offline
    receiver  the reference platform endpoint (run, register, stats)
    simulate  simulated machines on pseudo-terminals, for a gateway in another process

Exit codes: 0 ok, 1 failure, 2 usage, 78 configuration error (bad config, key file).
"""

from __future__ import annotations

import argparse
import sys
import time
from functools import partial
from pathlib import Path
from typing import TextIO

import gateway
from gateway.check import Problem
from gateway.errors import EXIT_CONFIG, EXIT_FAILURE, ConfigError, StoreError
from gateway.signing import KeyFileError

__all__ = ["main"]


def _print_problems(problems: list[Problem], stream: TextIO | None = None) -> None:
    """One line per problem on stderr, with its journald priority under systemd."""
    from gateway.logs import journal_prefix

    stream = stream or sys.stderr
    for problem in problems:
        kind = "warning" if problem.warning else "configuration error"
        where = f"{problem.field}: " if problem.field else ""
        print(f"{journal_prefix('warning' if problem.warning else 'error', stream)}"
              f"casino-gateway: {kind}: {where}{problem.message}", file=stream)


def _cmd_run(args: argparse.Namespace) -> int:
    import trio

    from gateway import daemon
    from gateway.check import check_config
    from gateway.config import load_config
    from gateway.logs import configure_logging

    config = load_config(args.config)
    # The same validator as `check`: nothing starts unless everything run loads is usable.
    problems = check_config(config, starting=True)
    _print_problems(problems)
    if any(not p.warning for p in problems):
        return EXIT_CONFIG
    configure_logging(config.log.level, config.log.format)
    trio.run(partial(daemon.run, config, config_path=args.config.resolve()))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from gateway.check import check_config
    from gateway.config import load_config

    config = load_config(args.config)
    problems = check_config(config, strict=args.strict)
    _print_problems(problems)
    errors = sum(not p.warning for p in problems)
    if errors:
        print(f"{args.config}: {errors} problem(s); the gateway would not start", file=sys.stderr)
        return EXIT_CONFIG
    warnings = len(problems)
    print(f"{args.config}: OK ({len(config.ports)} port(s)"
          + (f", {warnings} warning(s))" if warnings else ")"))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from gateway.demo import run_demo

    return run_demo(machines=args.machines, duration=args.duration, as_json=args.json,
                    state_dir=args.state_dir, rate=args.rate, feed_port=args.feed_port)


def _cmd_tokens(args: argparse.Namespace) -> int:
    from gateway.tokens import TOKEN_BYTES, make_token

    made = make_token(args.role, args.name or f"{args.role}-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"token for {made.name} ({made.role}, {TOKEN_BYTES * 8} random bits); it is shown "
          f"only now and stored nowhere, give it to its holder:\n\n  {made.token}\n\n"
          f"add to the configuration, then: systemctl reload casino-gateway\n\n"
          f"{made.config_lines()}", end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="casino-gateway", description="Edge gateway: SAS slot machines -> signed events -> "
        "the central platform, with a local alert feed.")
    parser.add_argument("--version", action="version", version=gateway.__version__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_own_commands(sub)
    from drivers.sim.cli import add_commands as add_sim_commands
    from gateway.backup import add_commands as add_backup_commands
    from gateway.conformance.run import add_commands as add_conformance_commands
    from gateway.diag import add_commands as add_diag_commands
    from gateway.keys_cli import add_commands as add_keys_commands
    from gateway.outbox_cli import add_commands as add_outbox_commands
    from gateway.platform.cli import add_commands as add_platform_commands
    from gateway.receiver.cli import add_commands as add_receiver_commands

    add_backup_commands(sub)
    add_platform_commands(sub)
    add_conformance_commands(sub)
    add_diag_commands(sub)
    add_keys_commands(sub)
    add_outbox_commands(sub)
    add_receiver_commands(sub)
    add_sim_commands(sub)
    _describe_simulate(sub)
    return parser




def _add_own_commands(sub: argparse._SubParsersAction) -> None:
    """run, check, demo and tokens; every other command group adds itself (add_commands)."""
    p = sub.add_parser("run", help="run the gateway daemon")
    p.add_argument("--config", type=Path, required=True, help="the TOML configuration file")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "check", help="validate the configuration and everything it names; start nothing",
        description="Validate what `run` would load -- fields, key and token files (owner, "
        "mode 0600), certificates, the state directory, serial devices -- and start nothing: "
        "no port is opened, no file written. Exit 0 if run would start, 78 with one line per "
        "problem if not. A missing or busy serial device is a warning (a USB adapter can "
        "appear late at boot; the gateway retries it) unless --strict.")
    p.add_argument("--config", type=Path, required=True, help="the TOML configuration file")
    p.add_argument("--strict", action="store_true",
                   help="missing or busy serial devices are errors too")
    p.set_defaults(func=_cmd_check)

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

    p = sub.add_parser("tokens", help="make staff tokens for the alert board and feed",
                       description="Staff tokens for [[feed.tokens]]: only their SHA-256 goes "
                       "into the configuration.")
    tokens = p.add_subparsers(dest="tokens_action", required=True, metavar="ACTION")
    t = tokens.add_parser("new", help="print a new random token once, and its config lines",
                          description="Print a new token (256 random bits) once, and the "
                          "[[feed.tokens]] table holding its hash.")
    t.add_argument("--role", required=True, choices=["viewer", "attendant", "supervisor"],
                   help="viewer: watch; attendant: + acknowledge alerts; supervisor: + commands")
    t.add_argument("--name", default=None,
                   help="who holds it, shown in logs and audits (default ROLE-DATE-TIME)")
    t.set_defaults(func=_cmd_tokens)


def _describe_simulate(sub: argparse._SubParsersAction) -> None:
    """Say what `simulate` prints (its parser lives with the simulator in drivers/sim)."""
    sub.choices["simulate"].description = (
        "Run simulated SAS machines on pseudo-terminals until Ctrl-C. Prints each machine's "
        "pty path on its own line (e.g. /dev/pts/3) as soon as it is ready -- use them as "
        "[[ports]] device in a gateway configuration, or with diag probe --device -- and a "
        "JSON summary line when stopped.")
    for choice in sub._choices_actions:
        if choice.dest == "simulate":
            choice.help = "run simulated SAS machines on pseudo-terminals; prints their paths"


def main(argv: list[str] | None = None) -> int:
    from gateway.logs import configure_logging

    args = build_parser().parse_args(argv)
    # Logs go to stderr for every command, so stdout stays for results (URLs, paths, JSON).
    configure_logging("info", "auto")
    try:
        return args.func(args)
    except ConfigError as err:
        from gateway.config import problems_of

        _print_problems([Problem(e.field, str(e).removeprefix(f"{e.field}: "))
                         for e in problems_of(err)])
        return EXIT_CONFIG
    except KeyFileError as err:
        _print_problems([Problem("", str(err))])
        return EXIT_CONFIG
    except StoreError as err:
        print(f"casino-gateway: outbox error: {err}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
