from __future__ import annotations

import os
from pathlib import Path

import msgpack
import pytest

from gateway.signing import (
    GENESIS,
    ChainBreak,
    KeyFileError,
    check_event,
    decode_envelope,
    load_signing_key,
    seal,
    write_signing_key,
)


def envelope(seq: int, **data) -> dict:
    return {"event": "doorOpened", "channel": "alerts", "seq": seq, "data": data}


def test_canonical_bytes_do_not_depend_on_key_order(signer):
    a, raw_a = seal({"b": 1, "a": {"y": 2, "x": 1}}, GENESIS, signer)
    b, raw_b = seal({"a": {"x": 1, "y": 2}, "b": 1}, GENESIS, signer)
    assert raw_a == raw_b
    assert a["hash"] == b["hash"]


def test_round_trip_and_link(signer):
    keys = {signer.kid: signer.verify_key}
    first, raw1 = seal(envelope(1, door="main"), GENESIS, signer)
    second, raw2 = seal(envelope(2, door="drop"), first["hash"], signer)
    h1 = check_event(decode_envelope(raw1), keys, GENESIS)
    assert check_event(decode_envelope(raw2), keys, h1) == second["hash"]


@pytest.mark.parametrize(("tamper", "reason"), [
    (lambda e: e["data"].update(door="drop"), "bad-hash"),
    (lambda e: e.update(sig=bytes(64)), "bad-signature"),
    (lambda e: e.update(kid="ed25519:0000000000000000"), "bad-hash"),  # kid is hashed too
])
def test_tampering_is_caught(signer, tamper, reason):
    _, raw = seal(envelope(1, door="main"), GENESIS, signer)
    env = decode_envelope(raw)
    tamper(env)
    with pytest.raises(ChainBreak) as caught:
        check_event(env, {signer.kid: signer.verify_key}, GENESIS)
    assert caught.value.reason == reason


def test_event_from_an_unregistered_key_is_caught(signer):
    import nacl.signing

    from gateway.signing import Signer
    stranger = Signer(nacl.signing.SigningKey.generate())
    _, raw = seal(envelope(1), GENESIS, stranger)
    with pytest.raises(ChainBreak) as caught:
        check_event(decode_envelope(raw), {signer.kid: signer.verify_key}, GENESIS)
    assert caught.value.reason == "unknown-key"


def test_resealed_with_another_key_is_caught(signer):
    import nacl.signing

    from gateway.signing import Signer
    other = Signer(nacl.signing.SigningKey.generate())
    _, raw = seal(envelope(1), GENESIS, other)
    env = decode_envelope(raw)
    env["kid"] = signer.kid
    with pytest.raises(ChainBreak):
        check_event(env, {signer.kid: signer.verify_key}, GENESIS)


def test_broken_link_is_caught(signer):
    _, raw = seal(envelope(2), os.urandom(32), signer)
    with pytest.raises(ChainBreak) as caught:
        check_event(decode_envelope(raw), {signer.kid: signer.verify_key}, GENESIS)
    assert caught.value.reason == "bad-link"


def test_decode_rejects_non_maps():
    with pytest.raises(ValueError):
        decode_envelope(msgpack.packb([1, 2]))


def test_key_file_is_created_private_and_loads(tmp_path: Path):
    path = tmp_path / "k" / "signing.key"
    signer = write_signing_key(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_signing_key(path).kid == signer.kid


def test_key_file_readable_by_others_is_refused(tmp_path: Path):
    path = tmp_path / "signing.key"
    write_signing_key(path)
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_signing_key(path)


def test_missing_key_file_says_how_to_create_one(tmp_path: Path):
    with pytest.raises(KeyFileError, match="keys init"):
        load_signing_key(tmp_path / "absent.key")
