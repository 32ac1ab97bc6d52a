"""`casino-gateway platform ...`: set up, register gateways on, and inspect the JetStream platform.

init (stream and buckets), register / revoke-key (the registry), command (queue a command for a
gateway, wherever it is connected, and wait for its result), tail (follow the events), verify
(re-check signatures and chains end to end from the stream), stats (stream and marks).
asyncio throughout (nats-py); nothing here runs in the receiver.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from gateway.errors import EXIT_CONFIG, EXIT_FAILURE
from gateway.platform.options import add_nats_options, nats_settings

__all__ = ["add_commands"]


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    platform = subparsers.add_parser(
        "platform", help="the fleet platform on NATS JetStream (needs the [platform] extra)")
    sub = platform.add_subparsers(dest="platform_command", required=True)

    init = sub.add_parser("init", help="create or update the events stream and KV buckets")
    init.add_argument("--replicas", type=int, default=3, help="R of stream and buckets (1-5)")
    init.add_argument("--duplicate-window", type=float, default=900.0, metavar="SECONDS",
                      help="de-duplication window by event id (default 900; docs/platform.md)")
    init.add_argument("--max-age", type=float, default=0.0, metavar="SECONDS",
                      help="drop events older than this (default 0: keep)")
    init.add_argument("--max-bytes", type=int, default=-1, help="stream size limit (-1: none)")
    init.set_defaults(func=_cmd_init)

    register = sub.add_parser("register", help="register a gateway's public key and token")
    register.add_argument("gateway_id")
    register.add_argument("pubkey_file", type=Path, help="hex public key (keys export-public)")
    register.add_argument("--token-file", type=Path, required=True)
    register.add_argument("--region", required=True, help="subject token: letters, digits, _ -")
    register.add_argument("--venue", required=True, help="subject token: letters, digits, _ -")
    register.set_defaults(func=_cmd_register)

    revoke = sub.add_parser("revoke-key", help="revoke a compromised key id of a gateway")
    revoke.add_argument("gateway_id")
    revoke.add_argument("kid")
    revoke.set_defaults(func=_cmd_revoke)

    command = sub.add_parser("command", help="queue a command and wait for the gateway's result")
    command.add_argument("gateway_id")
    command.add_argument("name")
    command.add_argument("--target-port")
    command.add_argument("--target-address", type=int)
    command.add_argument("--alert-seq", type=int)
    command.add_argument("--args", default="{}", help="arguments as a JSON object")
    command.add_argument("--id", dest="command_id", help="command id (default: random)")
    command.add_argument("--wait", type=float, default=30.0, metavar="SECONDS")
    command.set_defaults(func=_cmd_command)

    tail = sub.add_parser("tail", help="print events as JSON lines as they arrive")
    tail.add_argument("--subject", default="casino.>", help="filter (default casino.>)")
    tail.add_argument("--all", action="store_true", help="from the first event, not new ones")
    tail.add_argument("--count", type=int, default=0, help="stop after N events (0: never)")
    tail.set_defaults(func=_cmd_tail)

    verify = sub.add_parser("verify", help="re-check every event in the stream end to end")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=_cmd_verify)

    stats = sub.add_parser("stats", help="stream state and every gateway's marks and counters")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=_cmd_stats)

    for leaf in (init, register, revoke, command, tail, verify, stats):
        add_nats_options(leaf)


def _run(args: argparse.Namespace, main: Any) -> int:
    """Settings, then the coroutine; one-line errors (78 for configuration)."""
    try:
        settings = nats_settings(args, "casino-platform-cli")
    except ValueError as err:
        print(f"platform {args.platform_command}: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except ImportError:
        print("platform: needs the platform extra: pip install 'casino-edge-gateway[platform]'",
              file=sys.stderr)
        return EXIT_CONFIG
    from gateway.receiver.backend import BackendError

    try:
        return int(asyncio.run(main(settings)))
    except BackendError as err:
        print(f"platform {args.platform_command}: {err}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 0


def _cmd_init(args: argparse.Namespace) -> int:
    from gateway.platform.store import Platform, StreamLimits

    if not 1 <= args.replicas <= 5:
        print("platform init: --replicas must be 1-5", file=sys.stderr)
        return EXIT_CONFIG

    async def main(settings: Any) -> int:
        await Platform.init(settings, StreamLimits(
            replicas=args.replicas, duplicate_window_s=args.duplicate_window,
            max_age_s=args.max_age, max_bytes=args.max_bytes))
        print(f"stream and buckets ready (R{args.replicas}, duplicate window "
              f"{args.duplicate_window:g} s)")
        return 0
    return _run(args, main)


def _cmd_register(args: argparse.Namespace) -> int:
    from gateway.platform import names
    from gateway.platform.store import Platform
    from gateway.receiver.store import token_digest

    for label, value in (("--region", args.region), ("--venue", args.venue)):
        if not names.label_ok(value):
            print(f"platform register: {label} {value!r}: use 1-64 letters, digits, _ or -",
                  file=sys.stderr)
            return EXIT_CONFIG
    try:
        token = args.token_file.read_text().strip()
        words = args.pubkey_file.read_text().split()
    except OSError as err:
        print(f"platform register: {err}", file=sys.stderr)
        return EXIT_FAILURE
    if not token or not words:
        print("platform register: empty token or public key file", file=sys.stderr)
        return EXIT_FAILURE

    async def main(settings: Any) -> int:
        platform = await Platform.open(settings)
        try:
            kid = await platform.register(args.gateway_id, token_digest(token), words[0],
                                          args.region, args.venue)
        except ValueError as err:
            print(f"platform register: {err}", file=sys.stderr)
            return EXIT_FAILURE
        finally:
            await platform.close()
        if len(words) > 1 and words[1] != kid:
            print(f"platform register: warning: the file names kid {words[1]}, the key's is "
                  f"{kid} (P-KEY-1: the derived one is registered)", file=sys.stderr)
        print(f"registered {args.gateway_id} with key {kid} "
              f"({names.gateway_filter(args.region, args.venue, args.gateway_id)})")
        return 0
    return _run(args, main)


def _cmd_revoke(args: argparse.Namespace) -> int:
    from gateway.platform.store import Platform

    async def main(settings: Any) -> int:
        platform = await Platform.open(settings)
        try:
            known = await platform.change_keys(args.gateway_id, revoke=args.kid)
        finally:
            await platform.close()
        print(f"revoked {args.kid} of {args.gateway_id}" + ("" if known else
              " (it was not registered; it can never be learnt now)"))
        return 0
    return _run(args, main)


def _cmd_command(args: argparse.Namespace) -> int:
    from gateway.platform.store import Platform
    from gateway.receiver.cli import _command_target

    target, problem = _command_target(args)
    try:
        command_args = json.loads(args.args)
    except ValueError as err:
        problem = problem or f"--args is not JSON: {err}"
    if problem or not isinstance(command_args, dict):
        print(f"platform command: {problem or '--args must be a JSON object'}", file=sys.stderr)
        return 2

    async def main(settings: Any) -> int:
        platform = await Platform.open(settings)
        try:
            if await platform.gateway(args.gateway_id) is None:
                print(f"platform command: gateway {args.gateway_id!r} is not registered",
                      file=sys.stderr)
                return EXIT_FAILURE
            command_id = await platform.add_command(args.gateway_id, args.name, target,
                                                    command_args, args.command_id or
                                                    uuid.uuid4().hex)
            if args.wait <= 0:
                print(command_id)
                return 0
            row = await _wait_done(platform, args.gateway_id, command_id, args.wait)
        except ValueError as err:
            print(f"platform command: {err}", file=sys.stderr)
            return EXIT_FAILURE
        finally:
            await platform.close()
        if row["status"] != "done":
            print(f"platform command: no result for {command_id} within {args.wait:g} s "
                  f"(status {row['status']}); it stays queued", file=sys.stderr)
            return EXIT_FAILURE
        print(json.dumps({k: row[k] for k in ("id", "result", "reason", "data")},
                         sort_keys=True))
        return 0 if row["result"] == "ok" else EXIT_FAILURE
    return _run(args, main)


async def _wait_done(platform: Any, gateway_id: str, command_id: str,
                     wait_s: float) -> dict[str, Any]:
    """Watch the command's key (the receiver updates it) until done or `wait_s`."""
    from gateway.platform import names

    watcher = await platform.commands.watch(names.command_key(gateway_id, command_id))
    row: dict[str, Any] = {"status": "pending"}
    deadline = time.monotonic() + wait_s
    try:
        while row["status"] != "done" and time.monotonic() < deadline:
            try:
                entry = await watcher.updates(timeout=max(0.01, deadline - time.monotonic()))
            except Exception:  # nats TimeoutError: the wait is over
                break
            if entry is not None and entry.value:
                row = json.loads(entry.value)
    finally:
        await watcher.stop()
    return row


def _cmd_tail(args: argparse.Namespace) -> int:
    from nats.js.api import DeliverPolicy

    from gateway.platform.store import nats_connect
    from gateway.signing import decode_envelope

    async def main(settings: Any) -> int:
        nc = await nats_connect(settings)
        try:
            js = nc.jetstream()
            sub = await js.subscribe(args.subject, ordered_consumer=True,
                                     deliver_policy=DeliverPolicy.ALL if args.all
                                     else DeliverPolicy.NEW)
            seen = 0
            async for msg in sub.messages:
                env = decode_envelope(msg.data)
                print(json.dumps({"subject": msg.subject, "stream_seq": msg.metadata.sequence.stream,
                                  "id": env.get("id"), "event": env.get("event"),
                                  "timestamp": env.get("timestamp"), "data": env.get("data")},
                                 default=repr, sort_keys=True), flush=True)
                seen += 1
                if args.count and seen >= args.count:
                    break
        finally:
            await nc.close()
        return 0
    return _run(args, main)


async def read_stream(settings: Any, on_message: Any) -> int:
    """Every message of the events stream, in order, to `on_message(subject, payload)`;
    returns the stream's own message count at the start (what was read must equal it)."""
    from nats.js.api import DeliverPolicy

    from gateway.platform import names
    from gateway.platform.store import NATS_ERRORS, nats_connect

    nc = await nats_connect(settings)
    try:
        js = nc.jetstream(timeout=5)
        for attempt in range(6):  # a node that just restarted: the API may time out a while
            try:
                info = await js.stream_info(names.EVENTS_STREAM)
                total, last = info.state.messages, info.state.last_seq
                sub = await js.subscribe(f"{names.ROOT}.>", stream=names.EVENTS_STREAM,
                                         ordered_consumer=True, deliver_policy=DeliverPolicy.ALL,
                                         pending_msgs_limit=-1) if total else None
                break
            except NATS_ERRORS:
                if attempt == 5:
                    raise
                await asyncio.sleep(0.5)
        if sub is not None:
            async for msg in sub.messages:
                on_message(msg.subject, msg.data)
                if msg.metadata.sequence.stream >= last:
                    break
            await sub.unsubscribe()
        return int(total)
    finally:
        await nc.close()


async def read_registry(platform: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    watcher = await platform.registry.watch("gw.>", ignore_deletes=True)
    try:
        async for entry in watcher:
            if entry is None:
                break
            if entry.value:
                value = json.loads(entry.value)
                out[value["gateway_id"]] = value
    finally:
        await watcher.stop()
    return out


def _cmd_verify(args: argparse.Namespace) -> int:
    from gateway.platform.audit import Audit
    from gateway.platform.store import NATS_ERRORS, Platform

    async def read_all(settings: Any) -> tuple[Audit, int]:
        platform = await Platform.open(settings)
        try:
            registry = await read_registry(platform)
        finally:
            await platform.close()
        audit = Audit(registry)
        return audit, await read_stream(settings, audit.add)

    async def main(settings: Any) -> int:
        # A node that just restarted can time out a read while it catches up, or answer the
        # registry's watch with nothing yet (every event then unattributed): the whole read is
        # tried again (from scratch, so nothing is counted twice), up to three times, and only
        # the last one's unattributed events are reported.
        for attempt in range(3):
            try:
                audit, total = await read_all(settings)
                if not audit.unattributed or attempt == 2:
                    break
                print(f"platform verify: {len(audit.unattributed)} events of no registered "
                      "gateway; reading again", file=sys.stderr)
            except NATS_ERRORS as err:
                if attempt == 2:
                    print(f"platform verify: cannot read the stream: {err!r}", file=sys.stderr)
                    return EXIT_FAILURE
                print(f"platform verify: {err!r}; reading again", file=sys.stderr)
            await asyncio.sleep(1.0 + attempt)
        reports = audit.finish()
        counted = audit.messages == total
        ok = counted and not audit.unattributed and all(r.ok for r in reports)
        if args.json:
            print(json.dumps({"ok": ok, "stream_messages": total, "read": audit.messages,
                              "unattributed": audit.unattributed,
                              "streams": [vars(r) | {"ok": r.ok} for r in reports]},
                             sort_keys=True))
        else:
            for r in reports:
                state = "OK" if r.ok else "FAIL"
                print(f"{state}  {r.gateway_id}  epoch {r.epoch}  {r.events} events  "
                      f"seq 1..{r.high_water}  duplicates {r.duplicates}  gaps {r.gaps or 0}  "
                      f"chain breaks {r.chain_breaks or 0}  bad {r.bad[:3] or 0}")
            for line in audit.unattributed[:20]:
                print(f"FAIL  unattributed: {line}")
            print(f"{'OK' if ok else 'FAIL'}: {audit.messages} events read, the stream holds "
                  f"{total}; {len(reports)} streams")
        return 0 if ok else EXIT_FAILURE
    return _run(args, main)


def _cmd_stats(args: argparse.Namespace) -> int:
    from gateway.platform import names
    from gateway.platform.store import Platform

    async def main(settings: Any) -> int:
        platform = await Platform.open(settings)
        try:
            info = await platform.js.stream_info(names.EVENTS_STREAM)
            heads = await platform.heads()
        finally:
            await platform.close()
        cluster = info.cluster
        figures = {
            "stream": names.EVENTS_STREAM, "messages": info.state.messages,
            "bytes": info.state.bytes, "replicas": info.config.num_replicas,
            "duplicate_window_s": info.config.duplicate_window,
            "leader": cluster.leader if cluster else None,
            "streams": {names.untoken(k): v for k, v in sorted(heads.items())},
        }
        if args.json:
            print(json.dumps(figures, sort_keys=True))
        else:
            for key, value in figures.items():
                if key != "streams":
                    print(f"{key:<20}  {value}")
            for key, head in figures["streams"].items():
                print(f"{key:<44}  high_water {head['high_water']}  received "
                      f"{head['received']}  duplicates {head['duplicates']}  gaps {head['gaps']}")
        return 0
    return _run(args, main)
