"""Offline verification of a run of stored events: every signature, every hash, every link.

Used by `casino-gateway outbox verify` and by tests; the auditor's question is "is this the
unbroken, untampered sequence this gateway signed?", answered with the first break found.
Two signed events change the rules mid-chain, both checked like any other event:
  * `keyRotated` (signed by the old key) names the new kid, and usually carries the new public key:
    from the next event on, only the new key may sign;
  * a quarantine `lossMarker` takes the seq after the rows it moved aside, so the seq gap before
    it is exactly `data.first_seq..data.last_seq` and its prev_hash links to the last good row;
    or, for a hole in the middle (intact rows after it), it comes later with `resume_hash`, the
    prev_hash of the row after the hole (P-HOLE-1): the hole stays open until it arrives.
Performs no I/O (the caller supplies the events).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import nacl.exceptions
import nacl.signing

from gateway.signing import GENESIS, ChainBreak, check_event, decode_envelope, key_id

__all__ = ["VerifyReport", "gap_explained", "hole_closed", "verify_events"]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    checked: int
    first_seq: int | None
    last_seq: int | None
    break_at: int | None = None
    reason: str = ""
    kids: tuple[str, ...] = field(default=())  # keys seen signing, in order of use

    @property
    def ok(self) -> bool:
        return self.break_at is None


def gap_explained(envelope: dict[str, Any], prev_seq: int, seq: int) -> bool:
    """True if `envelope` is the quarantine lossMarker accounting for seqs prev_seq+1..seq-1."""
    data = envelope.get("data") or {}
    return (envelope.get("event") == "lossMarker" and data.get("reason") == "quarantine"
            and data.get("first_seq") == prev_seq + 1 and data.get("last_seq") == seq - 1)


def hole_closed(envelope: dict[str, Any], holes: dict[tuple[int, int], bytes],
                first: int | None = None) -> bool:
    """A later quarantine lossMarker with `resume_hash` closes the hole it names (its signed
    resume_hash binds the right side; nothing hashes across to the left); False if it names a hole
    that is not open or with another hash. A hole before `first`, the first row checked, is
    the caller's to bind (the outbox's ends check). Other events close nothing."""
    data = envelope.get("data") or {}
    if envelope.get("event") != "lossMarker" or "resume_hash" not in data:
        return True
    key = (data.get("first_seq"), data.get("last_seq"))
    if first is not None and isinstance(key[1], int) and key[1] < first:
        return True
    resume = holes.pop(key, None)  # type: ignore[arg-type]
    return resume is not None and resume.hex() == data.get("resume_hash")


def _rotation(data: dict) -> tuple[str | None, nacl.signing.VerifyKey | None]:
    """A verified keyRotated's (new kid, the key it carries): the chain's key from the next
    event on, trusted because the old key signed the announcement."""
    new_kid, public = data.get("new_kid"), data.get("new_public_key")
    if not public:
        return new_kid, None
    try:
        announced = nacl.signing.VerifyKey(bytes.fromhex(public))
    except (ValueError, TypeError, nacl.exceptions.CryptoError):
        raise ChainBreak("keyRotated carries a malformed public key") from None
    if key_id(announced) != new_kid:
        raise ChainBreak(f"keyRotated names {new_kid} but carries the key of {key_id(announced)}")
    return new_kid, announced


def verify_events(rows: Iterable[tuple[int, bytes]], keys: dict[str, nacl.signing.VerifyKey], *,
                  progress: Callable[[int], None] | None = None,
                  first_prev: bytes | None = None) -> VerifyReport:
    """Check rows (seq, stored bytes) in order. The first row links to `first_prev` if given
    (an export states it), else to GENESIS when it is seq 1; otherwise its prev_hash is trusted
    and checked from there. `keys` are the trusted public keys; a key announced by a verified
    keyRotated event is trusted from that event on."""
    keys = dict(keys)
    checked, first, prev_seq, prev_hash = 0, None, None, None
    chain_kid: str | None = None
    kids: list[str] = []

    def broken(seq: int, reason: str) -> VerifyReport:
        return VerifyReport(checked, first, prev_seq, seq, reason, tuple(kids))

    holes: dict[tuple[int, int], bytes] = {}  # waiting for a later marker (P-HOLE-1)
    for seq, body in rows:
        try:
            envelope = decode_envelope(body)
        except ValueError as err:
            return broken(seq, f"undecodable row: {err}")
        if envelope.get("seq") != seq:
            return broken(seq, f"row {seq} holds event seq {envelope.get('seq')}")
        if not hole_closed(envelope, holes, first):
            return broken(seq, "a quarantine lossMarker names a hole the chain does not have")
        if prev_seq is not None and seq != prev_seq + 1 \
                and not gap_explained(envelope, prev_seq, seq):
            # A hole in the middle: its marker comes later, binding this row's prev_hash.
            holes[(prev_seq + 1, seq - 1)] = envelope.get("prev_hash", b"")
            prev_hash = envelope.get("prev_hash")
        expected = prev_hash if prev_hash is not None else \
            first_prev if first_prev is not None else GENESIS if seq == 1 else None
        try:
            prev_hash = check_event(envelope, keys, expected)
        except ChainBreak as err:
            return broken(seq, str(err))
        kid = envelope["kid"]
        if chain_kid is not None and kid != chain_kid:
            return broken(seq, f"key-change: signed by {kid}, but the chain's key is {chain_kid} "
                               f"and no keyRotated announced the change")
        if kid not in kids:
            kids.append(kid)
        chain_kid = kid
        if envelope.get("event") == "keyRotated":
            try:
                chain_kid, announced = _rotation(envelope.get("data") or {})
            except ChainBreak as err:
                return broken(seq, str(err))
            if announced is not None and chain_kid is not None:
                keys.setdefault(chain_kid, announced)
        first = seq if first is None else first
        prev_seq = seq
        checked += 1
        if progress is not None and checked % 10_000 == 0:
            progress(checked)
    if holes:
        first_seq, last_seq = min(holes)
        return broken(last_seq + 1, f"gap: seqs {first_seq}..{last_seq} missing and no "
                                    f"lossMarker names them")
    return VerifyReport(checked, first, prev_seq, kids=tuple(kids))
