"""A host link that reports every frame to a `FrameTap` (drivers/model.py), for `diag trace`.

Drivers know nothing of tracing beyond this wrapper: the gateway's tap decides whether anyone
listens, and the protocol's `TraceDecoder` (drivers/registry.py) turns frames into words.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from drivers.link import SasLink
from drivers.model import FrameTap, TxFrame

__all__ = ["TappedLink", "tapped_opener"]


class TappedLink(SasLink):
    """Wraps a port's host link; every method is forwarded, none inherited (a base-class
    fallback would bypass the real link and change what the driver sees)."""

    def __init__(self, inner: SasLink, tap: FrameTap) -> None:
        self._inner = inner
        self._tap = tap

    async def send(self, frame: TxFrame) -> None:
        await self._inner.send(frame)
        self._tap.sent(frame.data)

    async def receive_some(self) -> bytes:
        data = await self._inner.receive_some()
        if self._tap.active():
            self._tap.received(data)
        return data

    async def receive_words(self) -> list[int]:
        # Forwarded, not inherited: the fallback would go through receive_some and lose the
        # ninth bit the host needs to tell a chirp from data.
        words = await self._inner.receive_words()
        if self._tap.active():
            self._tap.received(bytes(w & 0xFF for w in words),
                               wakeup=any(w & 0x100 for w in words))
        return words

    async def aclose(self) -> None:
        await self._inner.aclose()


def tapped_opener(open_link: Callable[[], Awaitable[SasLink]],
                  tap: FrameTap | None) -> Callable[[], Awaitable[SasLink]]:
    """`open_link` whose links report to `tap` (unchanged without one)."""
    if tap is None:
        return open_link

    async def opener() -> SasLink:
        return TappedLink(await open_link(), tap)

    return opener
