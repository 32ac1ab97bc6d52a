"""Canonical bytes, the hash chain and Ed25519 signatures (docs/uplink-protocol.md section 4).

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
import signal
import stat
import struct
import subprocess
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import nacl.exceptions
import nacl.signing

__all__ = [
    "GENESIS",
    "ChainBreak",
    "KeyFileError",
    "SealedParts",
    "Signer",
    "SignerProcess",
    "canonical",
    "chain_hash",
    "check_event",
    "decode_envelope",
    "finish_seal",
    "install_next_key",
    "key_id",
    "load_signing_key",
    "load_verify_key",
    "retire_key_file",
    "seal",
    "seal_parts",
    "write_signing_key",
]

GENESIS = bytes(32)
INTEGRITY_FIELDS = ("hash", "sig")


_CONTAINERS = (dict, list, tuple)


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (_sorted(v) if isinstance(v := value[k], _CONTAINERS) else v)
                for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_sorted(v) if isinstance(v, _CONTAINERS) else v for v in value]
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

    @cached_property
    def kid(self) -> str:
        return key_id(self.key.verify_key)


def _map_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x80 | n,))
    if n < 0x10000:
        return b"\xde" + struct.pack(">H", n)
    return b"\xdf" + struct.pack(">I", n)


_HEADER_LEN = {0xDE: 3, 0xDF: 5}
# The two integrity pairs, ready to splice: key then the bin8 header of a 32/64-byte value.
_HASH_PAIR = msgpack.packb("hash") + b"\xc4\x20"
_SIG_PAIR = msgpack.packb("sig") + b"\xc4\x40"


_pack = msgpack.Packer(use_bin_type=True).pack
_LAYOUTS: dict[tuple[str, ...], tuple[int, bytes, tuple[tuple[str, ...], ...]]] = {}


def _layout(keys: tuple[str, ...]) -> tuple[int, bytes, tuple[tuple[str, ...], ...]]:
    """For an envelope's field names: the body's field count, map header and the three runs of
    sorted names (before "hash", between "hash" and "sig", after "sig"). Cached: the outbox
    seals one shape of envelope millions of times."""
    layout = _LAYOUTS.get(keys)
    if layout is None:
        names = sorted((set(keys) - set(INTEGRITY_FIELDS)) | {"prev_hash", "kid"})
        runs: tuple[list[str], list[str], list[str]] = ([], [], [])
        for k in names:
            runs[0 if k < "hash" else 1 if k < "sig" else 2].append(k)
        layout = (len(names), _map_header(len(names)), tuple(tuple(run) for run in runs))
        if len(_LAYOUTS) > 64:
            _LAYOUTS.clear()
        _LAYOUTS[keys] = layout
    return layout


@dataclass(frozen=True, slots=True)
class SealedParts:
    """An envelope's canonical body cut where "hash" and "sig" sort in, so the stored bytes
    are spliced together after signing instead of being packed a second time."""

    count: int  # body fields; the stored map has two more
    before_hash: bytes
    between: bytes
    after_sig: bytes
    digest: bytes

    def stored(self, sig: bytes) -> bytes:
        """canonical(envelope with hash and sig), byte for byte."""
        return b"".join((_map_header(self.count + 2), self.before_hash, _HASH_PAIR, self.digest,
                         self.between, _SIG_PAIR, sig, self.after_sig))


def seal_parts(envelope: dict[str, Any], prev_hash: bytes, kid: str) -> SealedParts:
    """First half of `seal`: the body (with prev_hash and kid) packed once, and its chain hash.

    The canonical map is sorted by key, so it is the concatenation of three runs of pairs:
    keys before "hash", keys between "hash" and "sig", keys after "sig"."""
    count, header, runs = _layout(tuple(envelope))
    fields = dict(envelope)
    fields["prev_hash"] = prev_hash
    fields["kid"] = kid
    packed = []
    for run in runs:
        raw = _pack({k: (_sorted(v) if isinstance(v := fields[k], _CONTAINERS) else v)
                     for k in run})
        packed.append(raw[_HEADER_LEN.get(raw[0], 1):])
    before, between, after = packed
    return SealedParts(count, before, between, after,
                       chain_hash(prev_hash, b"".join((header, before, between, after))))


def finish_seal(envelope: dict[str, Any], prev_hash: bytes, kid: str, parts: SealedParts,
                sig: bytes) -> tuple[dict[str, Any], bytes]:
    """Second half of `seal`: (sealed envelope, stored bytes)."""
    sealed = {k: v for k, v in envelope.items() if k not in INTEGRITY_FIELDS}
    sealed.update(prev_hash=prev_hash, kid=kid, hash=parts.digest, sig=sig)
    return sealed, parts.stored(sig)


def seal(envelope: dict[str, Any], prev_hash: bytes, signer: Signer) -> tuple[dict[str, Any], bytes]:
    """Add prev_hash, kid, hash and sig to `envelope`; return (sealed envelope, stored bytes)."""
    parts = seal_parts(envelope, prev_hash, signer.kid)
    return finish_seal(envelope, prev_hash, signer.kid, parts,
                       signer.key.sign(parts.digest).signature)


class SignerProcess:
    """Ed25519 signatures computed in a child process, so the GIL-bound signing runs on another
    core while this process hashes, inserts and serves appenders. Blocking calls: use from the
    outbox's writer thread. The private key reaches the child through a pipe, never argv/env.

    Protocol on the child's stdin: b"K" + 32-byte seed (use this key), or b"S" + u32 n + n
    32-byte digests (answered on stdout with n 64-byte signatures). EOF ends the child, so it
    exits with its parent however that dies."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            # -I: no cwd, PYTHONPATH or user site on sys.path: only the installed package is
            # imported into the process that receives the key.
            [sys.executable, "-I", "-m", "gateway.signing", "--serve"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, close_fds=True,
            # Its own process group: a terminal's Ctrl-C goes to the foreground group and would
            # interrupt the child, even while it is still importing (see _serve).
            process_group=0)
        self._seed: bytes | None = None

    def request(self, signer: Signer, digests: list[bytes]) -> None:
        """Ask for signatures; the child starts at once. Keep what is outstanding small (a few
        hundred) so neither pipe fills while the other side waits."""
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            seed = bytes(signer.key)
            if seed != self._seed:
                stdin.write(b"K" + seed)
                self._seed = seed
            stdin.write(b"S" + struct.pack(">I", len(digests)) + b"".join(digests))
            stdin.flush()
        except OSError as err:
            raise OSError(f"the signing process failed: {err}") from err

    def receive(self, count: int) -> list[bytes]:
        """The next `count` signatures, in request order."""
        assert self._proc.stdout is not None
        try:
            answer = _read_exactly(self._proc.stdout, 64 * count)
        except (OSError, EOFError) as err:
            raise OSError(f"the signing process failed: {err}") from err
        return [answer[i:i + 64] for i in range(0, len(answer), 64)]

    def sign_many(self, signer: Signer, digests: list[bytes]) -> list[bytes]:
        self.request(signer, digests)
        return self.receive(len(digests))

    def kill(self) -> None:
        self._proc.kill()
        self.close()

    def close(self) -> None:
        if self._proc.stdin is not None:
            try:
                self._proc.stdin.close()
            except OSError:
                pass
        self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    if data is None or len(data) != size:
        raise EOFError(f"expected {size} bytes, got {0 if data is None else len(data)}")
    return data


def _serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    # Ctrl-C at the terminal used to reach the child too, and its KeyboardInterrupt traceback
    # landed in the middle of the demo's summary. The child runs in its own process group, and
    # ignores a SIGINT sent to it anyway: the parent stops it (EOF on stdin).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    key: nacl.signing.SigningKey | None = None
    while op := stdin.read(1):
        if op == b"K":
            key = nacl.signing.SigningKey(_read_exactly(stdin, 32))
        elif op == b"S" and key is not None:
            (count,) = struct.unpack(">I", _read_exactly(stdin, 4))
            digests = _read_exactly(stdin, 32 * count)
            sign = key.sign
            stdout.write(b"".join(sign(digests[i:i + 32]).signature
                                  for i in range(0, len(digests), 32)))
            stdout.flush()
        else:
            raise SystemExit(f"signing process: unexpected request {op!r}")


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
        f.flush()
        os.fsync(f.fileno())
    return Signer(key)


def install_next_key(path: Path, next_path: Path) -> Path:
    """Finish a rotation: `next_path` becomes `path`, and the current key is kept as
    `<path>.retired` (a hard link made first) for `retire_key_file` to archive or destroy.
    The rename is atomic and the directory synced, so a crash leaves the old or the new key."""
    retired = path.with_name(path.name + ".retired")
    if not retired.exists():
        os.link(path, retired)
    os.replace(next_path, path)
    _sync_dir(path.parent)
    return retired


def retire_key_file(retired: Path, archive_dir: Path | None) -> Path | None:
    """Move a retired private key out of the key directory: into `archive_dir` (0700, named
    by its kid, owned like the key) or, with None, overwritten and deleted. Returns the
    archived path (None when destroyed)."""
    st = retired.stat()
    archived = None
    if archive_dir is not None:
        signer = load_signing_key(retired)
        archive_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        archived = archive_dir / (signer.kid.replace(":", "-") + ".key")
        tmp = archived.with_name(archived.name + ".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(bytes(signer.key).hex() + "\n")
            f.flush()
            os.fsync(f.fileno())
        if os.geteuid() == 0:
            os.chown(tmp, st.st_uid, st.st_gid)
            os.chown(archive_dir, st.st_uid, st.st_gid)
        os.replace(tmp, archived)
        _sync_dir(archive_dir)
    else:
        with open(retired, "r+b") as f:  # the bytes, not only the name (best effort on flash)
            f.write(bytes(st.st_size))
            f.flush()
            os.fsync(f.fileno())
    retired.unlink()
    _sync_dir(retired.parent)
    return archived


def _sync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    _serve(sys.stdin.buffer, sys.stdout.buffer)
