"""CRC-16/KERMIT as used by SAS (reference section 7): reflected 0x8408, seed 0, sent low byte first."""

from __future__ import annotations

__all__ = ["append_crc", "check_crc", "crc16"]


def _make_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_TABLE = _make_table()


def crc16(data: bytes | bytearray, crc: int = 0) -> int:
    """CRC of `data`, continuing from `crc` (0 starts fresh)."""
    for byte in data:
        crc = (crc >> 8) ^ _TABLE[(crc ^ byte) & 0xFF]
    return crc


def append_crc(data: bytes) -> bytes:
    """`data` followed by its CRC, low byte first, as it goes on the wire."""
    return data + crc16(data).to_bytes(2, "little")


def check_crc(frame: bytes | bytearray) -> bool:
    """True if the last two bytes of `frame` are the CRC of the rest (the whole frame CRCs to 0)."""
    return len(frame) >= 3 and crc16(frame) == 0
