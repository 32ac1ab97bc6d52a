"""The Linux PARMRK byte encoding of the ninth bit (docs/sas.md, "Links and the ninth bit"): a byte
with the bit set travels as `FF 00 b`, a literal `FF` as `FF FF`, everything else as itself. Used
both ways on a pseudo-terminal, and on receive from a real UART with INPCK|PARMRK."""

from __future__ import annotations

__all__ = ["ParmrkDecoder", "encode"]

_WAKEUP = 0x100


def encode(words: list[int] | tuple[int, ...] | bytes) -> bytes:
    """Encode 9-bit words (bit 8 = ninth bit) or plain bytes."""
    out = bytearray()
    for w in words:
        if w & _WAKEUP:
            out += bytes((0xFF, 0x00, w & 0xFF))
        elif w == 0xFF:
            out += b"\xff\xff"
        else:
            out.append(w)
    return bytes(out)


class ParmrkDecoder:
    """Stateful decoder: sequences may be split across reads."""

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[int]:
        buf = self._pending + data
        words: list[int] = []
        i = 0
        while i < len(buf):
            b = buf[i]
            if b != 0xFF:
                words.append(b)
                i += 1
                continue
            if i + 1 >= len(buf):
                break
            if buf[i + 1] == 0xFF:
                words.append(0xFF)
                i += 2
            elif buf[i + 1] == 0x00:
                if i + 2 >= len(buf):
                    break
                words.append(_WAKEUP | buf[i + 2])
                i += 3
            else:
                # Not a PARMRK sequence: keep the FF as data.
                words.append(0xFF)
                i += 1
        self._pending = bytearray(buf[i:])
        return words
