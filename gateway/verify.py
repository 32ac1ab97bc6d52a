"""Offline verification of a run of stored events: every signature, every hash, every link.

Used by `casino-gateway outbox verify` and by tests; the auditor's question is "is this the
unbroken, untampered sequence this gateway signed?", answered with the first break found.
Performs no I/O (the caller supplies the events).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import nacl.signing

from gateway.signing import GENESIS, ChainBreak, check_event, decode_envelope

__all__ = ["VerifyReport", "verify_events"]


@dataclass(frozen=True, slots=True)
class VerifyReport:
    checked: int
    first_seq: int | None
    last_seq: int | None
    break_at: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.break_at is None


def verify_events(rows: Iterable[tuple[int, bytes]], keys: dict[str, nacl.signing.VerifyKey], *,
                  progress: Callable[[int], None] | None = None) -> VerifyReport:
    """Check rows (seq, stored bytes) in order. The first row links to GENESIS when it is seq 1;
    a later starting point (an export) trusts its first prev_hash and checks from there."""
    checked, first, prev_seq, prev_hash = 0, None, None, None
    for seq, body in rows:
        try:
            envelope = decode_envelope(body)
        except ValueError as err:
            return VerifyReport(checked, first, prev_seq, seq, f"undecodable row: {err}")
        if envelope.get("seq") != seq:
            return VerifyReport(checked, first, prev_seq, seq,
                                f"row {seq} holds event seq {envelope.get('seq')}")
        if prev_seq is not None and seq != prev_seq + 1:
            return VerifyReport(checked, first, prev_seq, seq,
                                f"gap: seq {prev_seq} is followed by {seq}")
        expected = prev_hash if prev_hash is not None else (GENESIS if seq == 1 else None)
        try:
            prev_hash = check_event(envelope, keys, expected)
        except ChainBreak as err:
            return VerifyReport(checked, first, prev_seq, seq, str(err))
        first = seq if first is None else first
        prev_seq = seq
        checked += 1
        if progress is not None and checked % 10_000 == 0:
            progress(checked)
    return VerifyReport(checked, first, prev_seq)
