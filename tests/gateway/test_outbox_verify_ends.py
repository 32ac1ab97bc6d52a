"""`outbox verify` checks both ends of the chain (the retention anchor, the witness, the
delivered mark) and reports a damaged file instead of crashing."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.logs import configure_logging
from tests.gateway.test_verify import make_outbox_file, public_key_file


@pytest.fixture(autouse=True)
def logs_back():
    yield
    configure_logging("warning", "console", stream=sys.__stderr__)


def run_verify(db: Path, pub: Path, capsys) -> tuple[int, dict]:
    code = main(["outbox", "verify", "--db", str(db), "--public-key", str(pub), "--json"])
    return code, json.loads(capsys.readouterr().out)


def run_verify_file(db: Path, signer) -> dict:
    """`outbox verify --json` on `db` (any outbox file), its report."""
    import contextlib
    import io

    pub = public_key_file(db.parent, signer)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["outbox", "verify", "--db", str(db), "--public-key", str(pub), "--json"])
    return json.loads(out.getvalue())


def sql(db: Path, statement: str, *params) -> None:
    conn = sqlite3.connect(db)
    conn.execute(statement, params)
    conn.commit()
    conn.close()


def test_deleting_the_newest_rows_is_reported_against_the_witness(tmp_path, signer, capsys):
    db = make_outbox_file(tmp_path, signer, 20)
    pub = public_key_file(tmp_path, signer)
    assert run_verify(db, pub, capsys) == (0, {"ok": True, "checked": 20, "first_seq": 1,
                                               "last_seq": 20, "break_at": None, "reason": "",
                                               "kids": [signer.kid]})
    sql(db, "DELETE FROM events WHERE seq > 15")
    code, report = run_verify(db, pub, capsys)
    assert code == 1 and not report["ok"]
    assert "seqs 16..20 are missing" in report["ends"][0]


def test_deleting_the_oldest_rows_is_reported_without_an_anchor(tmp_path, signer, capsys):
    db = make_outbox_file(tmp_path, signer, 20)
    pub = public_key_file(tmp_path, signer)
    sql(db, "DELETE FROM events WHERE seq < 4")
    code, report = run_verify(db, pub, capsys)
    assert code == 1 and "seqs 1..3 are missing" in report["ends"][0]


def test_pruned_rows_are_not_missing_rows(tmp_path, signer, capsys):
    from gateway.outbox.retention import record_anchor

    db = make_outbox_file(tmp_path, signer, 20)
    pub = public_key_file(tmp_path, signer)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("UPDATE meta SET value='10' WHERE key='delivered_seq'")
    record_anchor(conn, 5)
    conn.execute("DELETE FROM events WHERE seq <= 5")
    conn.close()
    assert run_verify(db, pub, capsys)[0] == 0
    sql(db, "DELETE FROM events WHERE seq = 6")  # one more gone: not pruned, missing
    code, report = run_verify(db, pub, capsys)
    assert code == 1 and "seqs 6..6 are missing" in report["ends"][0]


def zero_page(db: Path, page_no: int) -> None:
    with open(db, "r+b") as f:
        f.seek(0, 2)
        page_size = 4096
        f.seek(page_no * page_size)
        f.write(bytes(page_size))


def test_a_zeroed_page_is_reported_not_a_crash(tmp_path, signer, capsys):
    db = make_outbox_file(tmp_path, signer, 600)
    pub = public_key_file(tmp_path, signer)
    pages = db.stat().st_size // 4096
    zero_page(db, pages // 2)
    code, report = run_verify(db, pub, capsys)
    assert code == 1 and not report["ok"]
    assert report.get("unreadable") or "missing" in report["reason"]
