"""Wait until a file in a directory changes, without polling: Linux inotify through ctypes.

Why: `casino-gateway outbox tail -f` follows a database another process (the daemon) writes.
SQLite gives no cross-process notification, but every commit writes the `-wal` file beside it,
and inotify tells us so. No package needed for three libc calls; the product runs on Linux only
(systemd).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct
from pathlib import Path

__all__ = ["DirectoryWatch"]

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)


class DirectoryWatch:
    """`wait()` blocks until a file in `directory` whose name starts with `prefix` is written,
    created or moved in; returns at once if that already happened since the last wait.

    For SQLite a write of the `-wal` file can come just before the commit is visible (the
    WAL index is a shared memory map, which inotify does not see), so a reader that wakes on it
    and finds nothing new would wait for the next commit. `wait(recheck_s)` therefore also
    returns after `recheck_s` without an event, and a follower that woke to find nothing new
    looks again a few ms later (the commit is on its way)."""

    def __init__(self, directory: Path, prefix: str = "") -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._fd = libc.inotify_init1(IN_CLOEXEC)
        if self._fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed (following needs Linux)")
        mask = IN_MODIFY | IN_CLOSE_WRITE | IN_CREATE | IN_MOVED_TO
        if libc.inotify_add_watch(self._fd, os.fsencode(directory), mask) < 0:
            err = ctypes.get_errno()
            os.close(self._fd)
            raise OSError(err, f"cannot watch {directory}: {os.strerror(err)}")
        self._prefix = os.fsencode(prefix)

    def wait(self, recheck_s: float | None = None) -> bool:
        """True if a matching file changed, False if `recheck_s` passed without that."""
        while True:
            ready, _, _ = select.select([self._fd], [], [], recheck_s)
            if not ready:
                return False
            data = os.read(self._fd, 64 * 1024)
            offset = 0
            while offset < len(data):
                _, _, _, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                if name.startswith(self._prefix):
                    return True

    def close(self) -> None:
        os.close(self._fd)
