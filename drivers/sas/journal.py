"""The last frame sent to each address, kept where a killed process cannot lose it.

Why: the implied ACK makes the host's *next* poll decide the fate of the machine's last answer.
After a gateway crash the new process must open with the very poll the machine last saw (an
implied NACK: the machine re-sends its answer) rather than any other (an implied ACK of an answer
that may never have been recorded). The journal is a 4 KiB memory-mapped file with one slot per
SAS address; a record is a memory store, no system call, and the page survives SIGKILL in the page
cache. After a power cut a slot may be stale or torn: SasHost only uses a slot that decodes to a
well-formed poll for that address, and otherwise falls back to a general poll.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

__all__ = ["PollJournal"]

SLOT = 32          # 1 length byte + up to 31 frame bytes
SLOTS = 128        # SAS addresses 0-127


class PollJournal:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size != SLOT * SLOTS:
                os.ftruncate(fd, SLOT * SLOTS)
            self._map = mmap.mmap(fd, SLOT * SLOTS)
        finally:
            os.close(fd)
        self.path = path

    def snapshot(self) -> dict[int, bytes]:
        """address -> the last frame recorded for it (unvalidated; the host checks)."""
        out = {}
        for address in range(1, SLOTS):
            start = address * SLOT
            length = self._map[start]
            if 0 < length < SLOT:
                out[address] = bytes(self._map[start + 1:start + 1 + length])
        return out

    def record(self, frame: bytes) -> None:
        """Remember `frame` for the address it is sent to; call before writing it to the link."""
        address = frame[0] & 0x7F
        if not frame or len(frame) >= SLOT or address == 0:
            return
        start = address * SLOT
        self._map[start] = 0  # a torn write then reads as "empty", never as a wrong frame
        self._map[start + 1:start + 1 + len(frame)] = frame
        self._map[start] = len(frame)

    def close(self) -> None:
        self._map.close()
