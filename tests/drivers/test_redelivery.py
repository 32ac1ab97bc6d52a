"""drivers/redelivery.py: the one owner of the redelivery rules (sans-I/O)."""

from __future__ import annotations

from drivers.redelivery import RedeliveryBook, ResetWatch, Unacknowledged


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


def test_reset_watch_a_machine_that_answered_after_the_ack_heard_it() -> None:
    watch = ResetWatch()
    watch.acknowledging((0x7F, b"\x00\x00\x05\x00"), ack_frame=10)
    watch.frame_sent(10, to_this_machine=False)  # the ACK itself (the sync GP) counts not
    watch.frame_sent(11, to_this_machine=True)
    watch.heard()
    watch.fell_silent()
    assert not watch.is_resend((0x7F, b"\x00\x00\x05\x00"), priority=False)  # a new one


def test_reset_watch_resync_and_silence_make_the_same_key_a_resend() -> None:
    watch = ResetWatch()
    watch.acknowledging((0x7F, b"\x00\x00\x05\x00"), ack_frame=10)
    watch.frame_sent(11, to_this_machine=True)
    watch.fell_silent()
    watch.frame_sent(12, to_this_machine=False)  # the sync GP that resynchronises it
    watch.heard()  # bytes after a foreign frame prove nothing
    assert watch.is_resend((0x7F, b""), priority=False)  # bare: normal mode after the reset
    assert watch.unconfirmed is None  # settled


def test_reset_watch_needs_both_a_silence_and_a_resync() -> None:
    for silent, foreign in ((True, False), (False, True)):
        watch = ResetWatch()
        watch.acknowledging((0x11, b""), ack_frame=3)
        if silent:
            watch.fell_silent()
        watch.frame_sent(4, to_this_machine=not foreign)
        assert not watch.is_resend((0x11, b""), priority=False)


def test_reset_watch_a_priority_exception_leaves_the_question_open() -> None:
    watch = ResetWatch()
    watch.acknowledging((0x51, b""), ack_frame=3)
    watch.fell_silent()
    watch.frame_sent(4, to_this_machine=False)
    assert not watch.is_resend((0x70, b""), priority=True)  # sent ahead of the queue
    assert watch.is_resend((0x51, b""), priority=False)
    watch.acknowledging((0x51, b""), ack_frame=9)
    watch.fell_silent()
    watch.frame_sent(10, to_this_machine=False)
    assert not watch.is_resend((0x52, b""), priority=False)
    assert watch.unconfirmed is None  # a different key settles it as new
