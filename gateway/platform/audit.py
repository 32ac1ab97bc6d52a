"""`platform verify` without I/O: re-check every event read back from the stream, end to end.

Fed the stream's messages in stream order and the registry's entries, it checks per gateway
and epoch: each (gateway, epoch, seq) exactly once, the subject the gateway's registration
gives (region, venue, gateway; never another venue's), the hash and signature of every event
(keys: the registered ones, and those a verified keyRotated introduced, from the next event
on), the chain link to the previous event, and no seq gap other than one a signed lossMarker
explains. Pure: no NATS, no trio.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nacl.exceptions
import nacl.signing

from gateway.platform import names
from gateway.receiver.verdict import check_stored
from gateway.signing import GENESIS, ChainBreak, decode_envelope, key_id

__all__ = ["Audit", "StreamReport"]


@dataclass
class StreamReport:
    gateway_id: str
    epoch: str
    events: int = 0
    high_water: int = 0
    duplicates: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)
    explained_gaps: int = 0
    chain_breaks: list[int] = field(default_factory=list)
    bad: list[str] = field(default_factory=list)  # bad hash / signature / subject, with seq

    @property
    def ok(self) -> bool:
        return not (self.duplicates or self.gaps or self.chain_breaks or self.bad)


class Audit:
    def __init__(self, registry: dict[str, dict[str, Any]]) -> None:
        """`registry`: gateway id -> its registration (gateway/platform/store.py)."""
        self.registry = registry
        self.streams: dict[tuple[str, str], StreamReport] = {}
        self._pending: dict[tuple[str, str], dict[int, list[tuple[str, bytes]]]] = {}
        self.messages = 0
        self.unattributed: list[str] = []  # subjects of no registered gateway, or undecodable

    def add(self, subject: str, payload: bytes) -> None:
        """One message of the events stream, in stream order."""
        self.messages += 1
        parts = subject.split(".")
        gateway_id = names.untoken(parts[3]) if len(parts) == 6 else ""
        try:
            env = decode_envelope(payload)
        except Exception:  # msgpack raises several unrelated types on garbage
            self.unattributed.append(f"{subject}: not a msgpack map")
            return
        if gateway_id not in self.registry or env.get("gateway_id") != gateway_id:
            self.unattributed.append(f"{subject}: envelope of {env.get('gateway_id')!r}")
            return
        epoch, seq = str(env.get("epoch")), env.get("seq")
        if not isinstance(seq, int):
            self.unattributed.append(f"{subject}: no seq")
            return
        self._pending.setdefault((gateway_id, epoch), {}).setdefault(seq, []).append(
            (subject, payload))

    def finish(self) -> list[StreamReport]:
        for (gateway_id, epoch), by_seq in sorted(self._pending.items()):
            self.streams[(gateway_id, epoch)] = self._check(gateway_id, epoch, by_seq)
        return list(self.streams.values())

    def _check(self, gateway_id: str, epoch: str,
               by_seq: dict[int, list[tuple[str, bytes]]]) -> StreamReport:
        entry = self.registry[gateway_id]
        report = StreamReport(gateway_id, epoch)
        keys = _keys(entry)
        prefix = f"{names.ROOT}.{entry['region']}.{entry['venue']}.{names.token(gateway_id)}."
        prev_seq, prev_hash = 0, GENESIS
        explained: set[int] = set()
        for seq in sorted(by_seq):
            copies = by_seq[seq]
            report.duplicates += len(copies) - 1
            subject, payload = copies[0]
            if any(other != payload for _, other in copies[1:]):
                report.bad.append(f"seq {seq}: copies that differ (a forked chain or a forgery)")
            report.events += 1
            env = decode_envelope(payload)
            expected = names.event_subject(entry["region"], entry["venue"], gateway_id,
                                           str(env.get("channel")), str(env.get("event")))
            if not subject.startswith(prefix) or subject != expected:
                report.bad.append(f"seq {seq}: subject {subject}, expected {expected}")
            try:
                digest = check_stored(env, keys)
            except ChainBreak as brk:
                report.bad.append(f"seq {seq}: {brk}")
                digest = env.get("hash") if isinstance(env.get("hash"), bytes) else b""
            if seq != prev_seq + 1:
                if not set(range(prev_seq + 1, seq)) <= explained:
                    report.gaps.append((prev_seq + 1, seq - 1))
                else:
                    report.explained_gaps += 1
            elif env.get("prev_hash") != prev_hash:
                report.chain_breaks.append(seq)
            if env.get("event") == "lossMarker":
                data = env.get("data") or {}
                first, last = data.get("first_seq"), data.get("last_seq")
                if isinstance(first, int) and isinstance(last, int) and last - first < 10**7:
                    explained.update(range(first, last + 1))
            if env.get("event") == "keyRotated":
                _learn(env, keys, entry)
            prev_seq, prev_hash = seq, digest
        report.high_water = prev_seq
        return report


def _keys(entry: dict[str, Any]) -> dict[str, nacl.signing.VerifyKey]:
    """Registered keys, and revoked ones too: what they signed before the revocation is kept as
    evidence and still verifies (docs/uplink-protocol.md section 14)."""
    out = {}
    for kid, hex_key in {**entry.get("keys", {}), **entry.get("revoked_keys", {})}.items():
        try:
            out[kid] = nacl.signing.VerifyKey(bytes.fromhex(hex_key))
        except (ValueError, nacl.exceptions.CryptoError):
            continue
    return out


def _learn(env: dict[str, Any], keys: dict[str, nacl.signing.VerifyKey],
           entry: dict[str, Any]) -> None:
    data = env.get("data") or {}
    try:
        key = nacl.signing.VerifyKey(bytes.fromhex(str(data.get("new_public_key"))))
    except (ValueError, nacl.exceptions.CryptoError):
        return
    kid = key_id(key)
    if kid == data.get("new_kid") and kid not in entry.get("revoked", {}):
        keys[kid] = key
