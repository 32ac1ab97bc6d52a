"""What a card reader writes on its serial line, cut into typed frames (sans-I/O, bytes in).

Two wire families (docs/cardreader.md, "Wire format"):

* Magnetic stripe, ISO 7811 as readers print it in ASCII: track 1 `%...?` (IATA, characters
  0x20-0x5F), track 2 `;...?` (ABA, characters 0x30-0x3F), each optionally followed by its LRC
  character when the reader is configured to send it (`lrc=True`: then the byte after every `?` is
  the LRC, never guessed -- a track 1 LRC can itself be `%` or `;`). A swipe ends with CR and/or LF.
  A reader that failed a track prints `%E?` or `;E?`. Insert readers add status lines `IN` and
  `OUT` when a card is seated or pulled.
* RFID in serial ASCII mode: one line of hexadecimal UID (4, 7 or 10 bytes), optionally wrapped in
  STX/ETX, ended by CR and/or LF (or ETX).

`Framer.feed(data)` returns the frames completed so far; bytes may arrive in any split. Noise is
never an exception: it comes back as `Noise` (skipped bytes) or `BadTrack` (a frame that started
and went wrong), and the framer resynchronises on the next sentinel or line end. The only
exception this module raises is `CardReaderError` (for a caller bug: an unknown reader kind).
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.cardreader.errors import CardReaderError

__all__ = ["KINDS", "BadTrack", "EndOfLine", "Frame", "Framer", "Noise", "Status", "Track",
           "Uid", "lrc_char"]

KINDS = ("swipe", "insert", "rfid")

# ISO 7811-2: track 1 holds at most 79 characters, track 2 at most 40 (sentinels and LRC
# included); a longer run is noise that happened to start with a sentinel.
TRACK_MAX = {1: 79, 2: 40}
_START = {ord("%"): 1, ord(";"): 2}
_END = ord("?")
_EOL = frozenset(b"\r\n")
_STX, _ETX = 0x02, 0x03
_CHARSET = {1: range(0x20, 0x60), 2: range(0x30, 0x40)}
_BASE = {1: 0x20, 2: 0x30}
_STATUS_MAX = 8
_UID_MAX = 32
UID_HEX_LENGTHS = frozenset({8, 14, 20})


@dataclass(frozen=True, slots=True)
class Track:
    """One track between its sentinels (sentinels and LRC stripped); `error` when the reader
    itself reported a failed read (`%E?`, `;E?`)."""

    number: int
    content: str

    @property
    def error(self) -> bool:
        return self.content == "E"


@dataclass(frozen=True, slots=True)
class BadTrack:
    """A frame that started and could not be completed: `reason` says why (never the content)."""

    number: int
    reason: str


@dataclass(frozen=True, slots=True)
class Uid:
    """An RFID UID line, upper-case hex."""

    hex: str


@dataclass(frozen=True, slots=True)
class Status:
    """An insert reader's status line: "IN" or "OUT"."""

    word: str


@dataclass(frozen=True, slots=True)
class EndOfLine:
    """CR or LF outside a frame: a swipe's tracks are complete."""


@dataclass(frozen=True, slots=True)
class Noise:
    """`count` bytes that belonged to no frame (line noise, a reader's banner, a half frame)."""

    count: int


Frame = Track | BadTrack | Uid | Status | EndOfLine | Noise


def lrc_char(number: int, content: str) -> int:
    """The LRC character ISO 7811 puts after the end sentinel: the XOR of every character's
    value (start sentinel to end sentinel, in the track's own 6- or 4-bit alphabet)."""
    base = _BASE[number]
    start = b"%" if number == 1 else b";"
    lrc = 0
    for byte in start + content.encode("ascii") + b"?":
        lrc ^= byte - base
    return lrc + base


class Framer:
    """Byte-at-a-time state machine; `kind` is one of KINDS, `lrc` whether the reader sends one."""

    def __init__(self, kind: str, *, lrc: bool = False) -> None:
        if kind not in KINDS:
            raise CardReaderError(f"unknown reader kind {kind!r}; one of {', '.join(KINDS)}")
        self.kind = kind
        self.lrc = lrc
        self._track = 0           # track being read (0: none)
        self._buf = bytearray()   # its characters, or a status/UID line
        self._await_lrc = False
        self._noise = 0
        self._skipping = False    # after a bad frame: drop bytes until a sentinel or line end
        self._out: list[Frame] = []

    @property
    def busy(self) -> bool:
        """Inside a frame: bytes are still expected to complete it."""
        return bool(self._track or self._buf or self._await_lrc)

    def feed(self, data: bytes) -> list[Frame]:
        """Frames completed by `data` (possibly none); noise is reported when a frame begins."""
        step = self._rfid_byte if self.kind == "rfid" else self._stripe_byte
        for byte in data:
            step(byte)
        out, self._out = self._out, []
        return out

    def flush(self) -> list[Frame]:
        """The line went quiet: a frame still open is a bad one, pending noise is reported."""
        if self._await_lrc:
            self._bad("truncated: no LRC after the end sentinel")
        elif self._track:
            self._bad("truncated: no end sentinel")
        elif self._buf:
            self._noise += len(self._buf)
            self._buf.clear()
        self._skipping = False
        self._emit_noise()
        out, self._out = self._out, []
        return out

    # -- magnetic stripe -------------------------------------------------------------------------

    def _stripe_byte(self, byte: int) -> None:
        if self._await_lrc:
            self._await_lrc = False
            number, content = self._track, self._buf.decode("ascii")
            self._reset()
            if byte != lrc_char(number, content):
                self._out.append(BadTrack(number, "LRC mismatch"))
            else:
                self._out.append(Track(number, content))
            return
        if byte in _START:
            # Sentinels are reserved characters: one inside a track means its end was lost
            # (a track 1 whose `?` dropped out, then track 2): resynchronise on it.
            if self._track:
                self._bad("truncated: a new start sentinel")
            self._begin(_START[byte])
            return
        if byte in _EOL:
            if self._track:
                self._bad("truncated: line ended inside a track")
            elif self._buf:
                self._status_line()
            self._skipping = False
            self._emit_noise()
            self._out.append(EndOfLine())
            return
        if self._track:
            self._track_byte(byte)
            return
        if self._skipping:
            self._noise += 1
        elif self.kind == "insert" and 0x41 <= byte <= 0x5A and len(self._buf) < _STATUS_MAX:
            self._buf.append(byte)
        else:
            self._noise += len(self._buf) + 1
            self._buf.clear()

    def _track_byte(self, byte: int) -> None:
        number = self._track
        if byte == _END:
            if self.lrc:
                self._await_lrc = True
            else:
                content = self._buf.decode("ascii")
                self._reset()
                self._out.append(Track(number, content))
            return
        # `E` alone is the reader's "could not read this track" (`%E?`, `;E?`), though E is not
        # in track 2's alphabet: allowed first, and then only the end sentinel may follow.
        error_marker = byte == ord("E") and not self._buf
        if (byte not in _CHARSET[number] and not error_marker) or (
                number == 2 and self._buf == b"E"):
            self._bad(f"character {byte:#04x} outside the track {number} alphabet")
            return
        self._buf.append(byte)
        if len(self._buf) + 2 + self.lrc > TRACK_MAX[number]:
            self._bad(f"longer than the {TRACK_MAX[number]} characters track {number} holds")

    def _status_line(self) -> None:
        word = self._buf.decode("ascii")
        self._buf.clear()
        if word in ("IN", "OUT"):
            self._emit_noise()
            self._out.append(Status(word))
        else:
            self._noise += len(word)

    def _begin(self, number: int) -> None:
        self._noise += len(self._buf)
        self._buf.clear()
        self._skipping = False
        self._emit_noise()
        self._track = number

    def _bad(self, reason: str) -> None:
        number = self._track
        self._reset()
        self._skipping = True
        self._out.append(BadTrack(number, reason))

    def _reset(self) -> None:
        self._track = 0
        self._await_lrc = False
        self._buf.clear()

    def _emit_noise(self) -> None:
        if self._noise:
            self._out.append(Noise(self._noise))
            self._noise = 0

    # -- RFID ------------------------------------------------------------------------------------

    def _rfid_byte(self, byte: int) -> None:
        if byte == _STX:
            self._noise += len(self._buf)
            self._buf.clear()
            self._skipping = False
            return
        if byte in _EOL or byte == _ETX:
            if self._buf:
                self._uid_line()
            self._skipping = False
            self._emit_noise()
            return
        if self._skipping:
            self._noise += 1
            return
        self._buf.append(byte)
        if len(self._buf) > _UID_MAX:
            self._noise += len(self._buf)
            self._buf.clear()
            self._skipping = True

    def _uid_line(self) -> None:
        raw = bytes(self._buf)
        self._buf.clear()
        text = raw.decode("ascii", "replace").strip(" ")
        if len(text) in UID_HEX_LENGTHS and all(c in "0123456789abcdefABCDEF" for c in text):
            self._emit_noise()
            self._out.append(Uid(text.upper()))
        else:  # RFID readers report no failed reads: a line that is no UID is noise
            self._noise += len(raw)
            self._emit_noise()
