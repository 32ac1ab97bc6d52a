"""Links carry SAS bytes between the host and machines (house style 3.4).

The ninth (wakeup) bit is data, not link configuration: a `TxFrame` says whether its first byte
carries it, and each link transports that flag its own way (out of band in memory, PARMRK-style
`FF 00 b` on a pseudo-terminal, MARK/SPACE stick parity on a real UART). `TxFrame` itself is
in drivers/model.py (re-exported here), so the sans-I/O host can build frames without trio.
"""

from __future__ import annotations

import abc
from pathlib import Path

import trio

from drivers.model import TxFrame

__all__ = [
    "EgmLink",
    "LinkBrokenError",
    "LinkClosedError",
    "LinkError",
    "SasLink",
    "TxFrame",
    "open_link",
]


class LinkError(Exception):
    """Base of link failures."""


class LinkBrokenError(LinkError):
    """The outside world broke the link (device unplugged, pty closed); `__cause__` says how."""


class LinkClosedError(LinkError):
    """We closed the link ourselves and then used it."""


class SasLink(trio.abc.AsyncResource):
    """Host end of a SAS line. No timeouts here: callers use cancel scopes."""

    @abc.abstractmethod
    async def send(self, frame: TxFrame) -> None:
        """Write one host message, setting the wakeup bit on its first byte if asked."""

    @abc.abstractmethod
    async def receive_some(self) -> bytes:
        """Wait for and return at least one byte from the machines."""

    async def receive_words(self) -> list[int]:
        """Like receive_some, keeping the ninth bit (bit 8) where the link can see it, so the
        host can tell a chirp (reference 1) from data. Links that cannot see it return bytes."""
        return list(await self.receive_some())


class EgmLink(trio.abc.AsyncResource):
    """Machine end of a SAS line: receives 9-bit words (bit 8 = wakeup), sends plain bytes."""

    @abc.abstractmethod
    async def send(self, data: bytes) -> None:
        """Write machine bytes (wakeup bit clear)."""

    @abc.abstractmethod
    async def receive_words(self) -> list[int]:
        """Wait for and return at least one received word; `word & 0x100` is the wakeup bit."""

    async def send_words(self, words: list[int]) -> None:
        """Write 9-bit words (a chirp: the address with the wakeup bit). Links that cannot carry
        the ninth bit send the plain bytes."""
        await self.send(bytes(w & 0xFF for w in words))

    def input_waiting(self) -> bool:
        """Whether the host has sent more since the last `receive_words` (not consumed). The
        simulator asks before it answers: a poll already behind the one it answers means its
        answer is too late. Links that cannot tell say no."""
        return False


async def open_link(device_path: str, *, mode: str = "auto",
                    lock_dir: Path | None = None) -> SasLink:
    """Open the host end on a tty. `mode` "auto" detects a pseudo-terminal (PARMRK byte encoding);
    "pty" forces that encoding; "serial" forces MARK/SPACE stick parity. The device is locked
    while open (drivers/link/lock.py; `lock_dir` defaults to the runtime directory)."""
    from drivers.link.tty import open_tty_link

    return await open_tty_link(device_path, mode=mode, lock_dir=lock_dir)
