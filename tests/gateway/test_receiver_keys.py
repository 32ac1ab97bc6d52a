"""The reference receiver learns a rotated key only from a keyRotated event signed by a key it
already trusts, so a stream that rotates keys mid-way arrives whole and verified."""

from __future__ import annotations

from pathlib import Path

import nacl.signing

from gateway.receiver.store import ReceiverStore
from gateway.signing import GENESIS, Signer, seal

EPOCH = "00112233aabbccdd"


def stream(old: Signer, new: Signer, *, announced_kid: str | None = None) -> list[bytes]:
    """Three events by `old`, a keyRotated (by `old`) naming `new`, three events by `new`."""
    out, prev = [], GENESIS
    signers = [old, old, old, old, new, new, new]
    for seq, signer in enumerate(signers, start=1):
        data = {"n": seq}
        event = "machineException"
        if seq == 4:
            event = "keyRotated"
            data = {"new_kid": announced_kid or new.kid,
                    "new_public_key": bytes(new.verify_key).hex()}
        sealed, body = seal({"event": event, "seq": seq, "epoch": EPOCH, "gateway_id": "gw",
                             "data": data}, prev, signer)
        prev = sealed["hash"]
        out.append(body)
    return out


def test_rotation_mid_batch_is_followed(tmp_path: Path):
    old, new = (Signer(nacl.signing.SigningKey.generate()) for _ in range(2))
    store = ReceiverStore(tmp_path / "rx.db")
    store.register("gw", "token", bytes(old.verify_key).hex())
    result = store.ingest("gw", EPOCH, stream(old, new), store.keys("gw"))
    assert result.error is None and result.high_water == 7
    figures = store.figures("gw")
    assert (figures["received"], figures["bad_signatures"], figures["chain_breaks"]) == (7, 0, 0)
    assert set(store.keys("gw")) == {old.kid, new.kid}  # durable: a reconnect keeps trusting it


def test_announcement_with_a_mismatched_kid_teaches_nothing(tmp_path: Path):
    old, new = (Signer(nacl.signing.SigningKey.generate()) for _ in range(2))
    store = ReceiverStore(tmp_path / "rx.db")
    store.register("gw", "token", bytes(old.verify_key).hex())
    result = store.ingest("gw", EPOCH, stream(old, new, announced_kid="ed25519:0000000000000000"),
                          store.keys("gw"))
    assert result.high_water == 4 and result.error_code == 4003  # stops at the first new-key event
    assert set(store.keys("gw")) == {old.kid}
