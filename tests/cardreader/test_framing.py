"""The reader framer gets every framing whole, byte by byte, split at every point and after
garbage, and must cut it the same way each time; a fuzz shows it only ever returns frames."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.cardreader.errors import CardReaderError
from drivers.cardreader.framing import (
    BadTrack,
    EndOfLine,
    Frame,
    Framer,
    Noise,
    Status,
    Track,
    Uid,
    lrc_char,
)

T1 = "B6012345678901234^PLAYER/ANNA^2812101000000"
T2 = "6012345678901234=28121010000000"


def _lrc(number: int, content: str) -> bytes:
    return bytes([lrc_char(number, content)])


# (kind, lrc, wire bytes, frames expected): every framing the driver speaks.
FRAMINGS = [
    ("swipe", False, f"%{T1}?;{T2}?\r\n".encode(),
     [Track(1, T1), Track(2, T2), EndOfLine(), EndOfLine()]),
    ("swipe", False, f";{T2}?\n".encode(), [Track(2, T2), EndOfLine()]),
    ("swipe", False, f"%{T1}?\r".encode(), [Track(1, T1), EndOfLine()]),
    ("swipe", True, f"%{T1}?".encode() + _lrc(1, T1) + f";{T2}?".encode() + _lrc(2, T2) + b"\r\n",
     [Track(1, T1), Track(2, T2), EndOfLine(), EndOfLine()]),
    ("swipe", False, b"%E?;E?\r\n", [Track(1, "E"), Track(2, "E"), EndOfLine(), EndOfLine()]),
    ("insert", False, f"IN\r\n;{T2}?\r\nOUT\r\n".encode(),
     [Status("IN"), EndOfLine(), EndOfLine(), Track(2, T2), EndOfLine(), EndOfLine(),
      Status("OUT"), EndOfLine(), EndOfLine()]),
    ("rfid", False, b"04A1B2C3D4E5F6\r\n", [Uid("04A1B2C3D4E5F6")]),
    ("rfid", False, b"\x02deadbeef\x03", [Uid("DEADBEEF")]),
    ("rfid", False, b"0123456789ABCDEF0123\n", [Uid("0123456789ABCDEF0123")]),
]
IDS = [f"{kind}-{n}" for n, (kind, *_rest) in enumerate(FRAMINGS)]


def _feed_all(framer: Framer, pieces: list[bytes]) -> list[Frame]:
    out: list[Frame] = []
    for piece in pieces:
        out += framer.feed(piece)
    return out


@pytest.mark.parametrize(("kind", "lrc", "wire", "expected"), FRAMINGS, ids=IDS)
def test_whole(kind: str, lrc: bool, wire: bytes, expected: list[Frame]) -> None:
    assert Framer(kind, lrc=lrc).feed(wire) == expected


@pytest.mark.parametrize(("kind", "lrc", "wire", "expected"), FRAMINGS, ids=IDS)
def test_byte_by_byte(kind: str, lrc: bool, wire: bytes, expected: list[Frame]) -> None:
    assert _feed_all(Framer(kind, lrc=lrc), [wire[i:i + 1] for i in range(len(wire))]) == expected


@pytest.mark.parametrize(("kind", "lrc", "wire", "expected"), FRAMINGS, ids=IDS)
def test_split_at_every_point(kind: str, lrc: bool, wire: bytes, expected: list[Frame]) -> None:
    for cut in range(len(wire) + 1):
        assert _feed_all(Framer(kind, lrc=lrc), [wire[:cut], wire[cut:]]) == expected, cut


GARBAGE = [b"\x00\xff\x80", b"noise", b"%12", b";99=", b"?", b"\x02zz", b"E"]


@pytest.mark.parametrize("garbage", GARBAGE)
@pytest.mark.parametrize(("kind", "lrc", "wire", "expected"), FRAMINGS, ids=IDS)
def test_after_garbage(kind: str, lrc: bool, wire: bytes, expected: list[Frame],
                       garbage: bytes) -> None:
    # Garbage then a line end: whatever the garbage became, the real framing after it is intact.
    frames = Framer(kind, lrc=lrc).feed(garbage + b"\r\n" + wire)
    assert frames[-len(expected):] == expected
    assert all(isinstance(f, Noise | BadTrack | EndOfLine) for f in frames[:-len(expected)])


def test_a_sentinel_resynchronises_mid_track() -> None:
    # Track 1's end sentinel was lost: the track is bad, track 2 after it still reads.
    frames = Framer("swipe").feed(f"%{T1};{T2}?\r\n".encode())
    assert frames[:2] == [BadTrack(1, "truncated: a new start sentinel"), Track(2, T2)]


@pytest.mark.parametrize(("wire", "reason"), [
    (f";{T2}?".encode() + bytes([lrc_char(2, T2) ^ 1]), "LRC mismatch"),
    (b";123\x7f5?", "character 0x7f outside the track 2 alphabet"),
    (b";E12?", "character 0x31 outside the track 2 alphabet"),
    (b";" + b"1" * 40 + b"?", "longer than the 40 characters track 2 holds"),
    (b"%B123\r\n", "truncated: line ended inside a track"),
])
def test_bad_tracks_say_why_never_what(wire: bytes, reason: str) -> None:
    frames = Framer("swipe", lrc=wire.startswith(b";6")).feed(wire)
    bad = [f for f in frames if isinstance(f, BadTrack)]
    assert bad and bad[0].reason == reason
    assert "123" not in reason and "6012" not in reason


def test_flush_ends_an_open_frame() -> None:
    framer = Framer("swipe", lrc=True)
    assert framer.feed(f";{T2}?".encode()) == [] and framer.busy
    assert framer.flush() == [BadTrack(2, "truncated: no LRC after the end sentinel")]
    assert not framer.busy


def test_unknown_kind_is_a_typed_error() -> None:
    with pytest.raises(CardReaderError):
        Framer("barcode")


FRAME_TYPES = (Track, BadTrack, Uid, Status, EndOfLine, Noise)


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["swipe", "insert", "rfid"]), lrc=st.booleans(),
       data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=8))
def test_fuzz_only_frames_and_split_invariant(kind: str, lrc: bool, data: bytes,
                                              cuts: list[int]) -> None:
    whole = Framer(kind, lrc=lrc)
    expected = whole.feed(data) + whole.flush()
    assert all(isinstance(f, FRAME_TYPES) for f in expected)
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    split = Framer(kind, lrc=lrc)
    assert _feed_all(split, pieces) + split.flush() == expected


@settings(max_examples=200, deadline=None)
@given(data=st.lists(st.sampled_from([b"%", b";", b"?", b"E", b"B", b"^", b"=", b"\r", b"\n",
                                      b"1", b"IN", b"OUT", b"\x02", b"\x03", b"\xff"]),
                     max_size=80))
def test_fuzz_sentinel_soup(data: list[bytes]) -> None:
    # Random bytes rarely form sentinels; this soup is made of them.
    for kind in ("swipe", "insert", "rfid"):
        for lrc in (False, True):
            framer = Framer(kind, lrc=lrc)
            frames = framer.feed(b"".join(data)) + framer.flush()
            assert all(isinstance(f, FRAME_TYPES) for f in frames)
            for f in frames:
                if isinstance(f, Track):
                    assert "%" not in f.content and "?" not in f.content
