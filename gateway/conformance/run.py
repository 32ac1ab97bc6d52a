"""Running the checks in order and the `casino-gateway conformance` command."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import nacl.signing
import trio
from trio_websocket import ConnectionRejected, HandshakeError

from gateway.conformance.checks import CHECKS, NOT_ON_THE_WIRE
from gateway.conformance.kit import Blocked, Closed, Failed, Kit, Settings
from gateway.signing import Signer
from gateway.uplink import protocol as proto
from gateway.uplink.vectors import SEED_1

__all__ = ["Result", "add_commands", "kit_signer", "run_kit"]


@dataclass(frozen=True)
class Result:
    rule: str
    status: str  # PASS, FAIL, SKIP
    title: str
    detail: str = ""


def kit_signer() -> Signer:
    """The key the platform registers for the kit's gateways: the test vectors' key_1."""
    return Signer(nacl.signing.SigningKey(SEED_1))


async def run_kit(settings: Settings, signer: Signer | None = None) -> list[Result]:
    kit = Kit(settings, signer or kit_signer())
    results: list[Result] = []
    status: dict[str, str] = {}
    for check in CHECKS:
        if check.needs_command and not settings.command_pending:
            result = Result(check.rule, "SKIP", check.title, "no command pending (not requested)")
        elif blocked := [r for r in check.needs if status.get(r) != "PASS"]:
            result = Result(check.rule, "SKIP", check.title, f"needs {', '.join(blocked)}")
        else:
            result = await _one(kit, check.rule, check.title, check.run)
        status[check.rule] = result.status
        results.append(result)
    results.append(_closes(kit))
    return results


async def _one(kit: Kit, rule: str, title: str, run) -> Result:  # type: ignore[no-untyped-def]
    try:
        with trio.fail_after(max(30.0, kit.settings.timeout_s * 6)):
            await run(kit)
    except Blocked as err:
        return Result(rule, "SKIP", title, str(err))
    except Failed as err:
        return Result(rule, "FAIL", title, str(err))
    except Closed as closed:
        return Result(rule, "FAIL", title, f"the platform closed the connection: {closed}")
    except ConnectionRejected as rejected:
        return Result(rule, "FAIL", title, f"upgrade refused: HTTP {rejected.status_code}")
    except (OSError, HandshakeError, trio.BrokenResourceError, trio.TooSlowError) as err:
        return Result(rule, "FAIL", title, f"{type(err).__name__}: {err}")
    return Result(rule, "PASS", title)


def _closes(kit: Kit) -> Result:
    title = "an error frame with the same code precedes every 4xxx close"
    ours = [c for c in kit.closes if c.code is not None and 4000 <= c.code <= 4999]
    if not ours:
        return Result("P-CLOSE-1", "SKIP", title, "no 4xxx close was seen")
    bare = sorted({c.code for c in ours if c.code not in c.error_codes})
    if bare:
        return Result("P-CLOSE-1", "FAIL", title, f"closes {bare} came without an error frame "
                                                  f"of that code")
    return Result("P-CLOSE-1", "PASS", title, f"{len(ours)} closes checked")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("conformance", help="check a platform endpoint against the uplink spec")
    p.add_argument("--url", help="the platform's wss://HOST/v1/stream")
    p.add_argument("--gateway-id", help="a gateway id registered with --print-key's key")
    p.add_argument("--token-file", type=Path, help="that gateway's bearer token")
    p.add_argument("--other-gateway-id", help="a second registered gateway id")
    p.add_argument("--other-token-file", type=Path, help="the second gateway's token")
    p.add_argument("--ca-file", type=Path, default=None)
    p.add_argument("--command-pending", action="store_true",
                   help="one command is queued for --gateway-id (checks P-CMD-1, P-CMD-2)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    p.add_argument("--json", action="store_true")
    p.add_argument("--print-key", action="store_true",
                   help="print the public key file to register for both gateway ids")
    p.set_defaults(func=_cmd_conformance)


def _cmd_conformance(args: argparse.Namespace) -> int:
    signer = kit_signer()
    if args.print_key:
        sys.stdout.write(f"{bytes(signer.verify_key).hex()} {signer.kid}\n")
        return 0
    missing = [f"--{n.replace('_', '-')}" for n in ("url", "gateway_id", "token_file",
                                                     "other_gateway_id", "other_token_file")
               if getattr(args, n) is None]
    if missing:
        print(f"conformance: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        token, other = (args.token_file.read_text().strip(),
                        args.other_token_file.read_text().strip())
    except OSError as err:
        print(f"conformance: cannot read a token file: {err}", file=sys.stderr)
        return 1
    settings = Settings(args.url, args.gateway_id, token, args.other_gateway_id, other,
                        str(args.ca_file) if args.ca_file else None, args.command_pending,
                        args.timeout)
    results = trio.run(run_kit, settings, signer)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=1))
    else:
        for r in results:
            print(f"{r.status:4}  {r.rule:14} {r.title}" + (f"  -- {r.detail}" if r.detail else ""))
        for rule, what in NOT_ON_THE_WIRE.items():
            print(f"{'N/A':4}  {rule:14} {what} (not observable on the wire)")
        failed = sum(r.status == "FAIL" for r in results)
        print(f"protocol {proto.PROTO}: {sum(r.status == 'PASS' for r in results)} passed, "
              f"{failed} failed, {sum(r.status == 'SKIP' for r in results)} skipped")
    return 1 if any(r.status == "FAIL" for r in results) else 0
