"""In-process link pair for tests: the wakeup bit travels out of band, so the simulator sees it
exactly. An optional `fault_hook(direction, data) -> data | None` may corrupt, split or drop
traffic ("to_egm" carries 9-bit words as a tuple of ints, "to_host" bytes, or a tuple of words for a
chirp; None drops)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from drivers.link import EgmLink, LinkBrokenError, LinkClosedError, SasLink, TxFrame

__all__ = ["FaultHook", "MemoryEgmLink", "MemoryHostLink", "memory_link_pair"]

FaultHook = Callable[[str, Any], Any]
_BUFFER = 64


class _End:
    def __init__(self, tx: trio.MemorySendChannel[Any], rx: trio.MemoryReceiveChannel[Any],
                 hook: FaultHook | None, direction: str) -> None:
        self._tx, self._rx, self._hook, self._direction = tx, rx, hook, direction
        self._closed = False

    async def _put(self, item: Any) -> None:
        if self._closed:
            raise LinkClosedError("link closed")
        if self._hook is not None:
            item = self._hook(self._direction, item)
            if item is None or len(item) == 0:
                return
        try:
            await self._tx.send(item)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise LinkBrokenError("peer closed") from exc

    async def _get(self) -> Any:
        if self._closed:
            raise LinkClosedError("link closed")
        try:
            return await self._rx.receive()
        except trio.EndOfChannel as exc:
            raise LinkBrokenError("peer closed") from exc
        except trio.ClosedResourceError as exc:
            raise LinkClosedError("link closed") from exc

    async def aclose(self) -> None:
        self._closed = True
        await self._tx.aclose()
        await self._rx.aclose()


class MemoryHostLink(_End, SasLink):
    async def send(self, frame: TxFrame) -> None:
        words = [b for b in frame.data]
        if frame.wakeup and words:
            words[0] |= 0x100
        await self._put(tuple(words))

    async def receive_some(self) -> bytes:
        return bytes(w & 0xFF for w in await self._get())

    async def receive_words(self) -> list[int]:
        return list(await self._get())


class MemoryEgmLink(_End, EgmLink):
    async def send(self, data: bytes) -> None:
        await self._put(bytes(data))

    async def send_words(self, words: list[int]) -> None:
        await self._put(tuple(words))

    async def receive_words(self) -> list[int]:
        return list(await self._get())

    def input_waiting(self) -> bool:
        return self._rx.statistics().current_buffer_used > 0


def memory_link_pair(fault_hook: FaultHook | None = None) -> tuple[MemoryHostLink, MemoryEgmLink]:
    """Connected (host_end, egm_end)."""
    to_egm_tx, to_egm_rx = trio.open_memory_channel[Any](_BUFFER)
    to_host_tx, to_host_rx = trio.open_memory_channel[Any](_BUFFER)
    host = MemoryHostLink(to_egm_tx, to_host_rx, fault_hook, "to_egm")
    egm = MemoryEgmLink(to_host_tx, to_egm_rx, fault_hook, "to_host")
    return host, egm
