"""Where the receiver keeps things: the interface the server uses, and the SQLite backend.

The server (gateway/receiver/server.py) does the protocol; a backend answers "is this token
known", "what is this stream's mark", stores verified frames and keeps commands. Two exist:
`SqliteBackend` (one file, the embedded default) and the JetStream backend
(gateway/platform/backend.py: any number of stateless receivers on one NATS cluster).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio
from nacl.signing import VerifyKey

from gateway.receiver.store import Checked, IngestResult, ReceiverStore

__all__ = ["Backend", "BackendError", "SqliteBackend", "StreamSession"]


class BackendError(Exception):
    """The backend cannot go on with this connection: close it with `code` (4004: another
    connection of the gateway took over; 1011: the store is unavailable, retry later)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class StreamSession(Protocol):
    """One connection's view of one stream (gateway, epoch)."""

    keys: dict[str, VerifyKey]
    high_water: int

    async def ingest(self, frames: list[list[Checked]]) -> list[IngestResult]: ...


class Backend(Protocol):
    async def token_known(self, token: str) -> bool: ...
    async def check_token(self, gateway_id: str, token: str) -> bool: ...
    async def take_over(self, gateway_id: str) -> None: ...
    async def claim(self, gateway_id: str,
                    on_taken_over: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]: ...
    async def open_stream(self, gateway_id: str, epoch: str) -> StreamSession: ...
    def commands_changed(self) -> trio.Event: ...
    async def add_command(self, gateway_id: str, name: str, target: dict[str, Any] | None,
                          args: dict[str, Any] | None, command_id: str | None) -> str: ...
    async def open_commands(self, gateway_id: str, include_sent: bool) -> list[dict[str, Any]]: ...
    async def mark_sent(self, gateway_id: str, command_ids: list[str]) -> None: ...
    async def complete_command(self, gateway_id: str, command_id: str, result: str, reason: str,
                               data: dict[str, Any]) -> bool: ...
    async def command(self, command_id: str) -> dict[str, Any] | None: ...


class SqliteBackend:
    """The reference store (gateway/receiver/store.py) behind one lock: one writer at a time,
    each frame group committed in a worker thread."""

    def __init__(self, store: ReceiverStore) -> None:
        self.store = store
        self.lock = trio.Lock()
        self.limiter = trio.CapacityLimiter(1)
        self._commands_added = trio.Event()

    async def token_known(self, token: str) -> bool:
        async with self.lock:
            return self.store.token_known(token)

    async def check_token(self, gateway_id: str, token: str) -> bool:
        async with self.lock:
            return self.store.check_token(gateway_id, token)

    async def take_over(self, gateway_id: str) -> None:
        """One process: the server's own table of live connections is the whole truth."""

    async def claim(self, gateway_id: str,
                    on_taken_over: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        async def release() -> None:
            pass
        return release

    async def open_stream(self, gateway_id: str, epoch: str) -> _SqliteStream:
        async with self.lock:
            return _SqliteStream(self, gateway_id, epoch, self.store.keys(gateway_id),
                                 self.store.high_water(gateway_id, epoch))

    def commands_changed(self) -> trio.Event:
        return self._commands_added

    async def add_command(self, gateway_id: str, name: str, target: dict[str, Any] | None,
                          args: dict[str, Any] | None, command_id: str | None) -> str:
        async with self.lock:
            command_id = self.store.add_command(gateway_id, name, target, args, command_id)
        self._commands_added.set()
        self._commands_added = trio.Event()
        return command_id

    async def open_commands(self, gateway_id: str, include_sent: bool) -> list[dict[str, Any]]:
        async with self.lock:
            return self.store.open_commands(gateway_id, include_sent=include_sent)

    async def mark_sent(self, gateway_id: str, command_ids: list[str]) -> None:
        async with self.lock:
            self.store.mark_sent(command_ids)

    async def complete_command(self, gateway_id: str, command_id: str, result: str, reason: str,
                               data: dict[str, Any]) -> bool:
        async with self.lock:
            return self.store.complete_command(gateway_id, command_id, result, reason, data)

    async def command(self, command_id: str) -> dict[str, Any] | None:
        return self.store.command(command_id)


class _SqliteStream:
    def __init__(self, backend: SqliteBackend, gateway_id: str, epoch: str,
                 keys: dict[str, VerifyKey], high_water: int) -> None:
        self.backend, self.gateway_id, self.epoch = backend, gateway_id, epoch
        self.keys, self.high_water = keys, high_water

    async def ingest(self, frames: list[list[Checked]]) -> list[IngestResult]:
        b = self.backend
        async with b.lock:
            return await trio.to_thread.run_sync(b.store.ingest_frames, self.gateway_id,
                                                 self.epoch, frames, self.keys, limiter=b.limiter)
