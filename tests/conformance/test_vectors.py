"""The shipped test vectors (docs/vectors/uplink-v1.json) against the project's own code: the
signing code makes every byte, verify and the receiver accept or reject each case as stated."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import msgpack
import nacl.signing
import pytest

from gateway.catalogue import validate_envelope
from gateway.events import CATALOGUE
from gateway.receiver.store import ReceiverStore, token_digest, verify_events
from gateway.signing import (
    GENESIS,
    INTEGRITY_FIELDS,
    ChainBreak,
    Signer,
    canonical,
    chain_hash,
    check_event,
    decode_envelope,
    key_id,
    load_signing_key,
    load_verify_key,
    seal,
)
from gateway.uplink import protocol as proto
from gateway.uplink import vectors
from gateway.verify import verify_events as verify_run

V = json.loads(vectors.VECTORS_PATH.read_text())
BYTES_FIELDS = ("prev_hash", "hash", "sig")


def envelope_of(view: dict[str, Any]) -> dict[str, Any]:
    """The envelope from its JSON view (integrity fields are hex there)."""
    return {k: (bytes.fromhex(v) if k in BYTES_FIELDS else v) for k, v in view.items()}


def keys_named(*names: str) -> dict[str, nacl.signing.VerifyKey]:
    out = {}
    for name in names:
        vk = nacl.signing.VerifyKey(bytes.fromhex(V["keys"][name]["public_key_hex"]))
        out[key_id(vk)] = vk
    return out


def test_the_shipped_file_is_what_the_code_makes() -> None:
    assert vectors.VECTORS_PATH.read_text() == vectors.render()


def test_every_event_type_is_in_the_vectors() -> None:
    """Every type in the first epoch but epochStarted, which only ever opens a new one."""
    assert {e["event"] for e in V["chain"]} == set(CATALOGUE) - {"epochStarted"}
    assert [e["seq"] for e in V["chain"]] == list(range(1, len(V["chain"]) + 1))
    assert [s["events"][0]["event"] for s in V["epochs"]] == ["lossMarker", "epochStarted"]


def test_key_files_and_kids(tmp_path: Path) -> None:
    for name, entry in V["keys"].items():
        private = tmp_path / f"{name}.key"
        private.write_text(entry["private_key_file"])
        private.chmod(0o600)
        signer = load_signing_key(private)
        public = tmp_path / f"{name}.pub"
        public.write_text(entry["public_key_file"])
        assert bytes(load_verify_key(public)).hex() == entry["public_key_hex"]
        assert signer.kid == entry["kid"]
        assert entry["kid"] == "ed25519:" + hashlib.blake2b(
            bytes.fromhex(entry["public_key_hex"]), digest_size=8).hexdigest()


def test_token_digest_is_sha256_of_the_utf8_token() -> None:
    assert token_digest(V["token"]) == V["token_sha256"]
    assert hashlib.sha256(V["token"].encode("utf-8")).hexdigest() == V["token_sha256"]


@pytest.mark.parametrize("entry", V["chain"], ids=lambda e: f"{e['seq']}-{e['event']}")
def test_each_envelope_byte_for_byte(entry: dict[str, Any]) -> None:
    env = envelope_of(entry["envelope"])
    body = canonical(env, without=INTEGRITY_FIELDS)
    assert body.hex() == entry["body_hex"]
    assert (env["prev_hash"] + body).hex() == entry["hash_input_hex"]
    assert chain_hash(env["prev_hash"], body).hex() == entry["hash_hex"]
    assert hashlib.blake2b(bytes.fromhex(entry["hash_input_hex"]),
                           digest_size=32).hexdigest() == entry["hash_hex"]
    key = V["keys"][entry["signed_by"]]
    assert entry["kid"] == key["kid"]
    vk = nacl.signing.VerifyKey(bytes.fromhex(key["public_key_hex"]))
    vk.verify(bytes.fromhex(entry["hash_hex"]), bytes.fromhex(entry["sig_hex"]))  # sig over hash
    assert canonical(env).hex() == entry["stored_hex"]
    assert decode_envelope(bytes.fromhex(entry["stored_hex"])) == env
    validate_envelope(env)
    # The project's sealing makes exactly these bytes from the unsealed envelope.
    signer = Signer(nacl.signing.SigningKey(bytes.fromhex(key["seed_hex"])))
    unsealed = {k: v for k, v in env.items() if k not in (*INTEGRITY_FIELDS, "prev_hash", "kid")}
    _, stored = seal(unsealed, env["prev_hash"], signer)
    assert stored.hex() == entry["stored_hex"]
    assert check_event(env, keys_named("key_1", "key_2"), None).hex() == entry["hash_hex"]


def test_the_chain_links_and_rotates() -> None:
    chain = V["chain"]
    assert chain[0]["envelope"]["prev_hash"] == V["genesis_prev_hash_hex"] == GENESIS.hex()
    for before, after in itertools.pairwise(chain):
        assert after["envelope"]["prev_hash"] == before["hash_hex"]
    rotation = next(e for e in chain if e["event"] == "keyRotated")
    assert rotation["signed_by"] == "key_1"
    assert rotation["envelope"]["data"]["new_kid"] == V["keys"]["key_2"]["kid"]
    assert all(e["signed_by"] == "key_2" for e in chain if e["seq"] > rotation["seq"])
    # Offline verification trusting only key_1 learns key_2 from the rotation.
    rows = [(e["seq"], bytes.fromhex(e["stored_hex"])) for e in chain]
    report = verify_run(rows, keys_named("key_1"))
    assert report.ok, report.reason
    assert report.kids == (V["keys"]["key_1"]["kid"], V["keys"]["key_2"]["kid"])


def test_the_receiver_stores_the_whole_chain(tmp_path: Path) -> None:
    store = ReceiverStore(tmp_path / "p.db")
    try:
        store.register(V["gateway_id"], V["token"], V["keys"]["key_1"]["public_key_hex"])
        keys = store.keys(V["gateway_id"])
        raws = [bytes.fromhex(e["stored_hex"]) for e in V["chain"]]
        result = store.ingest(V["gateway_id"], V["epoch"], raws, keys)
        assert result.error is None and result.high_water == len(raws)
        figures = store.figures(V["gateway_id"])
        assert figures["received"] == len(raws)
        assert figures["chain_breaks"] == figures["bad_signatures"] == 0
        assert store.check_token(V["gateway_id"], V["token"])
    finally:
        store.close()


@pytest.mark.parametrize("case", V["invalid"], ids=lambda c: c["name"])
def test_invalid_cases_get_their_verdict(case: dict[str, Any], tmp_path: Path) -> None:
    env = envelope_of(case["envelope"])
    assert canonical(env).hex() == case["stored_hex"]
    first = V["chain"][case["after_seq"] - 1]
    keys = keys_named(*V["registered_keys"])
    try:
        check_event(env, keys, bytes.fromhex(first["hash_hex"]))
        verdict = "ok"
    except ChainBreak as err:
        verdict = err.reason
    assert verdict == case["check_event"]
    # The receiver's own stateless check agrees on the signature part.
    (checked,) = verify_events([bytes.fromhex(case["stored_hex"])], keys)
    assert (checked.digest is None) == (case["check_event"] in
                                        ("bad-hash", "bad-signature", "unknown-key"))
    store = ReceiverStore(tmp_path / "p.db")
    try:
        store.register(V["gateway_id"], V["token"], V["keys"]["key_1"]["public_key_hex"])
        result = store.ingest(V["gateway_id"], V["epoch"],
                              [bytes.fromhex(first["stored_hex"]),
                               bytes.fromhex(case["stored_hex"])], store.keys(V["gateway_id"]))
        expected = case["receiver"]
        assert (result.error_code or None) == expected["close"]
        assert result.high_water == (2 if expected["stored"] else 1)
        if expected.get("counter"):
            assert store.figures(V["gateway_id"])[expected["counter"]] == 1
    finally:
        store.close()


@pytest.mark.parametrize("frame", V["frames"], ids=lambda f: f["name"])
def test_frames_decode_and_encode_byte_for_byte(frame: dict[str, Any]) -> None:
    raw = bytes.fromhex(frame["hex"])
    message = proto.decode(raw)
    assert proto.encode(message) == raw
    body = msgpack.unpackb(raw, raw=False)
    assert body["type"] == frame["frame"]["type"]
    if isinstance(message, proto.Events):
        assert [e.hex() for e in message.events] == frame["frame"]["events"]
        assert [e["stored_hex"] for e in V["chain"][:2]] == frame["frame"]["events"]
