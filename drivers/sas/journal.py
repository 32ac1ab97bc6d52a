"""The last frame sent to each address, and a line-wide frame counter, kept where a killed process
cannot lose them.

Why: the implied ACK makes the host's *next* poll decide the fate of the machine's last answer.
After a gateway crash the new process must open with the very poll the machine last saw (an
implied NACK: the machine re-sends its answer) rather than any other (an implied ACK of an answer
that may never have been recorded). And it must know whether the machine was *told* about the
last exception it recorded: any frame on the line after the poll that elicited an exception is
its implied ACK. So every frame gets the next value of a counter for the whole line, stored with
the frame; the driver hands the counter of the eliciting poll to the sink with the exception,
the outbox commits it with the event, and at start-up a redelivery is expected only if the
journal's counter still equals it (docs/sas.md, "Restart safety").

The journal is a memory-mapped file with one slot per SAS address; a record is memory stores, no
system call, and the page survives SIGKILL in the page cache. Each slot holds two halves and a
selector byte: a record writes the half not in use (counter, length, frame) and then flips the
selector, a single-byte store, so a process killed at any instruction leaves either the old
(counter, frame) or the new one, never a mix. After a power cut a slot may be stale or torn:
SasHost only uses a frame that decodes to a well-formed poll for that address, and otherwise
falls back to a general poll.

Beside the frames the journal keeps each machine's identity (serial, asset, game) as discovery
last confirmed it, in `<journal>.identity` (JSON, replaced atomically; written only when an
identity changes, which is rare). A machine swapped while the gateway was stopped is then told
apart at the first discovery after start: SasHost compares and reports `machineReplaced`
(docs/sas.md, "Port lifecycle"). A file that cannot be read is taken as no identity known.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path

__all__ = ["Identity", "JournalEntry", "PollJournal"]

FRAME_MAX = 31                 # longest frame kept (the longest poll the host sends is shorter)
HALF = 8 + 1 + FRAME_MAX       # counter (u64, little-endian), length, frame
SLOT = 96                      # selector byte, padding, two halves at 8 and 8 + HALF
SLOTS = 128                    # SAS addresses 0-127
SIZE = SLOT * SLOTS
_HALVES = (8, 8 + HALF)
_COUNTER = struct.Struct("<Q")

JournalEntry = tuple[int, bytes]  # (line counter when recorded, frame)
Identity = tuple[str | None, str | None, str | None]  # (serial, asset, game); None: not reported


class PollJournal:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size != SIZE:
                # A journal of another layout (an older release) is not read: the first poll to
                # each machine is then a plain GP, as with no journal at all.
                os.ftruncate(fd, 0)
                os.ftruncate(fd, SIZE)
            self._map = mmap.mmap(fd, SIZE)
        finally:
            os.close(fd)
        self.path = path
        entries = self.entries()
        #: The counter of the last frame recorded on this line (0: none yet).
        self.counter = max((c for c, _ in entries.values()), default=0)
        #: `counter` as found at open: what the previous process last sent on this line.
        self.counter_at_open = self.counter
        self._identity_path = path.with_name(path.name + ".identity")
        self._identities = _read_identities(self._identity_path)

    def identities(self) -> dict[int, Identity]:
        """address -> the identity discovery last confirmed for the machine there."""
        return dict(self._identities)

    def record_identity(self, address: int, identity: Identity) -> None:
        """Keep `identity` for `address` (durably: written, fsynced, renamed into place)."""
        if self._identities.get(address) == identity:
            return
        self._identities[address] = identity
        body = json.dumps({str(a): list(i) for a, i in sorted(self._identities.items())})
        tmp = self._identity_path.with_name(self._identity_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, body.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._identity_path)

    def entries(self) -> dict[int, JournalEntry]:
        """address -> (counter, last frame recorded for it); the frame is empty if it was too
        long to keep, and unvalidated otherwise (the host checks). Address 0 holds broadcasts."""
        out = {}
        for address in range(SLOTS):
            start = address * SLOT
            selector = self._map[start]
            if selector not in (1, 2):
                continue
            half = start + _HALVES[selector - 1]
            (counter,) = _COUNTER.unpack_from(self._map, half)
            length = self._map[half + 8]
            out[address] = (counter, bytes(self._map[half + 9:half + 9 + min(length, FRAME_MAX)]))
        return out

    def snapshot(self) -> dict[int, bytes]:
        """address -> the last frame recorded for it (machine addresses with a kept frame)."""
        return {address: frame for address, (_, frame) in self.entries().items()
                if address and frame}

    def last_address(self) -> int | None:
        """The address of the last frame recorded on the line (its answer, if any, is the only
        one a restart probe can still NACK: every later frame on the line ACKed the others)."""
        entries = self.entries()
        if not entries:
            return None
        return max(entries, key=lambda a: entries[a][0])

    def record(self, frame: bytes) -> int:
        """Count `frame` and remember it for the address it is sent to; return its counter.
        Call before writing it to the link.

        The counter counts changes of the line's last frame: an identical retransmission of
        the last frame (a retry, or the restart probe repeating it) is an implied NACK, not an
        ACK, and keeps the counter, so an exception it makes the machine re-send is still known
        to be unacknowledged should the process die again before the real ACK."""
        if not frame:
            return self.counter
        start = (frame[0] & 0x7F) * SLOT
        selector = self._map[start]
        if selector in (1, 2) and len(frame) <= FRAME_MAX:
            half = start + _HALVES[selector - 1]
            if (_COUNTER.unpack_from(self._map, half)[0] == self.counter
                    and self._map[half + 8] == len(frame)
                    and self._map[half + 9:half + 9 + len(frame)] == frame):
                return self.counter
        self.counter += 1
        target = 2 if selector == 1 else 1
        half = start + _HALVES[target - 1]
        kept = frame if len(frame) <= FRAME_MAX else b""  # too long: counted, probed with a GP
        _COUNTER.pack_into(self._map, half, self.counter)
        self._map[half + 8] = len(kept)
        self._map[half + 9:half + 9 + len(kept)] = kept
        self._map[start] = target  # the commit point: one byte
        return self.counter

    def close(self) -> None:
        self._map.close()


def _read_identities(path: Path) -> dict[int, Identity]:
    try:
        raw = json.loads(path.read_text())
        out: dict[int, Identity] = {}
        for address, parts in raw.items():
            serial, asset, game = (None if p is None else str(p) for p in parts)
            out[int(address)] = (serial, asset, game)
        return out
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}  # unreadable: no identity known, as for a gateway's first start
