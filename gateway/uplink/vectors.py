"""Test vectors for the uplink contract (docs/uplink-protocol.md), made by the project's own code.

    python -m gateway.uplink.vectors --write      # rewrites docs/vectors/uplink-v1.json
    python -m gateway.uplink.vectors --check      # exit 1 if the shipped file differs

Everything is fixed (two keys from published seeds, the epoch, timestamps, trace ids), so the
file is byte-for-byte reproducible; tests/conformance/test_vectors.py checks it against the
signing, verify and receiver code. The chain opens with a machine's meter windows and their
verdicts (as the reconciler makes them), then one event of every other catalogue type but
`epochStarted`, with a `keyRotated` near the end after which the second key signs;
`epochs` (gateway/uplink/vector_epochs.py) holds the later epochs: how a stream starts again,
and holes. Bytes are lowercase hex.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import functools
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import msgpack
import nacl.signing

from gateway.events import CATALOGUE, Draft
from gateway.reconcile.meters import RULES
from gateway.signing import GENESIS, INTEGRITY_FIELDS, Signer, canonical, chain_hash, seal
from gateway.uplink import protocol as proto
from gateway.uplink import vector_epochs

__all__ = ["VECTORS_PATH", "build", "render"]

VECTORS_PATH = Path(__file__).parents[2] / "docs" / "vectors" / "uplink-v1.json"

SEED_1 = hashlib.sha256(b"casino-edge-gateway uplink test vector key 1").digest()
SEED_2 = hashlib.sha256(b"casino-edge-gateway uplink test vector key 2").digest()
GATEWAY_ID = "gw-vectors-01"
EPOCH = "0011223344556677"
VENUE = "test-venue"
REGION = "test-region"
TOKEN = "vector-token-0123456789abcdef"
MACHINE = {"port": "sas0", "address": 1, "serial": "SN-0001", "asset": "A-17"}
# After `machineReplaced` (its `machine`, and every later machine event): the new identity.
MACHINE_2 = {"port": "sas0", "address": 1, "serial": "SN-0002", "asset": "A-18"}
# Seq n is stamped START + n seconds: the first meter read (seq 4) falls before 06:00 UTC, the
# default gaming-day start, the second (seq 11) after it, so the day close of 2026-11-20 is due.
START = dt.datetime(2026, 11, 21, 5, 59, 50, tzinfo=dt.UTC)

USD = "USD"


def _money(minor: int) -> dict[str, Any]:
    return {"minor": minor, "currency": USD}


# One `data` per catalogue type (valid against its schema); machine events carry MACHINE.
SAMPLES: dict[str, dict[str, Any]] = {
    "gatewayStarted": {"version": "0.1.0", "ports": [{"name": "sas0", "device": "/dev/ttyS0",
                                                      "addresses": [1]}],
                       "clock_synchronised": True},
    "deviceOnline": {},
    "uplinkUp": {"down_for_s": 0.25, "clock_synchronised": True},
    "gameSelected": {"game_number": 3},
    "betPlaced": {"wager_credits": 25, "wager": _money(25)},
    "gameEnded": {"win_credits": 100, "win": _money(100)},
    "billAccepted": {"amount": _money(2000), "denomination_code": 7, "country_code": 0},
    "ticketPrinted": {"amount": _money(12345), "validation_number": "001234567890123456"},
    "ticketInserted": {"amount": _money(500), "validation_number": "009876543210987654"},
    "meterSnapshot": {"meters": {"coin_in": 5000, "coin_out": 3100, "drop": 52500,
                                 "games_played": 42, "bills_20": 25},
                      "denomination": _money(1), "digits": {"coin_in": 8, "coin_out": 8,
                                                            "drop": 8, "games_played": 8,
                                                            "bills_20": 8}, "straddle": 0},
    "meterReconciled": {"from_seq": 40, "to_seq": 57, "events": {"betPlaced": 6, "gameEnded": 6,
                                                                 "billAccepted": 1},
                        "deltas": {"games_played": 6, "coin_in": 18, "coin_out": 12,
                                   "bills_20": 1, "drop": 2000},
                        "straddle": 0, "unreported": ["bills_2"], "rolled_over": []},
    "meterDiscrepancy": {"meter": "bills_20", "expected_min": 0, "expected_max": 0, "seen": 1,
                         "difference": 1, "cause": "eventsMissing", "evidence": [],
                         "rule": "meter 44 $20 bills accepted <-> bill accepted of $20",
                         "from_seq": 57, "to_seq": 63, "events": {"betPlaced": 2}},
    "gamingDayClosed": {"gaming_day": "2026-11-20", "windows": 1440, "reconciled": 1439,
                        "discrepancies": 1, "totals": {"games_played": 5230, "coin_in": 15690},
                        "meters": {"games_played": 91230, "coin_in": 273690}},
    "cardInserted": {"card_id": "5d1c0e5f2b7a9c3e8d4f6a1b0c2e4d6f", "key_id": "1210c263",
                     "medium": "magstripe"},
    "cardRemoved": {"card_id": "5d1c0e5f2b7a9c3e8d4f6a1b0c2e4d6f", "key_id": "1210c263",
                    "medium": "magstripe", "inserted_for_s": 1830.5, "reason": "removed"},
    "cardRead": {"card_id": "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5", "key_id": "1210c263",
                 "medium": "rfid"},
    "cardBadRead": {"medium": "magstripe", "reason": "the reader reported a read error",
                    "held_back": 2},
    "cardReaderOffline": {"reader": "reader-12", "reason": "read failed: [Errno 5] Input/output "
                                                           "error"},
    "cardReaderOnline": {"reader": "reader-12"},
    "doorOpened": {"door": "main"},
    "doorClosed": {"door": "main"},
    "tilt": {"kind": "reel tilt"},
    "handpayPending": {"amount": _money(150000), "level": 64, "partial_pay": _money(0),
                       "reset_id": 0},
    "handpayReset": {},
    "bufferOverflow": {"detail": "exception queue overflow (exception 70)"},
    "alertAcknowledged": {"alert_seq": 12, "by": "platform", "note": "seen"},
    "diskFull": {"free_mb": 60.5, "floor_mb": 64.0, "path": "/var/lib/casino-gateway"},
    "platformAhead": {"high_water": 160, "last_seq": 152},
    "diskSpaceRestored": {"free_mb": 80.0, "floor_mb": 64.0, "blocked_s": 12.5, "shed": 3},
    "powerLost": {},
    "powerApplied": {},
    "machineException": {"code": 0x3F, "name": "unknown 3F", "bad_data": False},
    "commandExecuted": {"command_id": "c-0001", "name": "requestMeters",
                        "requested_by": "platform", "target": {"port": "sas0", "address": 1},
                        "result": "ok"},
    "lossMarker": {"reason": "shed", "count": 4, "detail": "droppable events (cardBadRead) "
                                                            "shed while free space was under "
                                                            "64.0 MB"},
    "epochStarted": {"reason": "database-corrupt", "previous_epoch": "0123456789abcdef",
                     "detail": "unreadable outbox moved to outbox.db.corrupt-20261121T101500Z",
                     "salvaged": 3, "salvaged_first_seq": 301, "salvaged_last_seq": 303},
    "deviceOffline": {"reason": "link down: read failed: [Errno 5] Input/output error"},
    "machineReplaced": {"changed": ["serial", "asset"], "previous_serial": MACHINE["serial"],
                        "previous_asset": MACHINE["asset"], "previous_game": "AT/SIM001",
                        "game": "AT/SIM001"},
    "uplinkDown": {"reason": "platform did not answer a ping within 30 s"},
    "keyRotated": {},  # filled in with the second key
    "gatewayStopping": {"reason": "SIGTERM"},
}
MACHINE_TYPES = frozenset({
    "deviceOnline", "deviceOffline", "powerLost", "powerApplied", "machineException",
    "gameSelected", "betPlaced", "gameEnded", "billAccepted", "ticketPrinted", "ticketInserted",
    "meterSnapshot", "doorOpened", "doorClosed", "tilt", "handpayPending", "handpayReset",
    "bufferOverflow", "commandExecuted", "machineReplaced", "meterReconciled", "meterDiscrepancy",
    "gamingDayClosed", "cardInserted", "cardRemoved", "cardRead", "cardBadRead",
    "cardReaderOffline", "cardReaderOnline"})


def signers() -> tuple[Signer, Signer]:
    return (Signer(nacl.signing.SigningKey(SEED_1)), Signer(nacl.signing.SigningKey(SEED_2)))


def _json_view(value: Any) -> Any:
    """The JSON form used in the vectors: bytes as lowercase hex, everything else as is."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: _json_view(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_view(v) for v in value]
    return value


def _key_entry(signer: Signer) -> dict[str, Any]:
    public = bytes(signer.verify_key)
    return {
        "seed_hex": bytes(signer.key).hex(),
        "private_key_file": bytes(signer.key).hex() + "\n",
        "public_key_hex": public.hex(),
        "public_key_file": f"{public.hex()} {signer.kid}\n",
        "kid": signer.kid,
        "kid_rule": "ed25519: + hex(BLAKE2b(public_key, digest_size=8))",
    }


def _envelope(event_type: str, seq: int, data: dict[str, Any], *, epoch: str = EPOCH,
              timestamp: str | None = None, trace_id: str | None = None,
              machine: dict[str, Any] | None = None) -> dict[str, Any]:
    spec = CATALOGUE[event_type]
    if machine is None:
        machine = MACHINE_2 if event_type == "machineReplaced" else MACHINE
    draft = Draft(type=spec.type, channel=spec.channel, schema_version=spec.version,
                  timestamp=timestamp or _stamp(seq),
                  trace_id=trace_id or f"{seq:016x}", data=data,
                  machine=dict(machine) if event_type in MACHINE_TYPES else None)
    return {
        "event": draft.type, "channel": draft.channel, "schema_version": draft.schema_version,
        "id": f"{GATEWAY_ID}:{epoch}:{seq}", "seq": seq, "epoch": epoch,
        "gateway_id": GATEWAY_ID, "venue": VENUE, "region": REGION,
        "machine": draft.machine, "timestamp": draft.timestamp, "trace_id": draft.trace_id,
        "data": draft.data,
    }


def _stamp(seq: int) -> str:
    moment = START + dt.timedelta(seconds=seq, milliseconds=seq)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _snapshot(coin_in: int, coin_out: int, drop: int, games: int, bills_20: int
              ) -> dict[str, Any]:
    meters = {"coin_in": coin_in, "coin_out": coin_out, "drop": drop, "games_played": games,
              "bills_20": bills_20}
    return {"meters": meters, "denomination": _money(1), "digits": dict.fromkeys(meters, 8),
            "straddle": 0}


def _windows() -> list[tuple[str, dict[str, Any]]]:
    """The start of the chain: a machine's meter windows as the reconciler closes them
    (docs/reconciliation.md). Read A (seq 4, gaming day 2026-11-20), six events, read B (seq 11,
    the next day: the day close, then A..B reconciled), two games, read C (seq 16: $20 bills
    moved by one with no bill, a discrepancy)."""
    s, unreported = SAMPLES, sorted(set(RULES) - set(_snapshot(0, 0, 0, 0, 0)["meters"]))
    a, b, c = _snapshot(5000, 3100, 52500, 42, 25), _snapshot(5025, 3200, 54500, 43, 26), \
        _snapshot(5075, 3200, 56500, 45, 27)
    played = ["gameSelected", "betPlaced", "gameEnded", "billAccepted", "ticketPrinted",
              "ticketInserted"]
    return [
        *((n, s[n]) for n in ("gatewayStarted", "deviceOnline", "uplinkUp")),
        ("meterSnapshot", a), *((n, s[n]) for n in played), ("meterSnapshot", b),
        ("gamingDayClosed", {"gaming_day": "2026-11-20", "windows": 0, "reconciled": 0,
                             "discrepancies": 0, "totals": {}, "meters": a["meters"]}),
        ("meterReconciled", {"from_seq": 4, "to_seq": 11, "events": dict.fromkeys(played, 1),
                             "deltas": {m: b["meters"][m] - a["meters"][m] for m in a["meters"]},
                             "straddle": 0, "unreported": unreported, "rolled_over": []}),
        ("betPlaced", s["betPlaced"]), ("betPlaced", s["betPlaced"]), ("meterSnapshot", c),
        ("meterDiscrepancy", {"meter": "bills_20", "expected_min": 0, "expected_max": 0,
                              "seen": 1, "difference": 1, "cause": "eventsMissing",
                              "evidence": [], "rule": RULES["bills_20"].source,
                              "from_seq": 11, "to_seq": 16, "events": {"betPlaced": 2}}),
    ]


def _order() -> list[tuple[str, dict[str, Any]]]:
    """The meter windows, then every other catalogue type once but epochStarted (only ever
    seq 1 of a new epoch: in `epochs`); keyRotated and gatewayStopping last (the rotation is
    tested with events after it)."""
    missing = set(CATALOGUE) - set(SAMPLES)
    if missing:
        raise SystemExit(f"vectors: no sample data for {sorted(missing)}")
    lead = _windows()
    alert = next(n for n, (t, _) in enumerate(lead, start=1) if t == "meterDiscrepancy")
    done = {t for t, _ in lead} | {"keyRotated", "gatewayStopping", "epochStarted"}
    rest = [(n, {**SAMPLES[n], "alert_seq": alert} if n == "alertAcknowledged" else SAMPLES[n])
            for n in SAMPLES if n not in done]
    return [*lead, *rest[:-2], ("keyRotated", {}), *rest[-2:],
            ("gatewayStopping", SAMPLES["gatewayStopping"])]


def _entry(sealed: dict[str, Any], stored: bytes, signer: Signer) -> dict[str, Any]:
    body = canonical(sealed, without=INTEGRITY_FIELDS)
    return {
        "seq": sealed["seq"],
        "event": sealed["event"],
        "envelope": _json_view(sealed),
        "body_hex": body.hex(),
        "hash_input_hex": (sealed["prev_hash"] + body).hex(),
        "hash_hex": sealed["hash"].hex(),
        "sig_hex": sealed["sig"].hex(),
        "kid": sealed["kid"],
        "signed_by": "key_1" if signer.kid == signers()[0].kid else "key_2",
        "stored_hex": stored.hex(),
    }


def _chain() -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], bytes]]]:
    key_1, key_2 = signers()
    signer, prev = key_1, GENESIS
    entries, sealed_list = [], []
    for seq, (event_type, sample) in enumerate(_order(), start=1):
        data = copy.deepcopy(sample)
        if event_type == "keyRotated":
            data = {"new_kid": key_2.kid, "new_public_key": bytes(key_2.verify_key).hex()}
        sealed, stored = seal(_envelope(event_type, seq, data), prev, signer)
        entries.append(_entry(sealed, stored, signer))
        sealed_list.append((sealed, stored))
        prev = sealed["hash"]
        if event_type == "keyRotated":
            signer = key_2
    return entries, sealed_list


def _resign(envelope: dict[str, Any], signer: Signer, *, kid: str | None = None
            ) -> dict[str, Any]:
    """`envelope` with hash and sig made again (after a change), optionally claiming `kid`."""
    out = {k: v for k, v in envelope.items() if k not in INTEGRITY_FIELDS}
    out["kid"] = kid or signer.kid
    digest = chain_hash(out["prev_hash"], canonical(out))
    out["hash"] = digest
    out["sig"] = signer.key.sign(digest).signature
    return out


def _invalid(sealed_list: list[tuple[dict[str, Any], bytes]]) -> list[dict[str, Any]]:
    key_1, key_2 = signers()
    first, _ = sealed_list[0]
    second, _ = sealed_list[1]
    cases: list[tuple[str, str, dict[str, Any], str, dict[str, Any]]] = []

    tampered = copy.deepcopy(second)
    tampered["data"] = {"game_number": 4}  # hash and sig left as they were
    cases.append(("tampered-body", "data changed after signing; hash and sig unchanged",
                  tampered, "bad-hash", {"close": 4003, "stored": False}))

    bad_sig = copy.deepcopy(second)
    bad_sig["sig"] = bytes([bad_sig["sig"][0] ^ 0x01]) + bad_sig["sig"][1:]
    cases.append(("bad-signature", "first byte of sig flipped", bad_sig, "bad-signature",
                  {"close": 4003, "stored": False}))

    body_signed = copy.deepcopy(second)
    body_signed["sig"] = key_1.key.sign(canonical(second, without=("sig",))).signature
    cases.append(("signature-over-body", "sig = Ed25519(canonical(envelope - sig)) instead of "
                  "Ed25519(hash): the wrong rule", body_signed, "bad-signature",
                  {"close": 4003, "stored": False}))

    unknown_kid = _resign(second, key_2)  # key_2 is not registered before the rotation
    cases.append(("unknown-kid", "signed by key_2, which the platform does not know yet",
                  unknown_kid, "unknown-key", {"close": 4003, "stored": False}))

    wrong_kid = _resign(second, key_2, kid=key_1.kid)
    cases.append(("wrong-kid", "signed by key_2 but names key_1's kid", wrong_kid,
                  "bad-signature", {"close": 4003, "stored": False}))

    broken = _resign({**second, "prev_hash": bytes(range(32))}, key_1)
    cases.append(("broken-link", "authentic (hash and sig good) but prev_hash is not the hash "
                  "of seq 1", broken, "bad-link",
                  {"close": None, "stored": True, "counter": "chain_breaks"}))

    foreign = _resign({**second, "gateway_id": "gw-other",
                       "id": f"gw-other:{EPOCH}:2"}, key_1)
    cases.append(("wrong-stream", "authentic, but its gateway_id is not the hello's", foreign,
                  "ok", {"close": 4002, "stored": False}))

    out = []
    for name, what, envelope, verdict, receiver in cases:
        out.append({
            "name": name, "what": what, "after_seq": first["seq"],
            "envelope": _json_view(envelope),
            "stored_hex": canonical(envelope).hex(),
            "check_event": verdict,
            "receiver": receiver,
        })
    return out


def _frames(sealed_list: list[tuple[dict[str, Any], bytes]]) -> list[dict[str, Any]]:
    stored = [raw for _, raw in sealed_list[:2]]
    key_1, _ = signers()
    messages: list[tuple[str, proto.Message]] = [
        ("hello", proto.Hello(GATEWAY_ID, EPOCH, (key_1.kid,))),
        ("welcome", proto.Welcome(EPOCH, 0)),
        ("events", proto.Events(tuple(stored))),
        ("ack", proto.Ack(EPOCH, 2)),
        ("command", proto.Command("c-0001", "requestMeters", {"port": "sas0", "address": 1}, {})),
        ("command_result", proto.CommandResult(
            "c-0001", "ok", "", {"denomination": _money(1),
                                 "money": {"coin_in": _money(5000)},
                                 "counts": {"games_played": {"value": 42, "unit": "games"}}})),
        ("command_result-rejected", proto.CommandResult(
            "c-0002", "rejected", "not allowed by configuration",
            {"reason": "not allowed by configuration"})),
        ("error", proto.Error(proto.CLOSE_PROTOCOL, "ack for seq 9 but only up to 2 was sent")),
    ]
    out = []
    for name, message in messages:
        raw = proto.encode(message)
        out.append({"name": name, "frame": _json_view(msgpack.unpackb(raw, raw=False)), "hex": raw.hex()})
    return out


def build() -> dict[str, Any]:
    key_1, key_2 = signers()
    entries, sealed_list = _chain()
    return {
        "about": "Uplink protocol v1 test vectors (docs/uplink-protocol.md section 12). "
                 "Generated by python -m gateway.uplink.vectors --write; do not edit.",
        "protocol": proto.PROTO,
        "gateway_id": GATEWAY_ID,
        "epoch": EPOCH,
        "token": TOKEN,
        "token_sha256": hashlib.sha256(TOKEN.encode("utf-8")).hexdigest(),
        "keys": {"key_1": _key_entry(key_1), "key_2": _key_entry(key_2)},
        "registered_keys": ["key_1"],
        "genesis_prev_hash_hex": GENESIS.hex(),
        "chain": entries,
        "invalid": _invalid(sealed_list),
        "frames": _frames(sealed_list),
        **vector_epochs.build(sealed_list, functools.partial(_envelope, machine=MACHINE_2),
                              _entry, key_2),
    }


def render() -> str:
    return json.dumps(build(), indent=1, sort_keys=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description="write or check the uplink test vectors")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true")
    group.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render()
    if args.write:
        VECTORS_PATH.parent.mkdir(parents=True, exist_ok=True)
        VECTORS_PATH.write_text(text)
        print(f"wrote {VECTORS_PATH}")
        return 0
    if not VECTORS_PATH.exists() or VECTORS_PATH.read_text() != text:
        print(f"{VECTORS_PATH} differs from what the code makes; run --write", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
