"""Links over a tty file descriptor with non-blocking I/O (trio.lowlevel.wait_readable/writable).

On a pseudo-terminal the ninth bit travels in the PARMRK byte encoding (parmrk.py), decoded in
user space: PARMRK is *not* set on the pty, or the kernel would double every FF. On a real UART
the host switches stick parity per message: MARK (PARENB|CMSPAR|PARODD) for the address byte,
drain, SPACE for the rest; it receives with SPACE parity and INPCK|PARMRK, so a byte with the
ninth bit set (a chirp) arrives as `FF 00 b`, exactly the pty encoding.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import stat
import termios
import tty
from pathlib import Path

import trio

from drivers.link import EgmLink, LinkBrokenError, LinkClosedError, SasLink, TxFrame, parmrk
from drivers.link.lock import DeviceBusyError, DeviceLock

__all__ = ["FdChannel", "PtyEgmLink", "TtyHostLink", "adapter_latency_timer_ms", "is_pty",
           "open_tty_link"]

# Linux: CMSPAR is missing from Python's termios module; value from <asm-generic/termbits.h>.
CMSPAR = getattr(termios, "CMSPAR", 0o10000000000)
# Unix98 pty slaves use character-device majors 136..143 (Documentation/admin-guide/devices.txt).
_PTY_MAJORS = range(136, 144)
_READ_SIZE = 4096


def is_pty(fd: int) -> bool:
    st = os.fstat(fd)
    return stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in _PTY_MAJORS


class FdChannel:
    """Non-blocking reads and writes on one fd, with trio's Closed/Broken split."""

    def __init__(self, fd: int) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.closed = False

    async def write(self, data: bytes) -> None:
        # Cancellation may only strike before any byte moved (trio's FdStream rule): a poll or an
        # answer half lost to a timeout would look like a different frame to the peer.
        await trio.lowlevel.checkpoint_if_cancelled()
        view = memoryview(data)
        while view:
            self._check()
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.fd)
                continue
            except OSError as exc:
                raise LinkBrokenError(f"write failed: {exc}") from exc
            view = view[n:]
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def read(self) -> bytes:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            self._check()
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.fd)
                continue
            except OSError as exc:
                # EIO: the other side of the pty went away.
                raise LinkBrokenError(f"read failed: {exc}") from exc
            if not data:
                raise LinkBrokenError("end of file")
            # Bytes read must never be dropped by a cancellation (a lost poll reads as a NACK).
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data

    def _check(self) -> None:
        if self.closed:
            raise LinkClosedError("link closed")

    async def aclose(self) -> None:
        if not self.closed:
            self.closed = True
            trio.lowlevel.notify_closing(self.fd)
            os.close(self.fd)
        await trio.lowlevel.checkpoint()


class TtyHostLink(SasLink):
    """Host end on a tty; `stick_parity` selects MARK/SPACE switching, else PARMRK encoding."""

    def __init__(self, fd: int, *, stick_parity: bool, lock: DeviceLock | None = None) -> None:
        self._io = FdChannel(fd)
        self._stick = stick_parity
        self._decoder = parmrk.ParmrkDecoder()
        self._lock = lock

    async def send(self, frame: TxFrame) -> None:
        if not self._stick:
            words = list(frame.data)
            if frame.wakeup and words:
                words[0] |= 0x100
            await self._io.write(parmrk.encode(words))
            return
        fd = self._io.fd
        if frame.wakeup and frame.data:
            _set_parity(fd, mark=True)
            await self._io.write(frame.data[:1])
            await trio.to_thread.run_sync(termios.tcdrain, fd)
            _set_parity(fd, mark=False)
            await self._io.write(frame.data[1:])
        else:
            await self._io.write(frame.data)

    async def receive_some(self) -> bytes:
        return bytes(w & 0xFF for w in await self.receive_words())

    async def receive_words(self) -> list[int]:
        # PARMRK marks a byte received with the ninth bit (a parity error under SPACE parity on
        # a UART, the `FF 00 b` encoding on a pty) the same way: decoded here into bit 8.
        while True:
            words = self._decoder.feed(await self._io.read())
            if words:
                return words

    async def aclose(self) -> None:
        if not self._io.closed:
            try:
                fcntl.ioctl(self._io.fd, termios.TIOCNXCL)
            except OSError:
                pass  # the device is gone: nothing left to release
        try:
            await self._io.aclose()
        finally:
            if self._lock is not None:
                self._lock.release()


class PtyEgmLink(EgmLink):
    """Machine end on a pty master (the simulator): PARMRK encoding both ways."""

    def __init__(self, fd: int) -> None:
        self._io = FdChannel(fd)
        self._decoder = parmrk.ParmrkDecoder()

    async def send(self, data: bytes) -> None:
        await self._io.write(parmrk.encode(data))

    async def send_words(self, words: list[int]) -> None:
        await self._io.write(parmrk.encode(words))

    async def receive_words(self) -> list[int]:
        while True:
            words = self._decoder.feed(await self._io.read())
            if words:
                return words

    def input_waiting(self) -> bool:
        return bool(select.select([self._io.fd], [], [], 0)[0])

    async def aclose(self) -> None:
        await self._io.aclose()


def _set_parity(fd: int, *, mark: bool) -> None:
    attrs = termios.tcgetattr(fd)
    attrs[2] = (attrs[2] | termios.PARODD) if mark else (attrs[2] & ~termios.PARODD)
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def _configure_serial(fd: int) -> None:
    """19200 baud, 8 data bits, stick SPACE parity, parity errors marked (reference section 1)."""
    attrs = termios.tcgetattr(fd)
    attrs[0] = termios.INPCK | termios.PARMRK
    attrs[1] = 0
    attrs[2] = termios.CS8 | termios.CREAD | termios.CLOCAL | termios.PARENB | CMSPAR
    attrs[3] = 0
    attrs[4] = attrs[5] = termios.B19200
    attrs[6][termios.VMIN] = 1
    attrs[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def adapter_latency_timer_ms(path: str) -> int | None:
    """The USB adapter's latency timer (FTDI `latency_timer` in sysfs), None where there is none.
    It holds back short answers for up to this long (default 16 ms): most of the 20 ms answer
    window of reference 2.1."""
    name = os.path.basename(os.path.realpath(path))
    try:
        return int(Path(f"/sys/class/tty/{name}/device/latency_timer").read_text().strip())
    except (OSError, ValueError):
        return None


async def open_tty_link(path: str, *, mode: str = "auto", lock_dir: Path | None = None,
                        ) -> TtyHostLink:
    """Open and lock the host end (drivers/link/lock.py): DeviceBusyError if another process
    has it, LinkBrokenError if it cannot be opened or configured."""
    if mode not in ("auto", "pty", "serial"):
        raise ValueError(f"unknown link mode {mode!r}")
    try:
        os.stat(path)  # no lock file for a device that is not there
    except FileNotFoundError as missing:
        raise LinkBrokenError(f"cannot open {path}: {missing}") from missing
    lock = DeviceLock(path, lock_dir)
    lock.acquire()
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        lock.release()
        if exc.errno == errno.EBUSY:
            raise DeviceBusyError(f"{path} is in use by another program (opened exclusively; "
                                  f"lsof {path} names it)") from exc
        raise LinkBrokenError(f"cannot open {path}: {exc}") from exc
    try:
        # Exclusive: a second open() fails with EBUSY (root excepted: hence the lock file).
        fcntl.ioctl(fd, termios.TIOCEXCL)
        stick = mode == "serial" or (mode == "auto" and not is_pty(fd))
        if stick:
            _configure_serial(fd)
        else:
            tty.setraw(fd)
        # Bytes left by a previous opener survive a close (docs/sas.md, "Links and the ninth bit").
        termios.tcflush(fd, termios.TCIFLUSH)
    except OSError as exc:
        os.close(fd)
        lock.release()
        if exc.errno == errno.ENOTTY:
            raise LinkBrokenError(f"{path} is not a terminal") from exc
        raise LinkBrokenError(f"cannot configure {path}: {exc}") from exc
    await trio.lowlevel.checkpoint()
    return TtyHostLink(fd, stick_parity=stick, lock=lock)
