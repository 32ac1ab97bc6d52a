"""What the receiver decides about received events, without storing anything (pure: no I/O).

`verify_events` is the stateless part (decode, hash, signature), safe in parallel threads.
`decide` is the in-order part of docs/uplink-protocol.md section 8 (duplicate / next in chain /
gap / refused / learnt key) for frames against a stream's head; each backend (the SQLite store,
the JetStream ingest) stores what it returns and advances the head in its own way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack
import nacl.exceptions
import nacl.signing
import structlog

from gateway.signing import (
    INTEGRITY_FIELDS,
    ChainBreak,
    canonical,
    chain_hash,
    decode_envelope,
    key_id,
)

__all__ = ["COUNTERS", "Accepted", "Checked", "Decision", "IngestResult", "check_stored",
           "decide", "verify_events"]

log = structlog.get_logger(__name__)

COUNTERS = ("received", "duplicates", "bad_signatures", "chain_breaks", "gaps")


@dataclass
class IngestResult:
    """What one batch did. `error` set means: reject the stream (close 4003 or 4002)."""

    high_water: int
    stored: int = 0
    duplicates: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (first missing, last missing)
    error: str | None = None
    error_code: int = 0


class Checked(NamedTuple):
    """One event after the stateless checks: decoded, hash and signature verified (or why not).
    (A NamedTuple: made once per received event, and cheaper to make than a dataclass.)"""

    raw: bytes
    envelope: dict[str, Any] | None  # None: not a msgpack map
    digest: bytes | None  # None: bad hash / bad signature / unknown key, see `problem`
    problem: str | None = None


def _recheck(item: Checked, keys: dict[str, nacl.signing.VerifyKey]) -> Checked:
    assert item.envelope is not None
    try:
        return Checked(item.raw, item.envelope, check_stored(item.envelope, keys))
    except ChainBreak as brk:
        return Checked(item.raw, item.envelope, None, str(brk))


_local = threading.local()


def _packer() -> msgpack.Packer:
    """This thread's Packer (a Packer is not thread-safe; making one per event costs more)."""
    try:
        return _local.packer  # type: ignore[no-any-return]
    except AttributeError:
        _local.packer = msgpack.Packer(use_bin_type=True)
        return _local.packer  # type: ignore[no-any-return]


def check_stored(envelope: dict[str, Any], keys: dict[str, nacl.signing.VerifyKey]) -> bytes:
    """`gateway.signing.check_event(envelope, keys, None)` for an envelope decoded from the stored
    (canonical) bytes, without sorting it again: return its hash or raise ChainBreak.

    Decoding keeps the sent key order, so when the sender sent canonical bytes (it always does)
    packing the decoded map minus hash and sig gives the canonical body with no sort; otherwise
    the body is made by `canonical` as the spec says. Either way the body packs exactly the
    decoded fields, so a good signature authenticates what is stored. Malformed integrity fields
    are a ChainBreak, never another exception."""
    prev, digest, sig, kid = (envelope.get("prev_hash"), envelope.get("hash"),
                              envelope.get("sig"), envelope.get("kid"))
    if not (isinstance(prev, bytes) and isinstance(digest, bytes) and isinstance(sig, bytes)):
        missing = [k for k in ("prev_hash", "hash", "sig") if not isinstance(envelope.get(k), bytes)]
        raise ChainBreak("bad-hash", f"{', '.join(missing)} missing or not bytes")
    fields = dict(envelope)  # keeps the received order
    del fields["hash"], fields["sig"]
    if chain_hash(prev, _packer().pack(fields)) != digest:
        try:
            body = canonical(envelope, without=INTEGRITY_FIELDS)
        except (TypeError, ValueError):  # map keys that do not sort (str and bytes mixed)
            raise ChainBreak("bad-hash", f"seq {envelope.get('seq')}: no canonical form") from None
        if chain_hash(prev, body) != digest:
            raise ChainBreak("bad-hash", f"seq {envelope.get('seq')}")
    verify_key = keys.get(kid) if isinstance(kid, str) else None
    if verify_key is None:
        raise ChainBreak("unknown-key", str(kid))
    try:
        verify_key.verify(digest, sig)
    except (nacl.exceptions.BadSignatureError, ValueError):  # ValueError: not 64 bytes
        raise ChainBreak("bad-signature", f"seq {envelope.get('seq')}") from None
    return digest


def verify_events(raws: list[bytes], keys: dict[str, nacl.signing.VerifyKey]) -> list[Checked]:
    """Decode and verify each event alone (no chain link): safe to run in parallel threads
    (the Ed25519 check, most of the time, runs in libsodium without the GIL)."""
    out = []
    for raw in raws:
        try:
            env = decode_envelope(raw)
        except Exception as err:  # msgpack raises several unrelated types on garbage
            out.append(Checked(raw, None, None, f"event is not a msgpack map: {err}"))
            continue
        try:
            out.append(Checked(raw, env, check_stored(env, keys)))
        except ChainBreak as brk:
            out.append(Checked(raw, env, None, str(brk)))
    return out


class Accepted(NamedTuple):
    """One event to store: it passed every rule and takes the next place in the stream."""

    seq: int
    event: str
    channel: str
    raw: bytes


@dataclass
class Decision:
    """What `decide` made of some frames: one result per frame (as far as the first refused
    event), the events to store in order, the counters, the new head, and keys learnt from
    keyRotated events (already added to the caller's `keys`)."""

    results: list[IngestResult]
    accepted: list[Accepted]
    counts: dict[str, int]
    high_water: int
    last_hash: bytes
    learned: dict[str, nacl.signing.VerifyKey]


def decide(gateway_id: str, epoch: str, high_water: int, last_hash: bytes,
           frames: list[list[Checked]], keys: dict[str, nacl.signing.VerifyKey],
           revoked: Callable[[str], bool]) -> Decision:
    """Apply the per-event rules (docs/uplink-protocol.md section 8) to `frames`, in order,
    starting from the stream's head (`high_water`, `last_hash`)."""
    counts = dict.fromkeys(COUNTERS, 0)
    results: list[IngestResult] = []
    accepted: list[Accepted] = []
    learned: dict[str, nacl.signing.VerifyKey] = {}
    for checked in frames:
        result = IngestResult(high_water)
        results.append(result)
        stored_before = counts["received"]
        duplicates_before = counts["duplicates"]
        for item in checked:
            env = item.envelope
            if env is None:
                result.error, result.error_code = item.problem, 4002
                break
            seq = env.get("seq")
            if (not isinstance(seq, int) or isinstance(seq, bool) or seq < 1
                    or env.get("gateway_id") != gateway_id or env.get("epoch") != epoch):
                result.error = (f"event {env.get('id')!r} does not belong to this stream "
                                f"({gateway_id}, {epoch}) or has no valid seq")
                result.error_code = 4002
                break
            if seq <= high_water:
                counts["duplicates"] += 1
                continue
            if item.digest is None and item.problem and item.problem.startswith("unknown-key"):
                # Perhaps signed by a key announced earlier in this very stream.
                item = _recheck(item, keys)
            if item.digest is None:
                counts["bad_signatures"] += 1
                result.error, result.error_code = f"seq {seq}: {item.problem}", 4003
                break
            if seq != high_water + 1:
                counts["gaps"] += 1
                counts["chain_breaks"] += 1
                result.gaps.append((high_water + 1, seq - 1))
                log.warning("receiver gap", gateway_id=gateway_id, epoch=epoch,
                            missing_from=high_water + 1, missing_to=seq - 1)
            elif env["prev_hash"] != last_hash:
                # Authentic (signature good) but not linked to what we hold: keep it, flag it.
                counts["chain_breaks"] += 1
                log.warning("receiver chain break", gateway_id=gateway_id, epoch=epoch, seq=seq)
            accepted.append(Accepted(seq, str(env.get("event")), str(env.get("channel")),
                                     item.raw))
            counts["received"] += 1
            high_water, last_hash = seq, item.digest
            if env.get("event") == "keyRotated":
                found = _rotated_key(gateway_id, env, revoked)
                if found is not None:
                    keys[found[0]] = learned[found[0]] = found[1]
        result.high_water = high_water
        result.stored = counts["received"] - stored_before
        result.duplicates = counts["duplicates"] - duplicates_before
        if result.error:
            break
    return Decision(results, accepted, counts, high_water, last_hash, learned)


def _rotated_key(gateway_id: str, env: dict[str, Any], revoked: Callable[[str], bool]
                 ) -> tuple[str, nacl.signing.VerifyKey] | None:
    """A verified keyRotated event (signed by a key we trust) names the gateway's next key:
    (kid, key) to trust from the next event on, unless it is malformed or revoked."""
    data = env.get("data") or {}
    try:
        verify_key = nacl.signing.VerifyKey(bytes.fromhex(str(data.get("new_public_key"))))
    except (ValueError, nacl.exceptions.CryptoError):
        log.warning("receiver keyRotated without a usable public key", gateway_id=gateway_id,
                    seq=env.get("seq"))
        return None
    kid = key_id(verify_key)
    if kid != data.get("new_kid"):
        log.warning("receiver keyRotated names a kid that is not its key's",
                    gateway_id=gateway_id, seq=env.get("seq"))
        return None
    if revoked(kid):
        log.warning("receiver keyRotated names a revoked key; not learnt",
                    gateway_id=gateway_id, kid=kid, seq=env.get("seq"))
        return None
    log.info("receiver learned rotated key", gateway_id=gateway_id, kid=kid, seq=env.get("seq"))
    return kid, verify_key
