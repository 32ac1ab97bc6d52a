"""Sealing a group: seq, hash chain and Ed25519 signature for each event, in commit order.

The writer thread hashes events in chunks of `SIGN_CHUNK` and keeps up to `SIGN_AHEAD` chunks at
the signing child process (gateway/signing.py `SignerProcess`): the child signs one chunk while
this thread hashes the next and packs the one before. Small groups are signed in this thread (a
round trip would only add latency at venue load). A child that fails is replaced by in-process
signing with one log line: slower, never wedged."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import structlog

from gateway.events import Draft
from gateway.outbox.pending import Pending
from gateway.outbox.settings import OutboxSettings
from gateway.signing import SealedParts, Signer, SignerProcess, finish_seal, seal_parts

__all__ = ["SIGN_AHEAD", "SIGN_CHUNK", "SIGN_PROCESS_MIN", "ChainHead", "Sealed", "Signing",
           "envelope_for", "seal_group"]

log = structlog.get_logger("gateway.outbox")

SIGN_CHUNK = 64  # digests per request to the signing process
SIGN_PROCESS_MIN = 32  # smaller groups are signed in the writer thread
SIGN_AHEAD = 2  # requests outstanding at the signing process (keeps both pipes far from full)


def envelope_for(settings: OutboxSettings, epoch: str, draft: Draft, seq: int) -> dict[str, Any]:
    """The unsealed envelope of `draft` at `seq` (docs/uplink-protocol.md section 4)."""
    return {
        "event": draft.type, "channel": draft.channel, "schema_version": draft.schema_version,
        "id": f"{settings.gateway_id}:{epoch}:{seq}", "seq": seq, "epoch": epoch,
        "gateway_id": settings.gateway_id, "venue": settings.venue, "region": settings.region,
        "machine": draft.machine, "timestamp": draft.timestamp, "trace_id": draft.trace_id,
        "data": draft.data,
    }


@dataclass(frozen=True, slots=True)
class ChainHead:
    """Where the chain stands: the last seq, its hash, and the key that signs the next event."""

    seq: int
    hash: bytes
    signer: Signer


@dataclass(frozen=True, slots=True)
class Sealed:
    pending: Pending
    envelope: dict[str, Any]  # sealed: hash, kid and sig included
    body: bytes
    digest: bytes


class Signing:
    """The signing child process, or None once it failed (or was never started)."""

    def __init__(self) -> None:
        self.process: SignerProcess | None = None

    def start(self) -> None:
        try:
            self.process = SignerProcess()
        except OSError as err:
            log.error("outbox cannot start its signing process; signing in-process",
                      error=str(err))

    def close(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.close()

    def failed(self, err: OSError) -> None:
        log.error("outbox signing process failed; signing in-process from now on",
                  error=str(err))
        process, self.process = self.process, None
        if process is not None:
            process.kill()


# One event between hashing and signing.
_Hashed = tuple[Pending, dict[str, Any], bytes, str, SealedParts]  # pending, env, prev, kid, parts


class _GroupSealer:
    """One group's pass through the pipeline; `sealed` fills in seq order."""

    def __init__(self, signing: Signing, use_process: bool) -> None:
        self._signing = signing
        self._use_process = use_process
        self._chunks: deque[tuple[Signer, list[_Hashed]]] = deque()
        self.sealed: list[Sealed] = []

    def _remote(self) -> SignerProcess | None:
        return self._signing.process if self._use_process else None

    def send(self, chunk: list[_Hashed], signer: Signer) -> None:
        process = self._remote()
        if process is not None:
            try:
                process.request(signer, [item[4].digest for item in chunk])
            except OSError as err:
                self._signing.failed(err)
        self._chunks.append((signer, chunk))
        self.drain(SIGN_AHEAD if self._remote() is not None else 0)

    def drain(self, limit: int) -> None:
        """Finish the oldest outstanding chunks until at most `limit` remain (in order; if the
        signing process fails, the rest are signed here)."""
        while len(self._chunks) > limit:
            signer, chunk = self._chunks[0]
            process = self._remote()
            if process is not None:
                try:
                    self._finish(chunk, process.receive(len(chunk)))
                    self._chunks.popleft()
                    continue
                except OSError as err:
                    self._signing.failed(err)
            self._chunks.popleft()
            self._finish(chunk, [signer.key.sign(item[4].digest).signature for item in chunk])

    def _finish(self, chunk: list[_Hashed], sigs: list[bytes]) -> None:
        for (pending, envelope, prev_hash, kid, parts), sig in zip(chunk, sigs, strict=True):
            sealed, body = finish_seal(envelope, prev_hash, kid, parts, sig)
            self.sealed.append(Sealed(pending, sealed, body, parts.digest))


def seal_group(signing: Signing, settings: OutboxSettings, epoch: str, head: ChainHead,
               batch: list[Pending]) -> tuple[list[Sealed], ChainHead, list[str]]:
    """Seal `batch` after `head`: the sealed events, the new head and the kids retired by
    keyRotated events in the batch (each is signed by the old key; later ones by the new)."""
    sealer = _GroupSealer(signing, use_process=len(batch) >= SIGN_PROCESS_MIN)
    seq, prev, signer = head.seq, head.hash, head.signer
    retired: list[str] = []
    chunk: list[_Hashed] = []
    for pending in batch:
        seq += 1
        envelope = envelope_for(settings, epoch, pending.draft, seq)
        parts = seal_parts(envelope, prev, signer.kid)
        chunk.append((pending, envelope, prev, signer.kid, parts))
        prev = parts.digest
        if pending.rotate_to is not None or len(chunk) >= SIGN_CHUNK:
            sealer.send(chunk, signer)
            chunk = []
        if pending.rotate_to is not None:
            retired.append(signer.kid)
            signer = pending.rotate_to
    if chunk:
        sealer.send(chunk, signer)
    sealer.drain(0)
    return sealer.sealed, ChainHead(seq, prev, signer), retired
