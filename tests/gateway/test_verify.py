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
