"""The reference platform endpoint: accepts gateway uplinks on /v1/stream, verifies, stores, acks.

Per connection: HTTP upgrade (path /v1/stream, bearer token known, else 404/401/403) -> hello ->
the token must belong to the gateway the hello names (else error + close 4001) -> welcome with the
stored high-water mark -> for each events frame: verify + store in one transaction, then the
cumulative ack. A bad signature or hash ends the connection with an error frame and close 4003.

Commands: while a gateway is connected, its open commands (the `commands` table: pending, and on a
new connection also sent-but-unanswered ones) are sent to it as command frames and marked sent;
its command_result frames mark them done. `ReceiverHandle.submit_command` wakes the sender at once;
rows inserted by another process (`casino-gateway receiver command`) are found by a cheap indexed
query every `command_check_s` (default COMMAND_CHECK_S).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio
from nacl.signing import VerifyKey
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from gateway.receiver.store import Checked, ReceiverStore, verify_events
from gateway.uplink import protocol as proto

__all__ = ["PATH", "ReceiverHandle", "ReceiverSettings", "serve_receiver"]

log = structlog.get_logger(__name__)

PATH = "/v1/stream"
MAX_FRAME = 16 * 1024 * 1024
MAX_EVENTS_PER_FRAME = 10_000
HELLO_TIMEOUT_S = 10.0
VERIFY_THREADS = max(1, min(4, os.cpu_count() or 1))
# SQLite cannot notify another process's insert; looking for new pending commands this often is
# one indexed query per connected gateway, and bounds the delay of a CLI-submitted command.
COMMAND_CHECK_S = 0.25


@dataclass(frozen=True, kw_only=True)
class ReceiverSettings:
    host: str = "127.0.0.1"
    port: int = 0
    db_path: Path
    certfile: Path | None = None
    keyfile: Path | None = None
    command_check_s: float = COMMAND_CHECK_S


@dataclass(frozen=True)
class ReceiverHandle:
    port: int
    url: str
    store: ReceiverStore
    receiver: _Receiver = field(repr=False)

    async def submit_command(self, gateway_id: str, name: str,
                             target: dict[str, Any] | None = None,
                             args: dict[str, Any] | None = None,
                             command_id: str | None = None) -> str:
        """Queue a command (sent at once if the gateway is connected); return its id."""
        return await self.receiver.submit_command(gateway_id, name, target, args, command_id)

    async def wait_command(self, command_id: str) -> dict[str, Any]:
        """Wait until the gateway answered `command_id`; return the row (see COMMAND_FIELDS)."""
        return await self.receiver.wait_command(command_id)


def _bearer(request: WebSocketRequest) -> str | None:
    for name, value in request.headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


async def _close(ws: WebSocketConnection, code: int, message: str) -> None:
    with trio.move_on_after(1):
        try:
            await ws.send_message(proto.encode(proto.Error(code, message)))
        except ConnectionClosed:
            pass
        await ws.aclose(code, message[:120])


class _Receiver:
    def __init__(self, store: ReceiverStore, command_check_s: float = COMMAND_CHECK_S) -> None:
        self.store = store
        self.command_check_s = command_check_s
        self.lock = trio.Lock()  # one writer on the store at a time
        self.limiter = trio.CapacityLimiter(1)
        self.verifiers = trio.CapacityLimiter(VERIFY_THREADS)
        self.commands_added = trio.Event()
        self.commands_done = trio.Event()

    async def submit_command(self, gateway_id: str, name: str, target: dict[str, Any] | None,
                             args: dict[str, Any] | None, command_id: str | None) -> str:
        async with self.lock:
            command_id = self.store.add_command(gateway_id, name, target, args, command_id)
        self.commands_added.set()
        self.commands_added = trio.Event()
        return command_id

    async def wait_command(self, command_id: str) -> dict[str, Any]:
        while True:
            done = self.commands_done
            row = self.store.command(command_id)
            if row is None:
                raise KeyError(command_id)
            if row["status"] == "done":
                return row
            await done.wait()

    async def _send_commands(self, ws: WebSocketConnection, gid: str) -> None:
        include_sent = True  # a new connection: what was sent before may never have arrived
        try:
            while True:
                added = self.commands_added
                async with self.lock:
                    rows = self.store.open_commands(gid, include_sent=include_sent)
                include_sent = False
                for row in rows:
                    await ws.send_message(proto.encode(proto.Command(
                        row["id"], row["name"], row["target"], row["args"])))
                    log.info("receiver command sent", gateway_id=gid, command_id=row["id"],
                             name=row["name"])
                if rows:
                    async with self.lock:
                        self.store.mark_sent([row["id"] for row in rows])
                # Woken at once by submit_command; otherwise look again after command_check_s
                # for rows another process inserted (see COMMAND_CHECK_S).
                with trio.move_on_after(self.command_check_s):
                    await added.wait()
        except ConnectionClosed:
            return  # the reading side sees the close too and ends the session

    async def _command_result(self, gid: str, message: proto.CommandResult) -> None:
        async with self.lock:
            stored = self.store.complete_command(gid, message.id, message.result, message.reason,
                                                 message.data)
        if stored:
            log.info("receiver command done", gateway_id=gid, command_id=message.id,
                     result=message.result, reason=message.reason)
            self.commands_done.set()
            self.commands_done = trio.Event()
        else:
            log.warning("receiver command result for no open command", gateway_id=gid,
                        command_id=message.id)

    async def _verify(self, raws: list[bytes], keys: dict[str, VerifyKey]) -> list[Checked]:
        """Signature checks in worker threads (libsodium releases the GIL), in order."""
        parts = VERIFY_THREADS if len(raws) >= 64 else 1
        size = -(-len(raws) // parts)
        chunks = [raws[i:i + size] for i in range(0, len(raws), size)]
        results: list[list[Checked]] = [[] for _ in chunks]

        async def run(index: int) -> None:
            results[index] = await trio.to_thread.run_sync(
                verify_events, chunks[index], keys, limiter=self.verifiers)

        async with trio.open_nursery() as nursery:
            for index in range(len(chunks)):
                nursery.start_soon(run, index)
        return [item for chunk in results for item in chunk]

    async def handle(self, request: WebSocketRequest) -> None:
        if request.path.split("?")[0] != PATH:
            await request.reject(404, body=b"not found\n")
            return
        token = _bearer(request)
        if token is None:
            await request.reject(401, extra_headers=[(b"www-authenticate", b"Bearer")],
                                 body=b"bearer token required\n")
            return
        async with self.lock:
            known = self.store.token_known(token)
        if not known:
            log.warning("receiver refused unknown token", remote=str(request.remote))
            await request.reject(403, body=b"forbidden\n")
            return
        ws = await request.accept()
        try:
            await self._session(ws, token)
        except ConnectionClosed:
            pass

    async def _session(self, ws: WebSocketConnection, token: str) -> None:
        with trio.move_on_after(HELLO_TIMEOUT_S) as scope:
            frame = await ws.get_message()
        if scope.cancelled_caught:
            await _close(ws, proto.CLOSE_PROTOCOL, "no hello")
            return
        try:
            hello = proto.decode(frame)
            if not isinstance(hello, proto.Hello):
                raise proto.ProtocolViolation(f"expected hello, got {type(hello).__name__}")
        except proto.ProtocolViolation as violation:
            await _close(ws, violation.code, str(violation))
            return
        gid, epoch = hello.gateway_id, hello.epoch
        async with self.lock:
            allowed = self.store.check_token(gid, token)
            keys = self.store.keys(gid)
            high_water = self.store.high_water(gid, epoch)
        if not allowed:
            log.warning("receiver refused gateway", gateway_id=gid, reason="token mismatch")
            await _close(ws, proto.CLOSE_AUTH, "token does not belong to this gateway")
            return
        await ws.send_message(proto.encode(proto.Welcome(epoch, high_water)))
        log.info("receiver gateway connected", gateway_id=gid, epoch=epoch, high_water=high_water)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_commands, ws, gid)
            try:
                await self._stream(ws, gid, epoch, keys)
            except ConnectionClosed:
                pass
            nursery.cancel_scope.cancel()

    async def _stream(self, ws: WebSocketConnection, gid: str, epoch: str,
                      keys: dict[str, VerifyKey]) -> None:
        while True:
            frame = await ws.get_message()
            try:
                message = proto.decode(frame, max_events=MAX_EVENTS_PER_FRAME)
                if not isinstance(message, proto.Events | proto.CommandResult):
                    raise proto.ProtocolViolation(f"unexpected {type(message).__name__}")
            except proto.ProtocolViolation as violation:
                await _close(ws, violation.code, str(violation))
                return
            if isinstance(message, proto.CommandResult):
                await self._command_result(gid, message)
                continue
            checked = await self._verify(list(message.events), keys)
            async with self.lock:
                result = await trio.to_thread.run_sync(
                    partial(self.store.ingest, gid, epoch, list(message.events), keys,
                            checked=checked),
                    limiter=self.limiter)
            # Committed: now (and only now) the ack.
            await ws.send_message(proto.encode(proto.Ack(epoch, result.high_water)))
            if result.error:
                log.warning("receiver rejected batch", gateway_id=gid, epoch=epoch,
                            error=result.error, code=result.error_code)
                await _close(ws, result.error_code, result.error)
                return


async def serve_receiver(settings: ReceiverSettings, *,
                         task_status: trio.TaskStatus[ReceiverHandle] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    """Serve until cancelled; `task_status.started(handle)` once listening."""
    ssl_ctx = None
    if settings.certfile is not None:
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(str(settings.certfile),
                                str(settings.keyfile) if settings.keyfile else None)
    store = ReceiverStore(settings.db_path)
    receiver = _Receiver(store, settings.command_check_s)
    try:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(
                serve_websocket, receiver.handle, settings.host, settings.port, ssl_ctx,
                max_message_size=MAX_FRAME))
            port = server.port
            scheme = "wss" if ssl_ctx else "ws"
            handle = ReceiverHandle(port, f"{scheme}://{settings.host}:{port}{PATH}", store,
                                    receiver)
            log.info("receiver listening", url=handle.url, db=str(settings.db_path))
            task_status.started(handle)
    finally:
        store.close()
