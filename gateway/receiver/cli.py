"""`casino-gateway receiver ...`: run the reference platform endpoint, register gateways, stats.

The lead wires `add_commands(subparsers)` into gateway/cli.py; every leaf sets `func(args) -> int`.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

import trio
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from gateway.config import MonitorSection
from gateway.errors import EXIT_CONFIG, ConfigError
from gateway.platform.options import add_nats_options, nats_settings
from gateway.receiver.backend import BackendError
from gateway.receiver.metrics import check_token_file
from gateway.receiver.server import COMMAND_CHECK_S, ReceiverSettings, serve_receiver
from gateway.receiver.store import ReceiverStore
from gateway.signing import key_id

__all__ = ["add_commands"]


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {value!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    receiver = subparsers.add_parser(
        "receiver", help="the reference platform endpoint (sandbox / certification peer)")
    sub = receiver.add_subparsers(dest="receiver_command", required=True)

    _add_run(sub)

    register = sub.add_parser("register", help="register a gateway's public key and token")
    register.add_argument("gateway_id")
    register.add_argument("pubkey_file", type=Path, help="hex public key (keys export-public)")
    register.add_argument("--token-file", type=Path, required=True)
    register.add_argument("--db", type=Path, required=True)
    register.set_defaults(func=_cmd_register)

    revoke = sub.add_parser("revoke-key", help="revoke a compromised key id of a gateway "
                                                "(effective for connections opened afterwards)")
    revoke.add_argument("gateway_id")
    revoke.add_argument("kid", help="ed25519:... as the gateway's events name it")
    revoke.add_argument("--db", type=Path, required=True)
    revoke.set_defaults(func=_cmd_revoke)

    stats = sub.add_parser("stats", help="counters: received, duplicates, bad signatures, gaps")
    stats.add_argument("--db", type=Path, required=True)
    stats.add_argument("--gateway", help="one gateway only")
    stats.add_argument("--json", action="store_true", help="machine-readable output")
    stats.set_defaults(func=_cmd_stats)

    command = sub.add_parser(
        "command", help="queue a command for a gateway and wait for its result",
        description="Queue a command; the running receiver sends it when the gateway is "
                    "connected. Exit 0 if the gateway answered ok, 1 otherwise (rejected, "
                    "failed, or no answer within --wait).")
    command.add_argument("gateway_id")
    command.add_argument("name", help="disableMachine, enableMachine, requestMeters, setClock, "
                                      "remoteHandpayReset or acknowledgeAlert")
    command.add_argument("--target-port", help="machine target: the gateway's port name")
    command.add_argument("--target-address", type=int, help="machine target: SAS address")
    command.add_argument("--alert-seq", type=int, help="acknowledgeAlert target: the alert's seq")
    command.add_argument("--args", default="{}", help="arguments as a JSON object "
                                                      "(e.g. '{\"time\": \"2026-11-21T06:00:00Z\"}')")
    command.add_argument("--id", dest="command_id", help="command id (default: a random one); "
                                                         "the gateway executes an id at most once")
    command.add_argument("--db", type=Path, required=True)
    command.add_argument("--wait", type=float, default=30.0, metavar="SECONDS",
                         help="how long to wait for the result (default 30; 0: do not wait)")
    command.set_defaults(func=_cmd_command)

    commands = sub.add_parser("commands", help="list commands and their results")
    commands.add_argument("--db", type=Path, required=True)
    commands.add_argument("--gateway", help="one gateway only")
    commands.add_argument("--json", action="store_true", help="one JSON object per line")
    commands.set_defaults(func=_cmd_commands)


def _add_run(sub: argparse._SubParsersAction) -> None:
    """`receiver run`: where it listens, its store (SQLite or JetStream), TLS, metrics."""
    run = sub.add_parser("run", help="accept gateway uplinks until SIGINT/SIGTERM")
    run.add_argument("--listen", type=_listen, default=("127.0.0.1", 8765),
                     metavar="HOST:PORT", help="address to listen on (default 127.0.0.1:8765)")
    run.add_argument("--db", type=Path, help="receiver SQLite database (the embedded default)")
    add_nats_options(run, flag="--jetstream", required=False)  # instead of --db: a platform
    run.add_argument("--cert", type=Path, help="TLS certificate chain (PEM); omit for plain ws://")
    run.add_argument("--key", type=Path, help="TLS private key (PEM)")
    run.add_argument("--metrics-listen", type=_listen, metavar="HOST:PORT",
                     help="serve Prometheus /metrics and /health there (e.g. 127.0.0.1:9465); "
                          "a non-loopback HOST needs --metrics-token-file")
    run.add_argument("--metrics-token-file", type=Path, metavar="PATH",
                     help="bearer token scrapers must send (a 0600 file)")
    run.set_defaults(func=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    if (args.cert is None) != (args.key is None):
        print("receiver run: --cert and --key go together", file=sys.stderr)
        return 2
    if (args.db is None) == (args.nats is None):
        print("receiver run: give --db (SQLite) or --jetstream (a NATS platform)",
              file=sys.stderr)
        return 2
    jetstream = None
    if args.nats is not None:
        try:
            jetstream = nats_settings(args, "casino-receiver")
        except ValueError as err:
            print(f"receiver run: {err}", file=sys.stderr)
            return EXIT_CONFIG
        except ImportError:
            print("receiver run: --jetstream needs the platform extra: pip install "
                  "'casino-edge-gateway[platform]'", file=sys.stderr)
            return EXIT_CONFIG
    try:
        metrics = _metrics_settings(args)
    except ValueError as err:
        print(f"receiver run: {err}", file=sys.stderr)
        return EXIT_CONFIG
    host, port = args.listen
    settings = ReceiverSettings(host=host, port=port, db_path=args.db, certfile=args.cert,
                                keyfile=args.key, jetstream=jetstream, metrics=metrics)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve_receiver, settings)
            print(handle.url, flush=True)
            if metrics is not None:  # a second line: where to scrape (the port may be 0)
                print(f"http://{_host(metrics.host)}:{handle.metrics_port}/metrics", flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        found, _ = group.split(BackendError)
        if found is None:
            raise
        while isinstance(found, BaseExceptionGroup):
            found = found.exceptions[0]
        print(f"receiver run: {found}", file=sys.stderr)  # cannot reach NATS, or no stream
        return EXIT_CONFIG
    return 0


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _metrics_settings(args: argparse.Namespace) -> MonitorSection | None:
    """The /metrics listener: loopback without a token, anything else only with one (the
    gateway's [monitor] rule); the token file must be 0600. ValueError: a one-line reason."""
    if args.metrics_listen is None:
        if args.metrics_token_file is not None:
            raise ValueError("--metrics-token-file needs --metrics-listen")
        return None
    if args.metrics_token_file is not None:
        check_token_file(args.metrics_token_file)
    host, port = args.metrics_listen
    try:
        return MonitorSection(host=host, port=port, token_file=args.metrics_token_file)
    except (ValueError, ConfigError):
        raise ValueError(f"--metrics-listen {host} is not loopback: give --metrics-token-file "
                         "(scrapers then send Authorization: Bearer <token>)") from None


def _cmd_revoke(args: argparse.Namespace) -> int:
    store = ReceiverStore(args.db)
    try:
        known = store.revoke_key(args.gateway_id, args.kid)
    finally:
        store.close()
    print(f"revoked {args.kid} of {args.gateway_id}"
          + ("" if known else " (it was not registered; it can never be learnt now)"))
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    try:
        token = args.token_file.read_text().strip()
        words = args.pubkey_file.read_text().split()
        pubkey = words[0]
    except (OSError, IndexError) as err:
        print(f"receiver register: {err}", file=sys.stderr)
        return 1
    if not token:
        print(f"receiver register: token file {args.token_file} is empty", file=sys.stderr)
        return 1
    stated = words[1] if len(words) > 1 else None
    try:
        derived = key_id(VerifyKey(bytes.fromhex(pubkey)))
    except (ValueError, CryptoError) as err:
        print(f"receiver register: {args.pubkey_file} is not a hex Ed25519 public key: {err}",
              file=sys.stderr)
        return 1
    if stated is not None and stated != derived:
        # docs/uplink-protocol.md P-KEY-1: the kid is derived from the key, never taken on trust.
        print(f"receiver register: {args.pubkey_file} names kid {stated}, but its key's kid is "
              f"{derived}", file=sys.stderr)
        return 1
    store = ReceiverStore(args.db)
    try:
        if store.revoked(args.gateway_id, derived):
            print(f"receiver register: key {derived} of {args.gateway_id} was revoked; "
                  f"register a new key", file=sys.stderr)
            return 1
        kid = store.register(args.gateway_id, token, pubkey)
    except ValueError as err:
        print(f"receiver register: {args.pubkey_file} is not a hex Ed25519 public key: {err}",
              file=sys.stderr)
        return 1
    finally:
        store.close()
    print(f"registered {args.gateway_id} with key {kid}")
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    if not args.db.exists():
        print(f"receiver stats: no database at {args.db}", file=sys.stderr)
        return 1
    store = ReceiverStore(args.db)
    try:
        figures = store.figures(args.gateway)
    finally:
        store.close()
    if args.json:
        print(json.dumps(figures, sort_keys=True))
    else:
        width = max(len(k) for k in figures)
        for key, value in figures.items():
            print(f"{key:<{width}}  {value}")
    return 0


def _command_target(args: argparse.Namespace) -> tuple[dict[str, Any] | None, str | None]:
    machine = args.target_port is not None or args.target_address is not None
    if machine and args.alert_seq is not None:
        return None, "--alert-seq and --target-port/--target-address exclude each other"
    if machine:
        if args.target_port is None or args.target_address is None:
            return None, "--target-port and --target-address go together"
        return {"port": args.target_port, "address": args.target_address}, None
    if args.alert_seq is not None:
        return {"alert_seq": args.alert_seq}, None
    return None, None


def _cmd_command(args: argparse.Namespace) -> int:
    target, problem = _command_target(args)
    try:
        command_args = json.loads(args.args)
    except ValueError as err:
        problem = problem or f"--args is not JSON: {err}"
    else:
        if not isinstance(command_args, dict):
            problem = problem or "--args must be a JSON object"
    if problem:
        print(f"receiver command: {problem}", file=sys.stderr)
        return 2
    if not args.db.exists():
        print(f"receiver command: no database at {args.db}", file=sys.stderr)
        return 1
    store = ReceiverStore(args.db)
    try:
        if not store.keys(args.gateway_id):
            print(f"receiver command: gateway {args.gateway_id!r} is not registered",
                  file=sys.stderr)
            return 1
        try:
            command_id = store.add_command(args.gateway_id, args.name, target, command_args,
                                           args.command_id)
        except ValueError as err:
            print(f"receiver command: {err}", file=sys.stderr)
            return 1
        if args.wait <= 0:
            print(command_id)
            return 0
        row = trio.run(_wait_done, store, command_id, args.wait)
    finally:
        store.close()
    if row["status"] != "done":
        print(f"receiver command: no result for {command_id} within {args.wait:g} s (status "
              f"{row['status']}); it stays queued", file=sys.stderr)
        return 1
    print(json.dumps({key: row[key] for key in ("id", "result", "reason", "data")},
                     sort_keys=True))
    return 0 if row["result"] == "ok" else 1


async def _wait_done(store: ReceiverStore, command_id: str, wait_s: float) -> dict[str, Any]:
    row = store.command(command_id)
    assert row is not None
    with trio.move_on_after(wait_s):
        while row["status"] != "done":
            # The receiver process completes the row; SQLite cannot notify another process, so
            # look again every COMMAND_CHECK_S (one primary-key read), bounded by --wait.
            await trio.sleep(COMMAND_CHECK_S)
            row = store.command(command_id)
            assert row is not None
    return row


def _cmd_commands(args: argparse.Namespace) -> int:
    if not args.db.exists():
        print(f"receiver commands: no database at {args.db}", file=sys.stderr)
        return 1
    store = ReceiverStore(args.db)
    try:
        rows = store.commands(args.gateway)
    finally:
        store.close()
    for row in rows:
        if args.json:
            print(json.dumps(row, sort_keys=True))
            continue
        target = "" if row["target"] is None else json.dumps(row["target"], sort_keys=True)
        outcome = f"{row['result']}" + (f": {row['reason']}" if row["reason"] else "")
        print(f"{row['id']}  {row['gateway_id']}  {row['name']}  {target}  {row['status']}"
              f"{'  ' + outcome if row['status'] == 'done' else ''}")
    return 0
