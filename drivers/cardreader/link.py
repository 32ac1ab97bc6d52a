"""The reader's serial line: bytes in, nothing out (a reader is never written to).

Opened like a SAS line (drivers/link/tty.py): locked against a second opener (drivers/link/
lock.py), exclusive, raw, input flushed; on a real UART at the reader's speed, 8N1, no parity
(readers in serial ASCII mode default to 9600 baud); a pseudo-terminal (the simulator) is left
at its own settings.
"""

from __future__ import annotations

import errno
import fcntl
import os
import termios
import tty
from pathlib import Path
from typing import Protocol

import trio

from drivers.link import LinkBrokenError
from drivers.link.lock import DeviceBusyError, DeviceLock
from drivers.link.tty import FdChannel, is_pty

__all__ = ["BAUD_RATES", "ReaderLink", "TtyReaderLink", "open_reader_link"]

BAUD_RATES = {1200: termios.B1200, 2400: termios.B2400, 4800: termios.B4800,
              9600: termios.B9600, 19200: termios.B19200, 38400: termios.B38400,
              57600: termios.B57600, 115200: termios.B115200}


class ReaderLink(Protocol):
    """What the driver needs of a link: bytes from the reader, and a close."""

    async def receive_some(self) -> bytes: ...

    async def aclose(self) -> None: ...


class TtyReaderLink(trio.abc.AsyncResource):
    def __init__(self, fd: int, lock: DeviceLock) -> None:
        self._io = FdChannel(fd)
        self._lock = lock

    async def receive_some(self) -> bytes:
        return await self._io.read()

    async def aclose(self) -> None:
        try:
            await self._io.aclose()
        finally:
            self._lock.release()


def _configure(fd: int, baud: int) -> None:
    tty.setraw(fd)
    if is_pty(fd):
        return
    attrs = termios.tcgetattr(fd)
    attrs[2] = termios.CS8 | termios.CREAD | termios.CLOCAL
    attrs[4] = attrs[5] = BAUD_RATES[baud]
    attrs[6][termios.VMIN] = 1
    attrs[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


async def open_reader_link(path: str, *, baud: int = 9600,
                           lock_dir: Path | None = None) -> TtyReaderLink:
    """DeviceBusyError if another process has the reader, LinkBrokenError if it cannot be
    opened or configured (both drivers.link.LinkError: the port supervisor retries)."""
    if baud not in BAUD_RATES:
        raise ValueError(f"unsupported baud rate {baud}")
    try:
        os.stat(path)
    except FileNotFoundError as missing:
        raise LinkBrokenError(f"cannot open {path}: {missing}") from missing
    lock = DeviceLock(path, lock_dir)
    lock.acquire()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        lock.release()
        if exc.errno == errno.EBUSY:
            raise DeviceBusyError(f"{path} is in use by another program") from exc
        raise LinkBrokenError(f"cannot open {path}: {exc}") from exc
    try:
        fcntl.ioctl(fd, termios.TIOCEXCL)
        _configure(fd, baud)
        termios.tcflush(fd, termios.TCIFLUSH)
    except OSError as exc:
        os.close(fd)
        lock.release()
        if exc.errno == errno.ENOTTY:
            raise LinkBrokenError(f"{path} is not a terminal") from exc
        raise LinkBrokenError(f"cannot configure {path}: {exc}") from exc
    await trio.lowlevel.checkpoint()
    return TtyReaderLink(fd, lock)
