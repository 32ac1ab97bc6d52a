"""Issue 18, schema versioning: the version is read at open; every earlier layout (built from the
real historical DDL in tests/data/outbox/) is migrated forward after a backup, keeping its chain
and its machines' ledger; a newer one is refused with one line and exit 78."""

from __future__ import annotations

import sqlite3
import stat
import time
from pathlib import Path

import pytest
import trio

from gateway.errors import ConfigError
from gateway.events import system_draft
from gateway.outbox import SCHEMA, Outbox, OutboxSettings, envelope_for, iter_envelopes, migrations
from gateway.outbox.migrations import SCHEMA_VERSION, backup_path, file_version, stored_version
from gateway.signing import GENESIS, Signer, seal
from gateway.verify import verify_events
from tests.gateway.test_check import Plant, cli, logs_back, plant  # noqa: F401  (fixtures)

DATA = Path(__file__).parents[1] / "data" / "outbox"


def old_outbox(path: Path, settings: OutboxSettings, signer: Signer, version: int) -> None:
    """An outbox as release `version` left it: five sealed events (two delivered), a machine
    whose last exception (seq 5) was not acknowledged, meta.schema = "1" as every one said."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript((DATA / f"schema-v{version}.sql").read_text())
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [
        ("epoch", "00aa11bb22cc33dd"), ("gateway_id", settings.gateway_id),
        ("created_at", str(time.time())), ("delivered_seq", "2"), ("schema", "1")])
    prev = GENESIS
    for seq in range(1, 6):
        draft = system_draft("lossMarker", {"reason": "shed", "count": seq}, now=time.time())
        sealed, body = seal(envelope_for(settings, "00aa11bb22cc33dd", draft, seq), prev, signer)
        prev = sealed["hash"]
        conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (seq, draft.type, draft.channel, "p1/1" if seq == 5 else None,
                      time.time(), 0x11 if seq == 5 else None, prev, body))
    if version >= 3:
        conn.execute("INSERT INTO machine_state VALUES ('p1/1', 5, 17, x'', 4, 7)")
    else:
        conn.execute("INSERT INTO machine_state VALUES ('p1/1', 5, 17, x'', 4)")
    conn.close()


def layout(path: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(path)
    try:
        tables = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                             "ORDER BY name")]
        return {t: conn.execute(f"PRAGMA table_info({t})").fetchall() for t in tables}
    finally:
        conn.close()


async def append_one(outbox: Outbox) -> int:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            seq = await outbox.append_system("gatewayStarted", {"version": "test"})
            nursery.cancel_scope.cancel()
    return seq


def test_the_numbered_steps_build_exactly_the_current_layout(make_outbox, outbox_settings,
                                                              tmp_path):
    make_outbox().close()
    reference = tmp_path / "reference.db"
    conn = sqlite3.connect(reference)
    conn.executescript(SCHEMA)
    conn.close()
    assert layout(outbox_settings.path) == layout(reference)
    assert file_version(outbox_settings.path) == SCHEMA_VERSION
    assert not backup_path(outbox_settings.path, 0).exists()  # nothing to back up


@pytest.mark.parametrize("version", [1, 2, 3])
async def test_every_earlier_version_is_migrated_forward_after_a_backup(
        version, make_outbox, outbox_settings, signer, tmp_path):
    path = outbox_settings.path
    old_outbox(path, outbox_settings, signer, version)
    outbox = make_outbox()
    assert await append_one(outbox) == 6  # the chain continues from the old tail
    assert outbox.epoch == "00aa11bb22cc33dd" and outbox.delivered_seq == 2
    assert outbox.unacknowledged == {"p1/1": (17, b"")}
    assert outbox.unacknowledged_counter == {"p1/1": 7 if version == 3 else None}
    outbox.close()

    conn = sqlite3.connect(path)
    assert stored_version(conn) == SCHEMA_VERSION == file_version(path)
    assert dict(conn.execute("SELECT key, value FROM meta"))["schema"] == str(SCHEMA_VERSION)
    report = verify_events(iter_envelopes(conn), {signer.kid: signer.verify_key})
    assert report.ok and report.checked == 6
    conn.close()
    fresh = tmp_path / "fresh" / "outbox.db"
    Outbox.open(OutboxSettings(path=fresh, gateway_id="x"), signer).close()
    assert layout(path) == layout(fresh)

    copy = backup_path(path, version)
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    conn = sqlite3.connect(copy)
    assert stored_version(conn) == version
    assert [seq for seq, _ in iter_envelopes(conn)] == [1, 2, 3, 4, 5]
    conn.close()


def test_a_failed_migration_changes_nothing(outbox_settings, signer, monkeypatch):
    old_outbox(outbox_settings.path, outbox_settings, signer, 2)

    def broken(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(migrations, "MIGRATIONS", (
        *migrations.MIGRATIONS[:2], migrations.Migration(3, "broken", broken),
        *migrations.MIGRATIONS[3:]))
    with pytest.raises(Exception, match="disk I/O error"):
        Outbox.open(outbox_settings, signer)
    conn = sqlite3.connect(outbox_settings.path)
    assert stored_version(conn) == 2
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    conn.close()
    assert backup_path(outbox_settings.path, 2).exists()


def test_a_newer_outbox_is_refused_at_open_by_check_and_by_run_with_exit_78(
        plant: Plant, signer, capsys):  # noqa: F811
    config = plant.write()
    state = plant.base / "state"
    state.mkdir()
    db = state / "outbox.db"
    Outbox.open(OutboxSettings(path=db, gateway_id="check-gw"), signer).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()

    with pytest.raises(ConfigError) as refused:
        Outbox.open(OutboxSettings(path=db, gateway_id="check-gw"), signer)
    message = str(refused.value)
    assert "\n" not in message
    assert f"schema version {SCHEMA_VERSION + 1}" in message and "Upgrade and downgrade" in message
    assert not backup_path(db, SCHEMA_VERSION + 1).exists()

    for command in ("check", "run"):
        assert cli(command, "--config", str(config)) == 78
        err = capsys.readouterr().err
        assert f"outbox.path: {db} has schema version {SCHEMA_VERSION + 1}" in err
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1  # untouched
    conn.close()


def test_a_first_start_that_dies_while_building_leaves_no_outbox(outbox_settings, signer,
                                                                  monkeypatch):
    """A kill during the very first start (tests/test_crash.py found one) must not leave an
    outbox file without tables for readers to trip on: the file appears complete or not at
    all."""
    real = migrations.MIGRATIONS

    def dies(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("killed")

    monkeypatch.setattr(migrations, "MIGRATIONS", (*real[:2], migrations.Migration(3, "x", dies),
                                                   *real[3:]))
    with pytest.raises(Exception, match="killed"):
        Outbox.open(outbox_settings, signer)
    assert not outbox_settings.path.exists()
    monkeypatch.setattr(migrations, "MIGRATIONS", real)
    Outbox.open(outbox_settings, signer).close()  # the next start builds it
    conn = sqlite3.connect(outbox_settings.path)
    assert stored_version(conn) == SCHEMA_VERSION
    conn.close()


def test_the_copy_before_an_upgrade_keeps_systemd_waiting(outbox_settings, signer, monkeypatch,
                                                           tmp_path):
    """A large outbox's copy can outlast systemd's start timeout: the copy asks for more time
    (EXTEND_TIMEOUT_USEC) and says why in the unit's status."""
    import socket

    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(sock_path))
    old_outbox(outbox_settings.path, outbox_settings, signer, 2)
    Outbox.open(outbox_settings, signer).close()
    message = sock.recv(4096).decode()
    sock.close()
    assert "EXTEND_TIMEOUT_USEC=60000000" in message
    assert "STATUS=backing up the outbox before its schema upgrade: 100%" in message
