"""`keys` and `outbox` on the command line: each action's own options, --json honoured where it
is offered and refused where not, and a file this user cannot read is one line, not a
traceback."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from gateway.cli import build_parser, main
from gateway.logs import configure_logging
from tests.gateway.test_verify import make_outbox_file, public_key_file


@pytest.fixture(autouse=True)
def logs_back():
    """main() points structlog at this test's captured stderr, closed afterwards: put it back,
    or a later test's log line fails on a closed file."""
    yield
    configure_logging("warning", "console", stream=sys.__stderr__)


def test_tail_json_is_one_object_per_event(tmp_path: Path, signer, capsys):
    db = make_outbox_file(tmp_path, signer, 5)
    assert main(["outbox", "tail", "-n", "3", "--db", str(db), "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["seq"] for e in events] == [3, 4, 5]
    assert all(e["event"] == "machineException" and len(e["sig"]) == 128 for e in events)


def test_verify_json_is_the_report(tmp_path: Path, signer, capsys):
    db = make_outbox_file(tmp_path, signer, 5)
    pub = public_key_file(tmp_path, signer)
    assert main(["outbox", "verify", "--db", str(db), "--public-key", str(pub), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"ok": True, "checked": 5, "first_seq": 1, "last_seq": 5,
                      "break_at": None, "reason": "", "kids": [signer.kid]}
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM events WHERE seq = 3")
    conn.commit()
    conn.close()
    assert main(["outbox", "verify", "--db", str(db), "--public-key", str(pub), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["break_at"] == 4


def test_json_is_refused_where_not_offered(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["outbox", "export", "--db", str(tmp_path / "x.db"), "--json", "out"])
    assert caught.value.code == 2
    assert "unrecognized arguments: --json" in capsys.readouterr().err


def _help(*argv: str) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])


def test_each_action_lists_only_its_own_options(capsys):
    _help("outbox", "stats")
    stats = capsys.readouterr().out
    assert "--json" in stats and "--follow" not in stats and "--public-key" not in stats
    _help("outbox", "tail")
    tail = capsys.readouterr().out
    assert "--follow" in tail and "--since" not in tail and "--public-key" not in tail
    _help("outbox", "export")
    export = capsys.readouterr().out
    assert "--from" in export and "--follow" not in export and "--json" not in export


def test_keys_subcommands_are_described(capsys):
    _help("keys")
    out = capsys.readouterr().out
    for action, words in (("init", "create a new private key"), ("show", "key id"),
                          ("export-public", "public key for the platform"),
                          ("rotate", "announcing the new one")):
        described = " ".join(out.split(f"    {action}", 1)[1].split()[:12])
        assert words in described, action
    _help("keys", "rotate")
    assert "KEY.next" in capsys.readouterr().out


def test_simulate_says_it_prints_pty_paths(capsys):
    _help()
    assert "prints their paths" in " ".join(capsys.readouterr().out.split())
    _help("simulate")
    assert "pty path" in " ".join(capsys.readouterr().out.split())


def test_not_a_database_is_one_line(tmp_path: Path, capsys):
    junk = tmp_path / "outbox.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    assert main(["outbox", "stats", "--db", str(junk)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a database" in err and "Traceback" not in err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to play a technician")
def test_a_technician_gets_one_line_naming_the_permission(signer):
    # The outbox is 0600, the service user's; a technician in the group runs outbox stats as
    # the troubleshooting table says: it was a traceback.
    base = Path(tempfile.mkdtemp(prefix="outbox-perm-"))
    try:
        os.chmod(base, 0o755)
        db = make_outbox_file(base, signer, 3)
        for path in base.iterdir():
            os.chmod(path, 0o600)
        code = subprocess.run(
            # Python's own library is under /root here: import what the command needs first.
            [sys.executable, "-c", "import os, pwd, sqlite3, sys\n"
             "from gateway.cli import build_parser, main\nimport gateway.outbox\n"
             "build_parser()\nos.setgid(65534)\nos.setuid(65534)\n"
             "sys.exit(main(sys.argv[1:]))",
             "outbox", "stats", "--db", str(db)],
            capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[2])
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=True)
    assert code.returncode == 1
    assert code.stderr.count("\n") == 1, code.stderr
    assert f"cannot read {db}: permission denied (mode 0600, owner root)" in code.stderr
    assert "casino-gateway diag" in code.stderr


def test_export_as_json_lines_and_csv_for_a_range(tmp_path: Path, signer, capsys):
    import csv

    db = make_outbox_file(tmp_path, signer, 8)
    assert main(["outbox", "export", "-", "--db", str(db), "--format", "json",
                 "--from", "3", "--to", "5"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["seq"] for e in events] == [3, 4, 5] and len(events[0]["sig"]) == 128

    out = tmp_path / "range.csv"
    assert main(["outbox", "export", str(out), "--db", str(db), "--format", "csv",
                 "--from", "7"]) == 0
    assert "wrote 2 events" in capsys.readouterr().out
    rows = list(csv.DictReader(out.open()))
    assert [int(r["seq"]) for r in rows] == [7, 8]
    assert rows[0]["event"] == "machineException" and json.loads(rows[0]["data"])
    assert rows[0]["kid"] == signer.kid and len(rows[0]["hash"]) == 64
    assert main(["outbox", "export", str(out), "--db", str(db), "--format", "csv"]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["outbox", "export", "-", "--db", str(db)]) == 2  # the verifiable file is a file
