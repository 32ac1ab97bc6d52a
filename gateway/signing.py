"""Canonical bytes, the hash chain and Ed25519 signatures (design.md section 6).

An envelope is a dict. Its canonical bytes are deterministic msgpack (maps with sorted keys, bytes as
bin). For the event at `seq`:

    body  = canonical(envelope without "hash" and "sig")        # includes prev_hash and kid
    hash  = BLAKE2b-256(prev_hash || body)
    sig   = Ed25519(hash)                                        # the 32-byte digest

so a platform holding the public key can verify one event alone (sig) and a run of events
(each prev_hash equals the previous hash; the first of an epoch links to 32 zero bytes).
The signature covers the digest, which commits to every other field and to the previous event, so
signing it is as strong as signing the body and costs one sort and one pack instead of two.
The stored and streamed form is `canonical(whole envelope)`, byte for byte the same everywhere.
Key files are handled by `KeyFile`; the rest of this module performs no I/O.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import nacl.exceptions
import nacl.signing

__all__ = [
    "GENESIS",
    "ChainBreak",
    "KeyFileError",
    "Signer",
    "canonical",
    "chain_hash",
    "check_event",
    "decode_envelope",
    "key_id",
    "load_signing_key",
    "load_verify_key",
    "seal",
    "write_signing_key",
]

GENESIS = bytes(32)
INTEGRITY_FIELDS = ("hash", "sig")


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_sorted(v) for v in value]
    return value


def canonical(envelope: dict[str, Any], *, without: tuple[str, ...] = ()) -> bytes:
    """Deterministic msgpack: sorted map keys at every level, bytes as bin, no floats re-encoded."""
    body = {k: v for k, v in envelope.items() if k not in without}
    return msgpack.packb(_sorted(body), use_bin_type=True)


def decode_envelope(raw: bytes) -> dict[str, Any]:
    value = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    if not isinstance(value, dict):
        raise ValueError("envelope is not a map")
    return value


def chain_hash(prev_hash: bytes, body: bytes) -> bytes:
    return hashlib.blake2b(prev_hash + body, digest_size=32).digest()


def key_id(verify_key: nacl.signing.VerifyKey) -> str:
    """Short stable name of a public key: 'ed25519:' + 16 hex of BLAKE2b(pubkey)."""
    return "ed25519:" + hashlib.blake2b(bytes(verify_key), digest_size=8).hexdigest()


@dataclass(frozen=True)
class Signer:
    key: nacl.signing.SigningKey

    @property
    def verify_key(self) -> nacl.signing.VerifyKey:
        return self.key.verify_key

    @property
    def kid(self) -> str:
        return key_id(self.key.verify_key)


def seal(envelope: dict[str, Any], prev_hash: bytes, signer: Signer) -> tuple[dict[str, Any], bytes]:
    """Add prev_hash, kid, hash and sig to `envelope`; return (sealed envelope, stored bytes)."""
    body_fields = {k: v for k, v in envelope.items() if k not in INTEGRITY_FIELDS}
    body_fields["prev_hash"] = prev_hash
    body_fields["kid"] = signer.kid
    ordered = _sorted(body_fields)
    digest = chain_hash(prev_hash, msgpack.packb(ordered, use_bin_type=True))
    ordered["hash"] = digest
    ordered["sig"] = signer.key.sign(digest).signature
    # Nested maps are already sorted; only the two new top-level keys need placing.
    sealed = dict(sorted(ordered.items()))
    return sealed, msgpack.packb(sealed, use_bin_type=True)


class ChainBreak(Exception):
    """An event does not verify: `reason` is one of bad-hash, bad-signature, unknown-key, bad-link."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def check_event(envelope: dict[str, Any], keys: dict[str, nacl.signing.VerifyKey],
                expected_prev: bytes | None) -> bytes:
    """Verify one envelope; return its hash. `expected_prev` None means "do not check the link"."""
    try:
        prev, digest, sig, kid = (envelope["prev_hash"], envelope["hash"], envelope["sig"],
                                  envelope["kid"])
    except KeyError as missing:
        raise ChainBreak("bad-hash", f"missing field {missing}") from None
    if chain_hash(prev, canonical(envelope, without=INTEGRITY_FIELDS)) != digest:
        raise ChainBreak("bad-hash", f"seq {envelope.get('seq')}")
    verify_key = keys.get(kid)
    if verify_key is None:
        raise ChainBreak("unknown-key", str(kid))
    try:
        verify_key.verify(digest, sig)
    except nacl.exceptions.BadSignatureError:
        raise ChainBreak("bad-signature", f"seq {envelope.get('seq')}") from None
    if expected_prev is not None and prev != expected_prev:
        raise ChainBreak("bad-link", f"seq {envelope.get('seq')} does not follow the previous event")
    return digest


class KeyFileError(Exception):
    """A key file is missing, unreadable, malformed or not private enough."""


def write_signing_key(path: Path) -> Signer:
    """Create a new private key file with mode 0600 (refuses to overwrite)."""
    key = nacl.signing.SigningKey.generate()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(bytes(key).hex() + "\n")
    return Signer(key)


def load_signing_key(path: Path) -> Signer:
    """Load a private key; refuse unless only the owner can read it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist "
                           f"(create one with: casino-gateway keys init)") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"key file {path} has mode {stat.S_IMODE(mode):04o}; it must be "
                           f"readable by its owner only (fix with: chmod 600 {path})")
    try:
        return Signer(nacl.signing.SigningKey(bytes.fromhex(path.read_text().strip())))
    except (ValueError, nacl.exceptions.CryptoError):
        raise KeyFileError(f"key file {path} is not a hex Ed25519 private key") from None


def load_verify_key(path: Path) -> nacl.signing.VerifyKey:
    """Load a public key file (hex, as written by `keys export-public`)."""
    try:
        return nacl.signing.VerifyKey(bytes.fromhex(path.read_text().split()[0]))
    except (OSError, ValueError, IndexError, nacl.exceptions.CryptoError) as err:
        raise KeyFileError(f"public key file {path} is unreadable or malformed: {err}") from None
