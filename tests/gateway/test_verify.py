"""`verify` must catch an edited row, a deleted row and a swapped pair of rows."""

from __future__ import annotations

import msgpack
import pytest

from gateway.signing import GENESIS, decode_envelope, key_id, seal
from gateway.verify import verify_events


@pytest.fixture
def rows(signer):
    out, prev = [], GENESIS
    for seq in range(1, 11):
        sealed, body = seal({"event": "doorOpened", "seq": seq, "data": {"n": seq}}, prev, signer)
        prev = sealed["hash"]
        out.append((seq, body))
    return out


def keys(signer):
    return {key_id(signer.verify_key): signer.verify_key}


def test_intact_chain_verifies(rows, signer):
    report = verify_events(rows, keys(signer))
    assert report.ok and report.checked == 10 and (report.first_seq, report.last_seq) == (1, 10)


def test_edited_row_is_caught(rows, signer):
    env = decode_envelope(rows[4][1])
    env["data"]["n"] = 500
    rows[4] = (5, msgpack.packb(env, use_bin_type=True))
    report = verify_events(rows, keys(signer))
    assert report.break_at == 5 and "bad-hash" in report.reason


def test_deleted_row_is_caught(rows, signer):
    del rows[3]
    report = verify_events(rows, keys(signer))
    assert report.break_at == 5 and "gap" in report.reason


def test_swapped_rows_are_caught(rows, signer):
    (s3, b3), (s4, b4) = rows[2], rows[3]
    rows[2], rows[3] = (s3, b4), (s4, b3)
    report = verify_events(rows, keys(signer))
    assert report.break_at == 3


def test_deleted_and_renumbered_row_is_caught(rows, signer):
    # An attacker deletes seq 4 and renumbers the rest: the row keys no longer match the events.
    tampered = [(i + 1, body) for i, (_, body) in enumerate(rows[:3] + rows[4:])]
    assert verify_events(tampered, keys(signer)).break_at == 4


# -- export files and replay by time ---------------------------------------------------------------

import io  # noqa: E402
import sqlite3  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import nacl.signing  # noqa: E402
import trio  # noqa: E402

from gateway.cli import build_parser  # noqa: E402
from gateway.events import system_draft  # noqa: E402
from gateway.outbox import Outbox, OutboxSettings, iter_time_range, open_readonly  # noqa: E402
from gateway.outbox_cli import progress_bar  # noqa: E402
from gateway.signing import Signer  # noqa: E402


def main(argv: list[str]) -> int:
    """The CLI without gateway.cli.main's logging set-up (it would outlive capsys's stream)."""
    args = build_parser().parse_args(argv)
    return args.func(args)


def make_outbox_file(tmp_path: Path, signer, count: int) -> Path:
    db = tmp_path / "outbox.db"

    async def fill() -> None:
        outbox = Outbox.open(OutboxSettings(path=db, gateway_id="gw-x"), signer)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(outbox.run_writer)
                for i in range(count):
                    await outbox.append(system_draft("machineException", {"code": i},
                                                     now=time.time()))
                nursery.cancel_scope.cancel()
        outbox.close()

    trio.run(fill)
    return db


def public_key_file(tmp_path: Path, signer) -> Path:
    pub = tmp_path / "gw.pub"
    pub.write_text(f"{bytes(signer.verify_key).hex()} {signer.kid}\n")
    return pub


def test_export_range_verifies_alone(tmp_path, signer, capsys):
    db = make_outbox_file(tmp_path, signer, 30)
    pub = public_key_file(tmp_path, signer)
    out = tmp_path / "audit.export"
    assert main(["outbox", "export", "--db", str(db), "--from", "11", "--to", "20", str(out)]) == 0
    assert "exported 10 events (seq 11..20)" in capsys.readouterr().out
    db.unlink()  # the auditor has only the export and the public key
    assert main(["outbox", "verify", str(out), "--public-key", str(pub)]) == 0
    assert "OK: 10 events verified (seq 11..20)" in capsys.readouterr().out
    conn = sqlite3.connect(out)
    meta = dict(conn.execute("SELECT key, value FROM export_meta"))
    keys = dict(conn.execute("SELECT kid, public_key FROM keys"))
    conn.close()
    assert '"gw-x"' in meta["gateway_id"] and len(meta["epoch"]) == 18
    assert keys == {}  # no key given to export: it names kids, the auditor brings the key


def test_export_with_key_embeds_it_and_verify_warns_when_using_it(tmp_path, signer, capsys):
    db = make_outbox_file(tmp_path, signer, 5)
    pub = public_key_file(tmp_path, signer)
    out = tmp_path / "all.export"
    assert main(["outbox", "export", "--db", str(db), "--public-key", str(pub), str(out)]) == 0
    capsys.readouterr()
    assert main(["outbox", "verify", str(out)]) == 0
    captured = capsys.readouterr()
    assert "OK: 5 events" in captured.out and "WARNING" in captured.err


def test_tampered_or_truncated_export_is_caught(tmp_path, signer, capsys):
    db = make_outbox_file(tmp_path, signer, 12)
    pub = public_key_file(tmp_path, signer)
    out = tmp_path / "x.export"
    assert main(["outbox", "export", "--db", str(db), "--from", "3", str(out)]) == 0
    conn = sqlite3.connect(out, isolation_level=None)
    conn.execute("DELETE FROM events WHERE seq = 12")  # the last row: no later link notices
    conn.close()
    capsys.readouterr()
    assert main(["outbox", "verify", str(out), "--public-key", str(pub)]) == 1
    assert "BROKEN" in capsys.readouterr().out
    # The first row re-linked to a different predecessor is caught by the stated prev_hash.
    out2 = tmp_path / "y.export"
    assert main(["outbox", "export", "--db", str(db), "--from", "3", str(out2)]) == 0
    conn = sqlite3.connect(out2, isolation_level=None)
    conn.execute("UPDATE export_meta SET value = ? WHERE key = 'first_prev_hash'",
                 ('"' + "00" * 32 + '"',))
    conn.close()
    capsys.readouterr()
    assert main(["outbox", "verify", str(out2), "--public-key", str(pub)]) == 1
    assert "bad-link" in capsys.readouterr().out


def test_verify_with_the_wrong_public_key_fails(tmp_path, signer, capsys):
    db = make_outbox_file(tmp_path, signer, 3)
    stranger = Signer(nacl.signing.SigningKey.generate())
    pub = public_key_file(tmp_path, stranger)
    assert main(["outbox", "verify", str(db), "--public-key", str(pub)]) == 1
    assert "unknown-key" in capsys.readouterr().out


def test_replay_by_time_range_finds_the_window(tmp_path, signer, capsys):
    db = make_outbox_file(tmp_path, signer, 50)
    conn = sqlite3.connect(db, isolation_level=None)
    base = 1_800_000_000.0
    conn.execute("UPDATE events SET captured_at = ? + seq * 60", (base,))
    conn.execute("DELETE FROM events WHERE seq BETWEEN 20 AND 24")  # gaps (pruned or quarantined)
    conn.close()
    ro = open_readonly(db)
    seqs = [seq for seq, _ in iter_time_range(ro, base + 10 * 60, base + 30 * 60, page=7)]
    assert seqs == [s for s in range(10, 30) if not 20 <= s <= 24]
    assert [s for s, _ in iter_time_range(ro, base + 22 * 60, base + 26 * 60)] == [25]
    assert list(iter_time_range(ro, base + 999 * 60, base + 1000 * 60)) == []
    ro.close()
    assert main(["outbox", "replay", "--db", str(db), "--since", "2027-01-15T08:10:00Z",
                 "--until", "2027-01-15T08:13:00Z", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [int(line.split('"seq": ')[1].split(",")[0]) for line in lines] == [10, 11, 12]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_draws_on_a_tty_only():
    assert progress_bar(100, io.StringIO()) is None
    stream = Tty()
    show = progress_bar(200, stream)
    show(100)
    assert "50%" in stream.getvalue() and "100/200" in stream.getvalue()


def test_tail_follow_prints_what_another_process_commits(tmp_path, signer):
    """`outbox tail -f` wakes on the WAL file (inotify, with a 1 s re-check): each commit made
    by the writer here shows up in the follower process, and nothing is printed twice."""
    import subprocess
    import sys

    db = make_outbox_file(tmp_path, signer, 3)
    follower = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "outbox", "tail", "-f", "-n", "2", "--db", str(db)],
        stdout=subprocess.PIPE, text=True)
    assert follower.stdout is not None

    async def line() -> str:
        return await trio.to_thread.run_sync(follower.stdout.readline, abandon_on_cancel=True)

    async def follow() -> None:
        with trio.fail_after(20):
            assert [(await line()).split()[0] for _ in range(2)] == ["2", "3"]
            outbox = Outbox.open(OutboxSettings(path=db, gateway_id="gw-x"), signer)
            async with trio.open_nursery() as nursery:
                await nursery.start(outbox.run_writer)
                for _ in range(2):  # two separate commits, each seen before the next
                    seq = await outbox.append(system_draft("machineException", {"code": 9},
                                                           now=time.time()))
                    assert (await line()).split()[0] == str(seq)
                nursery.cancel_scope.cancel()
            outbox.close()

    try:
        trio.run(follow)
    finally:
        follower.kill()
        follower.wait()
