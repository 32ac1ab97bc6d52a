"""The trio receiver's way into nats-py (asyncio): one dedicated asyncio thread.

Why a thread and not trio-asyncio: the receiver crosses into NATS once per group of frames
(hundreds of events), not once per event, so a cross-thread hop (~20-40 us) is amortised to
about a microsecond per event (bench/jetstream.py measures it). nats-py then runs on its
own, unmodified, stock asyncio loop (the loop its authors test), its parsing and acks never
delay the trio loop's WebSocket reads, and a bug in one world cannot wedge the other.
trio-asyncio would run both in one loop through a compatibility layer that rewrites asyncio's
scheduling, for no gain at this crossing rate.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

__all__ = ["AsyncioThread"]

T = TypeVar("T")


class AsyncioThread:
    """An asyncio event loop in a daemon thread; `await run(fn, *args)` from trio runs the
    coroutine `fn(*args)` there and returns its result (or raises its exception). Cancelling
    the trio caller cancels the asyncio task."""

    def __init__(self, name: str = "nats-asyncio") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        _name_os_thread(self._thread.name)
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    async def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        future = asyncio.run_coroutine_threadsafe(fn(*args), self.loop)  # type: ignore[arg-type]
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_: object) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        future.add_done_callback(wake)
        try:
            await done.wait()
        except BaseException:
            future.cancel()
            raise
        return future.result()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, timeout: float = 30.0) -> T:
        """From a plain (non-trio) thread: run and wait (CLI tools)."""
        return asyncio.run_coroutine_threadsafe(fn(*args), self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
        if not self.loop.is_running():
            self.loop.close()


def _name_os_thread(name: str) -> None:
    """The kernel's name for this thread (top -H, /proc/PID/task/TID/comm), so the CPU the
    NATS side costs can be told from the receiver's own (bench/jetstream.py reads it)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass
