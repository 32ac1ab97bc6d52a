"""Issue 18: key rotation as one command (`keys rotate --config F`), through the running gateway
(no restart), with the retired private key out of the key directory, correct ownership when
root runs it, and a `verify` that says which public key it needs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import pytest
import trio

from drivers.sim.fleet import serve_fleet
from gateway import daemon
from gateway.config import load_config
from gateway.outbox import Outbox, OutboxSettings
from gateway.receiver.server import ReceiverSettings, serve_receiver
from gateway.signing import decode_envelope, load_signing_key, write_signing_key
from tests.gateway.test_control import short_dir, wait_until
from tests.gateway.test_keys import draft, main, outbox_with_events, stored

GATEWAY_ID = "rotate-test-gw"


def write_config(base: Path, devices: list[str], url: str, sock: Path | None = None) -> Path:
    sock = sock or short_dir(base) / "control.sock"
    ports = "".join(f'[[ports]]\nname = "port{i + 1}"\ndevice = "{d}"\naddresses = [1]\n'
                    f"poll_interval_ms = 40\n" for i, d in enumerate(devices))
    (base / "keys").mkdir(mode=0o700, exist_ok=True)
    (base / "state").mkdir(mode=0o750, exist_ok=True)
    path = base / "gateway.toml"
    path.write_text(f'[gateway]\nid = "{GATEWAY_ID}"\nkey_file = "keys/signing.key"\n'
                    f'state_dir = "state"\ncontrol_socket = "{sock}"\n'
                    f'[uplink]\nurl = "{url}"\ntoken_file = "token"\nbackoff_initial_s = 0.05\n'
                    f'backoff_max_s = 0.2\n[log]\nlevel = "warning"\n{ports}')
    return path


def kids_of(db: Path) -> list[tuple[int, str, str]]:
    return [(seq, env["event"], env["kid"]) for seq, body in stored(db)
            for env in [decode_envelope(body)]]


async def test_rotate_through_the_running_gateway_needs_no_restart(tmp_path: Path, capsys):
    (tmp_path / "token").write_text("rotate-token\n")
    os.chmod(tmp_path / "token", 0o600)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            receiver = await nursery.start(serve_receiver, ReceiverSettings(
                host="127.0.0.1", port=0, db_path=tmp_path / "rx.db"))
            fleet = await nursery.start(partial(serve_fleet, 2, rte=True, seed=3,
                                                events_per_second=20.0))
            cfg_path = write_config(tmp_path, fleet.device_paths, receiver.url)
            config = load_config(cfg_path)
            old = write_signing_key(config.gateway.key_file)
            receiver.store.register(GATEWAY_ID, "rotate-token", bytes(old.verify_key).hex())
            gw = await nursery.start(partial(daemon.run, config, handle_signals_=False))
            await wait_until(gw, lambda: gw.outbox.last_seq >= 5)
            started = time.monotonic()
            code = await trio.to_thread.run_sync(main, ["keys", "rotate", "--config",
                                                        str(cfg_path)])
            took = time.monotonic() - started
            assert code == 0
            new = load_signing_key(config.gateway.key_file)
            assert new.kid != old.kid and gw.outbox.signer.kid == new.kid
            # The platform takes the events signed by the new key (it learned it from keyRotated).
            rotated_at = gw.outbox.last_seq
            await wait_until(gw, lambda: gw.outbox.delivered_seq >= rotated_at + 3)
            assert receiver.store.high_water(GATEWAY_ID, gw.outbox.epoch) >= rotated_at + 3
            nursery.cancel_scope.cancel()
    out = capsys.readouterr().out
    assert "by the running gateway" in out and "no restart needed" in out, out
    # The chain: keyRotated signed by the old key, everything after by the new one.
    rows = kids_of(config.outbox_path)
    at = next(seq for seq, event, _ in rows if event == "keyRotated")
    assert {kid for seq, _, kid in rows if seq <= at} == {old.kid}
    assert {kid for seq, _, kid in rows if seq > at} == {new.kid}
    # The retired private key left the key directory, for the state directory's archive.
    keydir = config.gateway.key_file.parent
    assert sorted(p.name for p in keydir.iterdir()) == ["signing.key"]
    archived = config.gateway.state_dir / "retired-keys" / (old.kid.replace(":", "-") + ".key")
    assert load_signing_key(archived).kid == old.kid
    assert archived.stat().st_mode & 0o777 == 0o600
    assert archived.parent.stat().st_mode & 0o777 == 0o700
    print(f"\nkey rotation through the running gateway: command {took * 1000:.0f} ms, "
          f"gateway never stopped", file=sys.__stderr__)


def test_rotate_offline_with_destroy_leaves_no_old_key(tmp_path: Path, capsys):
    key_file, db = tmp_path / "keys" / "signing.key", tmp_path / "state" / "outbox.db"
    old = write_signing_key(key_file)
    trio.run(outbox_with_events, key_file, db, 3)
    assert main(["keys", "rotate", "--key-file", str(key_file), "--db", str(db),
                 "--destroy"]) == 0
    assert "old private key destroyed" in capsys.readouterr().out
    assert sorted(p.name for p in key_file.parent.iterdir()) == ["signing.key"]
    assert not (tmp_path / "state" / "retired-keys").exists()
    assert load_signing_key(key_file).kid != old.kid


def test_rotate_finishes_when_the_gateway_went_on_under_the_new_key(tmp_path: Path, capsys):
    """The gateway recorded keyRotated and signed more events, then the command died before
    swapping the files: running it again installs KEY.next and announces nothing twice."""
    key_file, db = tmp_path / "signing.key", tmp_path / "outbox.db"
    old = write_signing_key(key_file)
    trio.run(outbox_with_events, key_file, db, 2)
    new = write_signing_key(tmp_path / "signing.key.next")

    async def rotate_and_go_on() -> None:
        outbox = Outbox.open(OutboxSettings(path=db, gateway_id="gw-k"), old)
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            await outbox.rotate_key(new)
            await outbox.append(draft(7))  # signed by the new key
            nursery.cancel_scope.cancel()
        outbox.close()

    trio.run(rotate_and_go_on)
    (tmp_path / "signing.key.retired").hardlink_to(key_file)  # died after the link
    assert main(["keys", "rotate", "--key-file", str(key_file), "--db", str(db)]) == 0
    assert load_signing_key(key_file).kid == new.kid
    assert [event for _, event, _ in kids_of(db)].count("keyRotated") == 1
    assert "was already recorded at seq 3" in capsys.readouterr().out
    assert not (tmp_path / "signing.key.retired").exists()
    assert load_signing_key(tmp_path / "retired-keys" / (old.kid.replace(":", "-") + ".key"))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_rotate_as_root_gives_the_new_key_to_the_key_owner(tmp_path: Path):
    key_file, db = tmp_path / "keys" / "signing.key", tmp_path / "state" / "outbox.db"
    write_signing_key(key_file)
    trio.run(outbox_with_events, key_file, db, 1)
    service = 65534  # nobody: stands in for casino-gateway
    for path in [key_file, *db.parent.iterdir()]:
        os.chown(path, service, service)
    assert main(["keys", "rotate", "--key-file", str(key_file), "--db", str(db)]) == 0
    assert (key_file.stat().st_uid, key_file.stat().st_gid) == (service, service)
    # Root recorded keyRotated in the outbox: the service user can still open every file.
    assert {p.stat().st_uid for p in db.parent.glob("outbox.db*")} == {service}
    archive = tmp_path / "state" / "retired-keys"
    assert {p.stat().st_uid for p in [archive, *archive.iterdir()]} == {service}


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"),
                    reason="needs another user to play the stranger")
async def test_only_root_or_the_service_user_may_rotate_through_the_socket(tmp_path: Path):
    """The socket is open to the service's group (technicians); rotating is not for them."""
    shared = Path(tempfile.mkdtemp(prefix="rotate-", dir="/tmp"))
    os.chmod(shared, 0o755)
    (tmp_path / "token").write_text("rotate-token\n")
    os.chmod(tmp_path / "token", 0o600)
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                fleet = await nursery.start(partial(serve_fleet, 1, rte=True, seed=3))
                config = load_config(write_config(tmp_path, fleet.device_paths,
                                                  "ws://127.0.0.1:9/v1/stream",
                                                  shared / "control.sock"))
                write_signing_key(config.gateway.key_file)
                write_signing_key(config.gateway.key_file.with_name("signing.key.next"))
                gw = await nursery.start(partial(daemon.run, config, handle_signals_=False))
                os.chmod(shared / "control.sock", 0o666)
                asked = await trio.run_process(
                    ["/usr/bin/python3", "-c", "import socket, sys; s = socket.socket("
                     "socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b'{\"cmd\": "
                     "\"rotate-key\"}\\n'); print(s.recv(4096).decode())",
                     str(shared / "control.sock")], user=65534, cwd="/", capture_stdout=True)
                kid = gw.outbox.signer.kid
                nursery.cancel_scope.cancel()
    finally:
        shutil.rmtree(shared)
    assert json.loads(asked.stdout) == {
        "ok": False, "error": "only root or the service user may rotate the key"}
    assert kid == load_signing_key(config.gateway.key_file).kid  # nothing rotated


def test_verify_says_which_public_key_it_needs(tmp_path: Path, capsys):
    key_file, db = tmp_path / "signing.key", tmp_path / "outbox.db"
    old = write_signing_key(key_file)
    trio.run(outbox_with_events, key_file, db, 2)
    assert main(["keys", "rotate", "--key-file", str(key_file), "--db", str(db)]) == 0
    new_pub, old_pub = tmp_path / "new.pub", tmp_path / "old.pub"
    assert main(["keys", "export-public", "--key-file", str(key_file), "--out", str(new_pub)]) == 0
    old_pub.write_text(bytes(old.verify_key).hex() + "\n")
    capsys.readouterr()
    assert main(["outbox", "verify", "--db", str(db), "--public-key", str(new_pub)]) == 1
    out = capsys.readouterr().out
    assert f"BROKEN at seq 1: unknown-key: {old.kid}" in out
    assert f"seq 1 is signed by key {old.kid}, which is not among the keys given" in out
    assert "was rotated in at seq 3" in out
    assert f"retired-keys/{old.kid.replace(':', '-')}.key" in out
    # Both keys: OK (and the old one alone is enough: keyRotated carries the new one).
    assert main(["outbox", "verify", "--db", str(db), "--public-key", str(old_pub),
                 "--public-key", str(new_pub)]) == 0
    assert main(["outbox", "verify", "--db", str(db), "--public-key", str(old_pub), "--json"]) == 0
    assert main(["outbox", "verify", "--db", str(db), "--public-key", str(new_pub),
                 "--json"]) == 1
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["needs_kid"] == old.kid


def test_rotate_as_the_service_user_in_a_subprocess(tmp_path: Path):
    """The installed command, as a plain user that owns the key directory (no root, no chown)."""
    key_file, db = tmp_path / "keys" / "signing.key", tmp_path / "state" / "outbox.db"
    write_signing_key(key_file)
    trio.run(outbox_with_events, key_file, db, 1)
    done = subprocess.run([sys.executable, "-m", "gateway", "keys", "rotate", "--key-file",
                           str(key_file), "--db", str(db)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
