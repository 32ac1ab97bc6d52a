"""One poller per serial device: a lock file with the holder's PID, plus TIOCEXCL on the tty.

Why: two processes polling one line take each other's answers as their own (implied ACKs for
exceptions the other never recorded). TIOCEXCL makes a second open() of the tty fail with
EBUSY, but root bypasses it; so every opener also takes an flock on a file named after the
device's real path (symlinks such as /dev/serial/by-id/... resolve to the same file) in the
runtime directory, and writes its PID there, so the second opener can say who holds it.

The lock lives exactly as long as the open link: the kernel drops an flock when the process
dies, so a stale file (left by a SIGKILL) never blocks anyone.
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from pathlib import Path

from drivers.link import LinkError

__all__ = ["DeviceBusyError", "DeviceLock", "default_lock_dir", "describe_process", "lock_holder",
           "lock_path"]

_SERVICE_RUN_DIR = Path("/run/casino-gateway")


class DeviceBusyError(LinkError):
    """Another process holds the device; the message names it, in one line."""


def default_lock_dir() -> Path:
    """systemd's RuntimeDirectory (RUNTIME_DIRECTORY) for the service; by hand, the service's
    run directory when it exists and is writable (so a hand-run gateway or `diag probe` meets
    the service's locks), else the temporary directory."""
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0])
    if _SERVICE_RUN_DIR.is_dir() and os.access(_SERVICE_RUN_DIR, os.W_OK | os.X_OK):
        return _SERVICE_RUN_DIR
    return Path(tempfile.gettempdir())


def lock_path(device: str, lock_dir: Path | None = None) -> Path:
    """The lock file of `device`: named after its real path, so every name of one tty agrees."""
    real = os.path.realpath(device)
    return (lock_dir or default_lock_dir()) / f"casino-gateway-tty{real.replace('/', '_')}.lock"


def describe_process(pid: int) -> str:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"process {pid}"
    words = [w.decode(errors="replace") for w in cmdline if w]
    # "python -m gateway run ..." / ".../casino-gateway run ...": keep it short and recognisable.
    text = " ".join(Path(words[0]).name if i == 0 else w for i, w in enumerate(words[:4]))
    return f"process {pid} ({text})" if text else f"process {pid}"


def lock_holder(device: str, lock_dir: Path | None = None) -> int | None:
    """The PID holding `device`'s lock, or None if nobody holds it (checked, not taken)."""
    path = lock_path(device, lock_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        return int(text.split()[0]) if text else None
    except (OSError, ValueError, IndexError):
        return None


class DeviceLock:
    """The lock of one device, held from `acquire()` to `release()`."""

    def __init__(self, device: str, lock_dir: Path | None = None) -> None:
        self.device = device
        self.path = lock_path(device, lock_dir)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise DeviceBusyError naming the holder."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            pid = _read_pid(fd)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise DeviceBusyError(f"cannot lock {self.device} ({self.path}): {exc}") from exc
            who = describe_process(pid) if pid else "another process"
            raise DeviceBusyError(f"{self.device} is in use by {who} (lock {self.path}); "
                                  "only one program may poll a SAS line") from exc
        # Overwrite in place, then cut: a reader never sees an empty file (the first token is
        # always a whole PID; any tail of an older, longer one follows the newline).
        content = f"{os.getpid()}\n".encode()
        os.pwrite(fd, content, 0)
        os.ftruncate(fd, len(content))
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # drops the flock; the file stays (unlinking would race a new holder)
