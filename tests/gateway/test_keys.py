"""Key rotation: keyRotated is signed by the old key and names the new one; every later event is
signed by the new key; verify follows the change and refuses an unannounced one."""

from __future__ import annotations

import time
from pathlib import Path

import msgpack
import nacl.signing
import pytest
import trio

from gateway.cli import build_parser
from gateway.errors import StoreError
from gateway.events import system_draft
from gateway.outbox import Outbox, OutboxSettings, iter_envelopes, open_readonly
from gateway.signing import (
    GENESIS,
    Signer,
    decode_envelope,
    load_signing_key,
    seal,
    write_signing_key,
)
from gateway.verify import verify_events


def main(argv: list[str]) -> int:
    """The CLI without gateway.cli.main's logging set-up (it would outlive capsys's stream)."""
    args = build_parser().parse_args(argv)
    return args.func(args)


def draft(n: int):
    return system_draft("machineException", {"code": n, "name": "test"}, now=time.time())


def stored(path: Path) -> list[tuple[int, bytes]]:
    conn = open_readonly(path)
    try:
        return list(iter_envelopes(conn))
    finally:
        conn.close()


async def test_rotate_key_signs_the_announcement_with_the_old_key(make_outbox, outbox_settings,
                                                                  signer):
    new = Signer(nacl.signing.SigningKey.generate())
    outbox = make_outbox()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            for i in range(3):
                await outbox.append(draft(i))
            assert await outbox.rotate_key(new) == 4
            assert await outbox.append(draft(9)) == 5
            nursery.cancel_scope.cancel()
    assert outbox.kids == [signer.kid, new.kid] and outbox.signer is new
    envs = [decode_envelope(body) for _, body in stored(outbox_settings.path)]
    assert [e["kid"] for e in envs] == [signer.kid] * 4 + [new.kid]
    rotated = envs[3]
    assert rotated["event"] == "keyRotated" and rotated["data"]["new_kid"] == new.kid
    assert rotated["data"]["new_public_key"] == bytes(new.verify_key).hex()
    # The auditor knows only the old key; the new one is learned from the signed announcement.
    report = verify_events(stored(outbox_settings.path), {signer.kid: signer.verify_key})
    assert report.ok and report.checked == 5 and report.kids == (signer.kid, new.kid)
    outbox.close()
    # After a restart the outbox must be opened with the new key, not the old one.
    with pytest.raises(StoreError, match="keys rotate"):
        Outbox.open(outbox_settings, signer)
    reopened = Outbox.open(outbox_settings, new)
    assert reopened.last_seq == 5
    reopened.close()


async def test_rotating_to_the_same_key_is_refused(make_outbox, signer):
    with pytest.raises(ValueError, match="already in use"):
        await make_outbox().rotate_key(signer)


def chain(specs: list[tuple[Signer, dict]]) -> list[tuple[int, bytes]]:
    rows, prev = [], GENESIS
    for seq, (signer, extra) in enumerate(specs, start=1):
        sealed, body = seal({"event": "machineException", "seq": seq, "data": {}, **extra},
                            prev, signer)
        prev = sealed["hash"]
        rows.append((seq, body))
    return rows


def test_an_unannounced_key_change_is_caught_even_with_both_keys_trusted(signer):
    other = Signer(nacl.signing.SigningKey.generate())
    rows = chain([(signer, {}), (signer, {}), (other, {})])
    keys = {signer.kid: signer.verify_key, other.kid: other.verify_key}
    report = verify_events(rows, keys)
    assert report.break_at == 3 and "key-change" in report.reason


def test_old_key_signing_after_the_rotation_is_caught(signer):
    other = Signer(nacl.signing.SigningKey.generate())
    announce = {"event": "keyRotated", "data": {"new_kid": other.kid,
                                                "new_public_key": bytes(other.verify_key).hex()}}
    rows = chain([(signer, {}), (signer, announce), (signer, {})])
    report = verify_events(rows, {signer.kid: signer.verify_key})
    assert report.break_at == 3 and "key-change" in report.reason


def test_announcement_whose_key_does_not_match_its_kid_is_caught(signer):
    other = Signer(nacl.signing.SigningKey.generate())
    liar = {"event": "keyRotated", "data": {"new_kid": other.kid,
                                            "new_public_key": bytes(signer.verify_key).hex()}}
    report = verify_events(chain([(signer, liar)]), {signer.kid: signer.verify_key})
    assert report.break_at == 1 and "carries the key" in report.reason


def test_rotation_without_public_key_needs_the_new_key_from_the_auditor(signer):
    other = Signer(nacl.signing.SigningKey.generate())
    bare = {"event": "keyRotated", "data": {"new_kid": other.kid}}
    rows = chain([(signer, bare), (other, {})])
    assert "unknown-key" in verify_events(rows, {signer.kid: signer.verify_key}).reason
    assert verify_events(rows, {signer.kid: signer.verify_key,
                                other.kid: other.verify_key}).ok


# -- the CLI: offline rotation ---------------------------------------------------------------------

async def outbox_with_events(key_file: Path, db: Path, count: int) -> None:
    outbox = Outbox.open(OutboxSettings(path=db, gateway_id="gw-k", venue="V", region="R"),
                         load_signing_key(key_file))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            for i in range(count):
                await outbox.append(draft(i))
            nursery.cancel_scope.cancel()
    outbox.close()


def test_cli_rotate_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    key_file, db = tmp_path / "signing.key", tmp_path / "outbox.db"
    old = write_signing_key(key_file)
    trio.run(outbox_with_events, key_file, db, 3)
    assert main(["keys", "rotate", "--key-file", str(key_file), "--db", str(db)]) == 0
    out = capsys.readouterr().out
    new = load_signing_key(key_file)
    assert new.kid != old.kid and f"{old.kid} -> {new.kid}" in out and "seq 4" in out
    # The retired key is archived beside the outbox (outside the key directory), not kept there.
    previous = tmp_path / "retired-keys" / (old.kid.replace(":", "-") + ".key")
    assert load_signing_key(previous).kid == old.kid
    assert previous.stat().st_mode & 0o777 == 0o600 and key_file.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "signing.key.retired").exists()
    assert not (tmp_path / "signing.key.next").exists()
    rotated = decode_envelope(stored(db)[-1][1])
    assert (rotated["kid"], rotated["data"]["new_kid"], rotated["venue"]) == (old.kid, new.kid,
                                                                              "V")
    # The daemon restarts with the new key and the chain goes on under it.
    trio.run(outbox_with_events, key_file, db, 2)
    pub = tmp_path / "old.pub"
    pub.write_text(bytes(old.verify_key).hex() + "\n")
    assert main(["outbox", "verify", "--db", str(db), "--public-key", str(pub)]) == 0
    assert "OK: 6 events verified" in capsys.readouterr().out


def test_cli_rotate_refuses_while_the_gateway_runs(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]):
    key_file, db = tmp_path / "signing.key", tmp_path / "outbox.db"
    old = write_signing_key(key_file)
    running = Outbox.open(OutboxSettings(path=db, gateway_id="gw-k"), old)
    try:
        assert main(["keys", "rotate", "--key-file", str(key_file), "--db", str(db)]) == 1
    finally:
        running.close()
    assert "stop the gateway first" in capsys.readouterr().err
    assert load_signing_key(key_file).kid == old.kid  # nothing changed


def test_cli_rotate_finishes_an_interrupted_rotation(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]):
    """Crash after keyRotated was committed but before the key files were swapped."""
    key_file, db = tmp_path / "signing.key", tmp_path / "outbox.db"
    old = write_signing_key(key_file)
    trio.run(outbox_with_events, key_file, db, 2)
    new = write_signing_key(tmp_path / "signing.key.next")

    async def announce() -> None:
        outbox = Outbox.open(OutboxSettings(path=db, gateway_id="gw-k"), old)
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            await outbox.rotate_key(new)
            nursery.cancel_scope.cancel()
        outbox.close()

    trio.run(announce)
    # The gateway would refuse to start with the old key now; running rotate again finishes.
    with pytest.raises(StoreError, match="keys rotate"):
        Outbox.open(OutboxSettings(path=db, gateway_id="gw-k"), old)
    assert main(["keys", "rotate", "--key-file", str(key_file), "--db", str(db)]) == 0
    assert load_signing_key(key_file).kid == new.kid
    assert len(stored(db)) == 3  # no second announcement
    assert "seq 3" in capsys.readouterr().out


def test_cli_rotate_needs_the_outbox(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    key_file = tmp_path / "signing.key"
    write_signing_key(key_file)
    assert main(["keys", "rotate", "--key-file", str(key_file)]) == 2
    assert "--db" in capsys.readouterr().err


def test_forged_announcement_does_not_verify(signer):
    """Someone without the old key cannot announce their own key: the signature fails."""
    mallory = Signer(nacl.signing.SigningKey.generate())
    rows = chain([(signer, {})])
    env = decode_envelope(rows[0][1])
    _, body = seal({"event": "keyRotated", "seq": 2, "data": {
        "new_kid": mallory.kid, "new_public_key": bytes(mallory.verify_key).hex()}},
        env["hash"], mallory)
    tampered = msgpack.unpackb(body, raw=False)
    tampered["kid"] = signer.kid
    rows.append((2, msgpack.packb(tampered, use_bin_type=True)))
    assert not verify_events(rows, {signer.kid: signer.verify_key}).ok
