"""The witness: a small file beside the outbox holding the highest (epoch, seq) ever committed.

SQLite can lose committed rows without an error: a WAL torn by storage that lied about a flush,
or an older copy restored over the file. The outbox alone cannot tell, and re-using those seqs
for new events would be silent loss (the platform holds the old ones and drops the new ones as
duplicates). The witness is written and fsynced after each group commit has returned (never
before: it must not run ahead of the database) and before any of the group's events leaves the
process (gateway/outbox/flusher.py), so an outbox whose last seq is behind it has lost events a
machine was told about or the platform may hold: it starts a new epoch (docs/outbox.md
section 3).

It lives outside the database (`outbox.db.witness`) and is never in a backup: a restored outbox
with the box's witness is caught at start; on a new box (no witness) the platform's first welcome
decides. One fixed-size record rewritten in place (well under one disk sector), with a CRC:
a torn or damaged witness reads as absent, never as a smaller number."""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WITNESS_SUFFIX", "Mark", "Witness", "read_witness", "witness_path"]

WITNESS_SUFFIX = ".witness"
_RECORD = "{epoch} {seq:020d} {crc:08x}\n"


@dataclass(frozen=True, slots=True)
class Mark:
    epoch: str
    seq: int


def witness_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + WITNESS_SUFFIX)


def _crc(epoch: str, seq: int) -> int:
    return zlib.crc32(f"{epoch} {seq:020d}".encode())


def _encode(mark: Mark) -> bytes:
    return _RECORD.format(epoch=mark.epoch, seq=mark.seq, crc=_crc(mark.epoch, mark.seq)).encode()


def read_witness(db_path: Path) -> Mark | None:
    """The recorded mark, or None if there is no witness or it does not check out."""
    try:
        raw = witness_path(db_path).read_bytes()[:128]
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None
    try:
        epoch, seq_text, crc_text = raw.decode("ascii").split()
        seq, crc = int(seq_text), int(crc_text, 16)
    except (UnicodeDecodeError, ValueError):
        return None
    if crc != _crc(epoch, seq) or len(epoch) != 16 or seq < 0:
        return None
    return Mark(epoch, seq)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Witness:
    """The open witness file of the running outbox (written by the writer thread only)."""

    def __init__(self, db_path: Path) -> None:
        self.path = witness_path(db_path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self.mark: Mark | None = None
        self.fsyncs = 0

    def record(self, mark: Mark) -> None:
        """Rewrite the record in place and fsync it (one small write, one flush)."""
        if mark == self.mark:
            return
        data = _encode(mark)
        os.pwrite(self._fd, data, 0)
        if self.mark is None:
            os.ftruncate(self._fd, len(data))
            os.fsync(self._fd)
            _fsync_dir(self.path.parent)  # the file itself must survive a power cut
        else:
            os.fdatasync(self._fd)  # same size, same blocks: the data is all there is to flush
        self.fsyncs += 1
        self.mark = mark

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
