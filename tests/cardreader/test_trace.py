"""`diag trace` of a reader shows the shape of the traffic, never a card number, UID or name,
however the bytes are cut into chunks."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.cardreader.trace import CardReaderTraceDecoder
from drivers.sim.cardreader import SimCard, rfid_line, swipe_bytes

ANNA = SimCard("6012345678901234", "PLAYER/ANNA", "04A1B2C3D4E5F6")
WIRE = (b"IN\r\n" + swipe_bytes(ANNA, lrc=True) + b"OUT\r\n" + b"%E?;E?\r\n" + rfid_line(ANNA)
        + b"B6012345678901234^PLAYER/ANNA^28?\r\n")  # the last: a track whose `%` was lost


def _redact_in(pieces: list[bytes]) -> bytes:
    decoder = CardReaderTraceDecoder()
    return b"".join(decoder.redact(p) for p in pieces)


def test_shape_kept_content_masked() -> None:
    shown = _redact_in([WIRE])
    assert shown.startswith(b"**\r\n%B****************^***********^*************?*;")
    assert b"***\r\n%E?;E?\r\n" in shown
    assert set(shown) <= set(b"%;?^=*\r\nBE")
    decoder = CardReaderTraceDecoder()
    text = decoder.describe("rx", decoder.redact(b"%E?;E?\r\n"))
    assert "track 1" in text and "track 2" in text and "a read error" in text


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, len(WIRE)), max_size=12))
def test_no_secret_in_any_split(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    pieces = [WIRE[a:b] for a, b in zip([0, *points], [*points, len(WIRE)], strict=True)]
    shown = _redact_in(pieces)
    assert shown == _redact_in([WIRE]) and len(shown) == len(WIRE)
    for secret in (ANNA.number, ANNA.uid, "ANNA", ANNA.number[-4:], ANNA.uid[-4:]):
        assert secret.encode() not in shown
    assert not any(chr(b).isdigit() for b in shown)


def test_tracing_from_the_middle_of_a_track_shows_nothing() -> None:
    # `diag trace` may start at any byte: the decoder then has not seen the start sentinel.
    start = WIRE.index(b"PLAYER")
    shown = CardReaderTraceDecoder().redact(WIRE[start:])
    assert not any(chr(b).isalnum() and chr(b) not in "BE" for b in shown)
    assert b"B" not in shown[:shown.index(b"%")]
