"""Key revocation in the reference platform (docs/uplink-protocol.md section 14, P-REVOKE-1):
a revoked kid signs nothing acceptable, cannot be registered again, and no keyRotated (signed by
a still-trusted key or not) can bring it back."""

from __future__ import annotations

from pathlib import Path

import nacl.signing
import pytest

from gateway.receiver.store import ReceiverStore
from gateway.signing import Signer
from tests.gateway.test_receiver import run_cli
from tests.gateway.uplink_fakes import FakeOutbox, write_token


def test_a_revoked_key_is_refused_and_stays_revoked(tmp_path: Path) -> None:
    outbox = FakeOutbox()
    outbox.extend(2)
    store = ReceiverStore(tmp_path / "p.db")
    try:
        public = bytes(outbox.signer.verify_key).hex()
        store.register(outbox.gateway_id, "tok", public)
        assert store.revoke_key(outbox.gateway_id, outbox.signer.kid)
        result = store.ingest(outbox.gateway_id, outbox.epoch, outbox.rows,
                              store.keys(outbox.gateway_id))
        assert result.error_code == 4003 and "unknown-key" in (result.error or "")
        assert result.high_water == 0
        with pytest.raises(ValueError, match="revoked"):
            store.register(outbox.gateway_id, "tok", public)
    finally:
        store.close()


def test_a_rotation_cannot_bring_a_revoked_key_back(tmp_path: Path) -> None:
    stolen = Signer(nacl.signing.SigningKey.generate())
    outbox = FakeOutbox()
    outbox.append("keyRotated", {"new_kid": stolen.kid,
                                 "new_public_key": bytes(stolen.verify_key).hex()})
    store = ReceiverStore(tmp_path / "p.db")
    try:
        store.register(outbox.gateway_id, "tok", bytes(outbox.signer.verify_key).hex())
        store.revoke_key(outbox.gateway_id, stolen.kid)
        keys = store.keys(outbox.gateway_id)
        assert store.ingest(outbox.gateway_id, outbox.epoch, outbox.rows, keys).error is None
        assert stolen.kid not in keys and stolen.kid not in store.keys(outbox.gateway_id)
    finally:
        store.close()


def test_cli_revoke_then_register_again_is_refused(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    outbox = FakeOutbox()
    pub = tmp_path / "gw.pub"
    pub.write_text(f"{bytes(outbox.signer.verify_key).hex()} {outbox.signer.kid}\n")
    token, db = write_token(tmp_path, "tok"), str(tmp_path / "p.db")
    assert run_cli("receiver", "register", outbox.gateway_id, str(pub), "--token-file",
                   str(token), "--db", db) == 0
    assert run_cli("receiver", "revoke-key", outbox.gateway_id, outbox.signer.kid,
                   "--db", db) == 0
    assert f"revoked {outbox.signer.kid}" in capsys.readouterr().out
    assert run_cli("receiver", "register", outbox.gateway_id, str(pub), "--token-file",
                   str(token), "--db", db) == 1
    assert "was revoked" in capsys.readouterr().err
