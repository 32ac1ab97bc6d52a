"""Packed BCD, most significant digit first (reference section 5)."""

from __future__ import annotations

from drivers.sas.errors import SasRemoteProtocolError

__all__ = ["BcdError", "decode", "encode"]


class BcdError(SasRemoteProtocolError):
    """A BCD field held a nibble above 9: the machine sent garbage."""


def encode(value: int, length: int) -> bytes:
    """`value` as `length` bytes of packed BCD; raises ValueError if it does not fit."""
    if value < 0 or value >= 10 ** (2 * length):
        raise ValueError(f"{value} does not fit in {length} BCD bytes")
    digits = f"{value:0{2 * length}d}"
    return bytes(int(digits[i:i + 2], 16) for i in range(0, len(digits), 2))


def decode(data: bytes | bytearray) -> int:
    """Integer value of packed BCD `data`; raises BcdError on an invalid nibble."""
    value = 0
    for byte in data:
        high, low = byte >> 4, byte & 0x0F
        if high > 9 or low > 9:
            raise BcdError(f"invalid BCD byte {byte:02X}")
        value = value * 100 + high * 10 + low
    return value
