"""A card reader's bytes for `diag trace` (its `TraceDecoder`, drivers/registry.py), redacted.

`redact` runs on every chunk before it is shown in any form: inside a track every character but
the field separators `^` and `=` (and a first character B, the format code, or E, the reader's
"could not read") becomes `*`, and so does the character after an end sentinel (an LRC says
something about the content); outside tracks only sentinels, line ends and STX/ETX survive (the
status words show as `**` and `***`), so a UID line, a track whose start sentinel was lost, or a
name, never shows -- also when tracing starts in the middle of a track. What is left is the
shape of the traffic: enough to see a reader that sends nothing, garbage, or tracks without
their end. The state (inside a track or not) carries across chunks, as tracks arrive in pieces.
"""

from __future__ import annotations

__all__ = ["CardReaderTraceDecoder"]

_STARTS = frozenset(b"%;")
_END = ord("?")
_KEEP_OUTSIDE = frozenset(b"%;?\r\n\x02\x03")
_KEEP_INSIDE = frozenset(b"^=")
_MASK = ord("*")


class CardReaderTraceDecoder:
    def __init__(self) -> None:
        self._inside = False
        self._after_end = False
        self._first = False

    def sent(self, data: bytes) -> None:
        """Nothing is ever written to a reader."""

    def redact(self, data: bytes) -> bytes:
        out = bytearray()
        for byte in data:
            if byte in _STARTS:
                self._inside, self._after_end, self._first = True, False, True
                out.append(byte)
            elif self._inside:
                if byte == _END:
                    self._inside, self._after_end = False, True
                    out.append(byte)
                elif byte in b"\r\n":
                    self._inside = False
                    out.append(byte)
                else:
                    keep = byte in _KEEP_INSIDE or (self._first and byte in b"BE")
                    out.append(byte if keep else _MASK)
                self._first = False
            elif self._after_end:
                self._after_end = False
                out.append(byte if byte in b"\r\n" else _MASK)
            else:
                out.append(byte if byte in _KEEP_OUTSIDE else _MASK)
        return bytes(out)

    def describe(self, direction: str, data: bytes, *, wakeup: bool = False) -> str:
        parts = [f"{len(data)} bytes from the reader (card data masked)"]
        if b"%" in data:
            parts.append("track 1")
        if b";" in data:
            parts.append("track 2")
        if b"E?" in data:
            parts.append("a read error")
        if b"\r" in data or b"\n" in data:
            parts.append("line end")
        return ", ".join(parts)
