"""A new epoch's loss count (docs/uplink-protocol.md G-EPOCH-1): the seqs of `previous_epoch`'s
range that no salvaged event carries. Salvaged rows of another epoch (a restored file holding an
older epoch than the witness) carry none of them, whatever their seq numbers."""

from __future__ import annotations

from gateway.outbox.epochs import EpochChange, first_draft, missing_count

WITNESSED, RESTORED = "00000000000000aa", "00000000000000bb"


def _row(epoch: str, seq: int) -> dict:
    return {"epoch": epoch, "seq": seq}


def test_salvaged_rows_of_another_epoch_do_not_reduce_the_count() -> None:
    change = EpochChange("rollback", WITNESSED, 1, 5, "an older file restored")
    salvaged = [_row(RESTORED, seq) for seq in range(1, 6)]
    assert missing_count(change, salvaged) == 5
    assert first_draft(change, salvaged).type == "lossMarker"


def test_salvaged_rows_of_the_epoch_itself_do() -> None:
    change = EpochChange("database-corrupt", WITNESSED, 4, 6, "unreadable")
    assert missing_count(change, [_row(WITNESSED, 4), _row(WITNESSED, 6)]) == 1
    assert missing_count(change, [_row(WITNESSED, s) for s in (4, 5, 6)]) == 0
