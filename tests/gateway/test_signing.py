from __future__ import annotations

import os
from pathlib import Path

import hypothesis
import hypothesis.strategies as st
import msgpack
import nacl.signing
import pytest

from gateway.signing import (
    GENESIS,
    ChainBreak,
    KeyFileError,
    Signer,
    canonical,
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


# -- the signing process ---------------------------------------------------------------------------

def test_signing_process_signs_like_in_process(signer):
    from gateway.signing import SignerProcess

    digests = [bytes([i]) * 32 for i in range(200)]
    process = SignerProcess()
    try:
        assert process.sign_many(signer, digests) == [signer.key.sign(d).signature
                                                      for d in digests]
        other = Signer(nacl.signing.SigningKey.generate())
        process.request(signer, digests[:3])
        process.request(other, digests[:3])  # a key change between requests
        assert process.receive(3) == [signer.key.sign(d).signature for d in digests[:3]]
        assert process.receive(3) == [other.key.sign(d).signature for d in digests[:3]]
    finally:
        process.close()


def test_signing_process_ignores_ctrl_c(signer, capfd):
    # Ctrl-C at a terminal reaches the whole process group: the child used to die with a
    # KeyboardInterrupt traceback in the middle of the demo's summary. The parent stops it.
    import signal

    from gateway.signing import SignerProcess

    process = SignerProcess()
    try:
        # Its own process group: a terminal's Ctrl-C cannot reach it, even while it starts.
        assert os.getpgid(process._proc.pid) == process._proc.pid != os.getpgid(0)
        assert len(process.sign_many(signer, [bytes(32)])) == 1  # the child is serving
        os.kill(process._proc.pid, signal.SIGINT)
        digest = bytes([7]) * 32
        assert process.sign_many(signer, [digest]) == [signer.key.sign(digest).signature]
    finally:
        process.close()
    assert process._proc.returncode == 0
    assert "KeyboardInterrupt" not in capfd.readouterr().err


def test_seal_parts_and_finish_equal_seal(signer):
    from gateway.signing import finish_seal, seal_parts

    env = envelope(3, door="main", nested={"b": [{"z": 1, "a": 2}], "a": None})
    parts = seal_parts(env, GENESIS, signer.kid)
    assert finish_seal(env, GENESIS, signer.kid, parts,
                       signer.key.sign(parts.digest).signature) == seal(env, GENESIS, signer)


_plain = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                   st.text(max_size=8), st.binary(max_size=8))
_value = st.recursive(_plain, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=12)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.dictionaries(st.text(max_size=12), _value, max_size=24),
                  st.binary(min_size=32, max_size=32))
def test_spliced_stored_bytes_are_the_canonical_bytes(fields, prev):
    """The stored bytes are spliced from three runs of packed pairs; they must be exactly
    canonical(envelope), and the hash exactly chain_hash(prev, canonical(body)), for any field
    names (before, between and after "hash"/"sig"; 16+ fields need a map16 header)."""
    from gateway.signing import chain_hash, seal_parts

    signer = Signer(nacl.signing.SigningKey(bytes(32)))
    parts = seal_parts(fields, prev, signer.kid)
    sealed, stored = seal(fields, prev, signer)
    body = {k: v for k, v in sealed.items() if k not in ("hash", "sig")}
    assert parts.digest == chain_hash(prev, canonical(body)) == sealed["hash"]
    assert stored == canonical(sealed)
    assert decode_envelope(stored) == sealed


async def test_big_group_through_the_signing_process_with_a_rotation(make_outbox,
                                                                      outbox_settings, signer):
    """A group far larger than the pipes hold, with a key change in the middle: every event is
    signed by the right key and the chain verifies."""
    import time

    import trio

    from gateway.events import system_draft
    from gateway.outbox import iter_envelopes, open_readonly
    from gateway.outbox.ledger import LedgerChanges
    from gateway.outbox.pending import Pending
    from gateway.signing import SignerProcess
    from gateway.verify import verify_events

    outbox = make_outbox()
    new = Signer(nacl.signing.SigningKey.generate())
    batch = [Pending(system_draft("machineException", {"code": i}, now=time.time()))
             for i in range(3000)]
    batch.insert(1500, Pending(system_draft("keyRotated", {"new_kid": new.kid, "new_public_key":
                                                            bytes(new.verify_key).hex()},
                                             now=time.time()), rotate_to=new))
    outbox._sealing.process = SignerProcess()
    try:
        envelopes, _ = await trio.to_thread.run_sync(outbox._commit, batch, LedgerChanges(), 0)
    finally:
        outbox._sealing.close()
    assert [e["kid"] for e in envelopes] == [signer.kid] * 1501 + [new.kid] * 1500
    conn = open_readonly(outbox_settings.path)
    report = verify_events(iter_envelopes(conn), {signer.kid: signer.verify_key})
    assert report.ok and report.checked == 3001


async def test_a_dead_signing_process_falls_back_to_signing_in_process(make_outbox,
                                                                        outbox_settings, signer):
    import time

    import trio

    from gateway.events import system_draft
    from gateway.outbox import SIGN_PROCESS_MIN, iter_envelopes, open_readonly
    from gateway.outbox.ledger import LedgerChanges
    from gateway.outbox.pending import Pending
    from gateway.signing import SignerProcess
    from gateway.verify import verify_events

    def group(size: int) -> list[Pending]:
        return [Pending(system_draft("machineException", {"code": i}, now=time.time()))
                for i in range(size)]

    outbox = make_outbox()
    outbox._sealing.process = SignerProcess()
    await trio.to_thread.run_sync(outbox._commit, group(SIGN_PROCESS_MIN), LedgerChanges(), 0)
    outbox._sealing.process._proc.kill()
    outbox._sealing.process._proc.wait()
    envelopes, _ = await trio.to_thread.run_sync(outbox._commit, group(SIGN_PROCESS_MIN * 3), LedgerChanges(),
                                               0)
    assert outbox._sealing.process is None  # replaced by in-process signing, with a log line
    assert [e["seq"] for e in envelopes] == list(range(SIGN_PROCESS_MIN + 1,
                                                       SIGN_PROCESS_MIN * 4 + 1))
    conn = open_readonly(outbox_settings.path)
    report = verify_events(iter_envelopes(conn), {signer.kid: signer.verify_key})
    assert report.ok and report.checked == SIGN_PROCESS_MIN * 4


def test_signing_process_imports_only_the_installed_package(signer, tmp_path, monkeypatch):
    # A `gateway/` directory in the working directory must never be imported by the child that
    # receives the private key (python -m puts the cwd first on sys.path).
    from gateway.signing import SignerProcess

    planted = tmp_path / "gateway"
    planted.mkdir()
    stolen = tmp_path / "stolen"
    (planted / "__init__.py").write_text(f"open({str(stolen)!r}, 'w').write('imported')\n")
    (planted / "signing.py").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    process = SignerProcess()
    try:
        digests = [bytes([7]) * 32]
        assert process.sign_many(signer, digests) == [signer.key.sign(digests[0]).signature]
    finally:
        process.close()
    assert not stolen.exists()
