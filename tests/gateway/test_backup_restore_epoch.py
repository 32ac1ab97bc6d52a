"""Issue 18 end to end: backup -> the box is wiped -> restore into a new directory -> start, with
the reference platform: 0 (epoch, seq) reused, the platform sees a new epoch whose seq-1
lossMarker covers exactly the seqs the backup does not have."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import trio

from gateway.cli import main
from gateway.config import load_config
from gateway.outbox import Outbox
from gateway.signing import decode_envelope, load_signing_key
from tests.gateway.test_backup import a_running_box, append, settings_of
from tests.gateway.test_check import Plant, logs_back, plant  # noqa: F401  (fixtures)
from tests.gateway.test_rollback_platform import stream_until


async def test_backup_wipe_restore_start_reuses_no_seq(plant: Plant, tmp_path: Path,  # noqa: F811
                                                       capsys):
    config, outbox = a_running_box(plant)
    old_epoch = outbox.epoch
    kept = tmp_path / "backups" / "today"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            await append(outbox, 20)
            assert await trio.to_thread.run_sync(main, [
                "backup", "--config", str(config), "--to", str(kept),
                "--include-private-key"]) == 0
            await append(outbox, 30)  # committed after the backup: the platform gets them
            nursery.cancel_scope.cancel()
    backed_up = json.loads((kept / "manifest.json").read_text())["outbox"]["events"]

    def old_stream(h):
        return h.store.events("check-gw", old_epoch)
    with trio.fail_after(30):
        before = await stream_until(outbox, tmp_path, lambda h: h.store.high_water(
            "check-gw", old_epoch) >= outbox.last_seq, old_stream)
    outbox.close()
    assert len(before) > backed_up

    shutil.rmtree(load_config(config).gateway.state_dir)  # the disk dies
    new_config = tmp_path / "newbox" / "gateway.toml"
    assert main(["restore", "--config", str(new_config), "--from", str(kept)]) == 0
    capsys.readouterr()
    restored = Outbox.open(settings_of(new_config),
                           load_signing_key(tmp_path / "newbox" / "gw.key"))
    assert restored.last_seq == backed_up and restored.may_start_new_epoch

    def both(h):
        return h.store.events("check-gw", old_epoch), h.store.events("check-gw", restored.epoch)
    with trio.fail_after(30):
        old, new = await stream_until(
            restored, tmp_path, lambda h: restored.epoch != old_epoch
            and h.store.high_water("check-gw", restored.epoch) >= 2, both)
    restored.close()
    assert old == before  # 0 reused: nothing new was stored under the old epoch's seqs
    marker = decode_envelope(new[0][1])
    assert marker["event"] == "lossMarker" and marker["data"]["reason"] == "rollback"
    assert (marker["data"]["previous_epoch"], marker["data"]["first_seq"],
            marker["data"]["last_seq"]) == (old_epoch, backed_up + 1, len(before))
    assert [seq for seq, _ in new] == list(range(1, len(new) + 1))
