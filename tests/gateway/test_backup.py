"""Issue 18: `casino-gateway backup` and `restore`, on real files: an online backup of a running
outbox, restorable on a new box where the chain goes on; files 0600 in a 0700 directory; the
private key only when asked; restore checks the manifest, refuses a gateway in use, never
overwrites an outbox, restores only what the manifest names, and says when a new epoch follows."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import sys
from pathlib import Path

import pytest
import trio

from drivers.sas.journal import PollJournal
from gateway.cli import main
from gateway.config import load_config
from gateway.outbox import Outbox, OutboxSettings, iter_envelopes, open_readonly
from gateway.signing import load_signing_key
from gateway.verify import verify_events
from tests.gateway.test_check import Plant, logs_back, plant  # noqa: F401  (fixtures)


def settings_of(config: Path) -> OutboxSettings:
    c = load_config(config)
    return OutboxSettings(path=c.outbox_path, gateway_id=c.gateway.id, min_free_mb=0)


def a_running_box(plant: Plant) -> tuple[Path, Outbox]:  # noqa: F811
    config = plant.write()
    (plant.base / "state").mkdir(mode=0o750)
    c = load_config(config)
    outbox = Outbox.open(settings_of(config), load_signing_key(c.gateway.key_file))
    commands = sqlite3.connect(c.gateway.state_dir / "commands.db")
    commands.execute("CREATE TABLE commands (id TEXT PRIMARY KEY)")
    commands.execute("INSERT INTO commands VALUES ('cmd-1')")
    commands.commit()
    commands.close()
    journal = PollJournal(c.gateway.state_dir / "polls" / "port1.journal")
    journal.record(bytes.fromhex("0180"))
    journal.close()
    return config, outbox


async def append(outbox: Outbox, count: int) -> None:
    for i in range(count):
        await outbox.append_system("gatewayStarted", {"version": f"t{i}"})


async def backup_while_running(outbox: Outbox, *argv: str) -> int:
    """The backup runs while the writer commits: an online copy."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            await append(outbox, 20)
            nursery.start_soon(append, outbox, 200)
            code = await trio.to_thread.run_sync(main, list(argv))
            nursery.cancel_scope.cancel()
    return code


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_an_online_backup_restores_on_a_new_box_and_the_chain_goes_on(
        plant: Plant, tmp_path: Path, capsys):  # noqa: F811
    config, outbox = a_running_box(plant)
    kept = tmp_path / "backups" / "today"
    assert await backup_while_running(outbox, "backup", "--config", str(config), "--to",
                                      str(kept), "--include-private-key") == 0
    outbox.close()
    assert "backed up check-gw" in capsys.readouterr().out
    manifest = json.loads((kept / "manifest.json").read_text())
    assert set(manifest["files"]) == {"outbox.db", "commands.db", "polls/port1.journal",
                                      "gateway.toml", "gateway-public.txt", "signing.key"}
    assert mode(kept) == 0o700 and mode(kept / "polls") == 0o700
    for name in [*manifest["files"], "manifest.json"]:
        assert mode(kept / name) == 0o600 and (kept / name).stat().st_uid == os.geteuid()
    backed_up = manifest["outbox"]["events"]
    assert backed_up >= 20 and manifest["outbox"]["schema"] == 4
    assert main(["outbox", "verify", "--db", str(kept / "outbox.db"), "--public-key",
                 str(kept / "gateway-public.txt")]) == 0

    # A new box: nothing but the backup. Its configuration's relative paths land beside it.
    new_config = tmp_path / "newbox" / "gateway.toml"
    (kept / "outbox.db.witness").write_text("99999\n")  # not in the manifest: never restored
    assert main(["restore", "--config", str(new_config), "--from", str(kept)]) == 0
    out = capsys.readouterr().out
    assert f"installed the backup's configuration as {new_config}" in out
    assert "installed the private key" in out
    assert f"after seq {backed_up} (it is ahead of this backup), the gateway starts a new " \
           f"epoch" in out
    state = tmp_path / "newbox" / "state"
    assert sorted(p.name for p in state.iterdir()) == ["commands.db", "outbox.db",
                                                           "outbox.db.lock", "polls"]
    assert mode(state / "outbox.db") == 0o600 and mode(tmp_path / "newbox" / "gw.key") == 0o600
    assert PollJournal(state / "polls" / "port1.journal").snapshot() == {1: bytes.fromhex("0180")}

    signer = load_signing_key(tmp_path / "newbox" / "gw.key")
    restored = Outbox.open(settings_of(new_config), signer)
    assert restored.last_seq == backed_up and restored.epoch == manifest["outbox"]["epoch"]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(restored.run_writer)
            assert await restored.append_system("gatewayStarted", {"version": "new"}) \
                == backed_up + 1
            nursery.cancel_scope.cancel()
    restored.close()
    conn = open_readonly(state / "outbox.db")
    assert verify_events(iter_envelopes(conn), {signer.kid: signer.verify_key}).ok
    conn.close()


async def test_the_private_key_is_left_out_unless_asked(
        plant: Plant, tmp_path: Path, capsys):  # noqa: F811
    config, outbox = a_running_box(plant)
    kept = tmp_path / "b"
    assert await backup_while_running(outbox, "backup", "--config", str(config), "--to",
                                      str(kept)) == 0
    outbox.close()
    assert not (kept / "signing.key").exists()
    assert "public key only" in capsys.readouterr().out
    key = load_signing_key(plant.base / "gw.key")
    assert (kept / "gateway-public.txt").read_text() == \
        f"{bytes(key.verify_key).hex()} {key.kid}\n"
    new_config = tmp_path / "newbox" / "gateway.toml"
    assert main(["restore", "--config", str(new_config), "--from", str(kept)]) == 0
    assert f"NOTE: no signing key at {tmp_path / 'newbox' / 'gw.key'}" in capsys.readouterr().out


async def test_restore_refuses_a_running_gateway_and_never_overwrites_an_outbox(
        plant: Plant, tmp_path: Path, capsys):  # noqa: F811
    config, outbox = a_running_box(plant)
    kept = tmp_path / "b"
    assert await backup_while_running(outbox, "backup", "--config", str(config), "--to",
                                      str(kept)) == 0
    assert main(["restore", "--config", str(config), "--from", str(kept), "--replace"]) == 1
    assert "in use by another process" in capsys.readouterr().err
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            await append(outbox, 5)  # events after the backup: the file to keep
            nursery.cancel_scope.cancel()
    newest = outbox.last_seq
    outbox.close()
    db = plant.base / "state" / "outbox.db"
    assert main(["restore", "--config", str(config), "--from", str(kept)]) == 1
    assert "never overwrites an outbox" in capsys.readouterr().err

    assert main(["restore", "--config", str(config), "--from", str(kept), "--replace"]) == 0
    aside = [p for p in db.parent.iterdir() if p.name.startswith("outbox.db.replaced-")]
    assert len(aside) == 1 and not db.with_name("outbox.db-wal").exists()
    conn = sqlite3.connect(aside[0])
    assert conn.execute("SELECT max(seq) FROM events").fetchone()[0] == newest  # kept whole
    conn.close()


async def test_a_damaged_backup_is_refused_before_anything_is_touched(
        plant: Plant, tmp_path: Path, capsys):  # noqa: F811
    config, outbox = a_running_box(plant)
    kept = tmp_path / "b"
    assert await backup_while_running(outbox, "backup", "--config", str(config), "--to",
                                      str(kept)) == 0
    outbox.close()
    damaged = bytearray((kept / "outbox.db").read_bytes())
    damaged[5000] ^= 0xFF
    (kept / "outbox.db").write_bytes(bytes(damaged))
    new_config = tmp_path / "newbox" / "gateway.toml"
    assert main(["restore", "--config", str(new_config), "--from", str(kept)]) == 1
    assert "outbox.db is missing or does not match the manifest" in capsys.readouterr().err
    assert not new_config.exists()
    assert main(["backup", "--config", str(config), "--to", str(kept)]) == 1
    assert "already holds a backup" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform != "linux", reason="flock and pty semantics of Linux")
def test_the_commands_are_listed_with_their_descriptions(capsys):
    with pytest.raises(SystemExit):
        main(["backup", "--help"])
    assert "online backup" in capsys.readouterr().out
