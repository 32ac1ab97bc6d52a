"""drivers/redelivery.py: the one owner of the redelivery rules (sans-I/O)."""

from __future__ import annotations

from drivers.redelivery import RedeliveryBook, Unacknowledged


def _book() -> RedeliveryBook:
    return RedeliveryBook({"p/1": Unacknowledged(7, (0x11, b""), 40),
                           "p/2": Unacknowledged(8, (0x7E, b"\x01"), None),
                           "q/1": Unacknowledged(9, (0x12, b""), 41)})


def test_restart_settles_what_a_later_frame_acknowledged() -> None:
    book = _book()
    # Port p's journal moved past 40: p/1 was acknowledged; p/2 has no counter and stays armed;
    # port q is another line.
    assert book.settle_restart("p", 41) == [("p/1", 7)]
    assert set(book.pending()) == {"p/2", "q/1"}
    assert book.settle_restart("q", 41) == []   # nothing followed q/1's eliciting poll
    assert book.settle_restart("p", None) == []  # no journal: nothing can be settled


def test_first_queued_exception_settles_the_question() -> None:
    book = _book()
    assert book.check("p/2", (0x70, b""), priority=True) is None  # sent ahead of the queue
    assert "p/2" in book.pending()
    assert book.check("p/2", (0x7E, b"\x01"), priority=False) == 8
    assert book.check("p/2", (0x7E, b"\x01"), priority=False) is None  # asked once only
    assert book.check("p/1", (0x12, b""), priority=False) is None      # a new exception
    assert "p/1" not in book.pending()


def test_acknowledged_ends_the_question() -> None:
    book = _book()
    book.acknowledged("q/1", 8)  # an older seq: still in question
    assert "q/1" in book.pending()
    book.acknowledged("q/1", 9)
    assert "q/1" not in book.pending()
