"""The reference platform endpoint: accepts gateway uplinks on /v1/stream, verifies, stores, acks.

Per connection: HTTP upgrade (path /v1/stream, bearer token known, else 404/401/403) -> hello ->
the token must belong to the gateway the hello names (else error + close 4001) -> welcome with the
stored high-water mark -> for each events frame: verify, store, then the cumulative ack. Frames
are pipelined: each is verified in a worker thread as soon as it is read, while the frames before
it commit; frames verified by the time the store is free commit in one transaction (one fsync),
then each gets its ack, in order. A bad signature or hash ends the connection with an error frame
and close 4003 after the events before it are committed and acked.

Commands: while a gateway is connected, its open commands (the `commands` table: pending, and on a
new connection also sent-but-unanswered ones) are sent to it as command frames and marked sent;
its command_result frames mark them done. `ReceiverHandle.submit_command` wakes the sender at once;
rows inserted by another process (`casino-gateway receiver command`) are found by a cheap indexed
query every `command_check_s` (default COMMAND_CHECK_S).
"""

from __future__ import annotations

import os
import ssl
from collections import deque
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import structlog
import trio
from nacl.signing import VerifyKey
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from gateway.accepting import summarize_suppressed
from gateway.bounded import InputRejected, check_plain
from gateway.config import MonitorSection
from gateway.limits import LogThrottle
from gateway.monitor import serve_monitor
from gateway.receiver.backend import Backend, BackendError, SqliteBackend, StreamSession
from gateway.receiver.metrics import ReceiverMetrics, timed_verify
from gateway.receiver.store import Checked, IngestResult, ReceiverStore
from gateway.uplink import protocol as proto

__all__ = ["PATH", "ReceiverHandle", "ReceiverSettings", "serve_receiver"]

log = structlog.get_logger(__name__)

PATH = "/v1/stream"
MAX_FRAME = 16 * 1024 * 1024
MAX_EVENTS_PER_FRAME = 10_000
# Bytes per read from the connection: trio-websocket's default (4 KiB) means ~20 reads, each a
# TLS record and a wsproto pass, for one 200-event frame.
RECEIVE_BUFFER = 64 * 1024
HELLO_TIMEOUT_S = 10.0
VERIFY_THREADS = max(1, min(4, os.cpu_count() or 1))
# Frames of at most this many events are verified in the event loop (< 1 ms of CPU).
INLINE_VERIFY_MAX = 8
# Frames read ahead of the commit (verifying meanwhile); the gateway's window (8) bounds it too.
PIPELINE_FRAMES = 16
# Frames committed in one transaction at most, when that many are verified and waiting.
GROUP_FRAMES_MAX = 16
# SQLite cannot notify another process's insert; looking for new pending commands this often is
# one indexed query per connected gateway, and bounds the delay of a CLI-submitted command.
COMMAND_CHECK_S = 0.25


@dataclass(frozen=True, kw_only=True)
class ReceiverSettings:
    host: str = "127.0.0.1"
    port: int = 0
    db_path: Path | None = None  # the SQLite store (required unless `jetstream` is set)
    certfile: Path | None = None
    keyfile: Path | None = None
    command_check_s: float = COMMAND_CHECK_S
    # Set: a stateless receiver on NATS JetStream (gateway/platform), db_path unused.
    jetstream: Any = None  # gateway.platform.backend.NatsSettings (nats-py is an extra)
    # Set: serve /metrics and /health there (docs/platform.md "Metrics").
    metrics: MonitorSection | None = None


@dataclass(frozen=True)
class ReceiverHandle:
    port: int
    url: str
    store: ReceiverStore | None  # the SQLite store; None on JetStream
    receiver: _Receiver = field(repr=False)
    metrics_port: int | None = None  # the /metrics listener's port, when one was asked for

    @property
    def metrics(self) -> ReceiverMetrics:
        return self.receiver.metrics

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
        await ws.aclose(code, proto.close_reason(message))


async def _close_backend(ws: WebSocketConnection, err: BackendError) -> None:
    """A 4xxx close (4004: taken over) gets its error frame first (P-CLOSE-1); a 1011 (the
    store is unavailable for now) is a bare close: the gateway reads an error frame before
    its welcome as a refusal (long backoff), and this one is cured by retrying soon."""
    if err.code >= 4000:
        await _close(ws, err.code, str(err))
        return
    with trio.move_on_after(1):
        await ws.aclose(err.code, proto.close_reason(str(err)))


class _Receiver:
    def __init__(self, backend: Backend, command_check_s: float = COMMAND_CHECK_S,
                 metrics: ReceiverMetrics | None = None) -> None:
        self.backend = backend
        self.metrics = metrics = metrics or ReceiverMetrics(type(backend).__name__)
        self.open_connections = 0
        metrics.connections_open = lambda: self.open_connections
        self.command_check_s = command_check_s
        self.verifiers = trio.CapacityLimiter(VERIFY_THREADS)
        self.commands_done = trio.Event()
        self.live: dict[str, _Live] = {}  # gateway id -> its current connection
        self.throttle = LogThrottle(60.0)  # refusals by anyone with a token: bounded lines

    async def _close(self, ws: WebSocketConnection, code: int, message: str) -> None:
        self.metrics.refused(code)
        await _close(ws, code, message)

    async def _close_backend(self, ws: WebSocketConnection, err: BackendError) -> None:
        self.metrics.refused(err.code)
        await _close_backend(ws, err)

    async def submit_command(self, gateway_id: str, name: str, target: dict[str, Any] | None,
                             args: dict[str, Any] | None, command_id: str | None) -> str:
        return await self.backend.add_command(gateway_id, name, target, args, command_id)

    async def wait_command(self, command_id: str) -> dict[str, Any]:
        while True:
            # Answered here, or (JetStream) on another receiver: the backend says "changed".
            done, changed = self.commands_done, self.backend.commands_changed()
            row = await self.backend.command(command_id)
            if row is None:
                raise KeyError(command_id)
            if row["status"] == "done":
                return row
            async with trio.open_nursery() as first:
                for event in (done, changed):
                    first.start_soon(_set_then_cancel, event, first.cancel_scope)

    async def _send_commands(self, ws: WebSocketConnection, gid: str) -> None:
        include_sent = True  # a new connection: what was sent before may never have arrived
        try:
            while True:
                added = self.backend.commands_changed()
                try:
                    rows = await self.backend.open_commands(gid, include_sent)
                except BackendError as err:
                    # Commands wait; the stream goes on (and this is tried again soon).
                    log.warning("receiver cannot read commands", gateway_id=gid, error=str(err))
                    rows = []
                else:
                    include_sent = False
                for row in rows:
                    await ws.send_message(proto.encode(proto.Command(
                        row["id"], row["name"], row["target"], row["args"])))
                    log.info("receiver command sent", gateway_id=gid, command_id=row["id"],
                             name=row["name"])
                if rows:
                    try:
                        await self.backend.mark_sent(gid, [row["id"] for row in rows])
                    except BackendError as err:  # still pending: sent again, answered once
                        log.warning("receiver cannot mark commands sent", gateway_id=gid,
                                    error=str(err))
                # Woken at once by submit_command; otherwise look again after command_check_s
                # for rows another process inserted (see COMMAND_CHECK_S).
                with trio.move_on_after(self.command_check_s):
                    await added.wait()
        except ConnectionClosed:
            return  # the reading side sees the close too and ends the session

    async def _command_result(self, gid: str, message: proto.CommandResult) -> None:
        try:
            stored = await self.backend.complete_command(gid, message.id, message.result,
                                                         message.reason, message.data)
        except BackendError as err:
            # Not stored: the command stays open and is re-sent on the next connection, where
            # the gateway answers it from its record without running it again (G-CMD-2).
            log.warning("receiver cannot store a command result", gateway_id=gid,
                        command_id=message.id, error=str(err))
            return
        if stored:
            log.info("receiver command done", gateway_id=gid, command_id=message.id,
                     result=message.result, reason=message.reason)
            self.commands_done.set()
            self.commands_done = trio.Event()
        else:
            log.warning("receiver command result for no open command", gateway_id=gid,
                        command_id=message.id)

    async def _verify(self, frame: _Frame, keys: dict[str, VerifyKey]) -> None:
        """The stateless checks of one frame in a worker thread (libsodium releases the GIL, so
        frames behind it verify on the other core meanwhile); wakes whoever waits on `frame`.
        A frame of a few events (venue load) is verified here: a thread hop would cost more."""
        try:
            if len(frame.raws) <= INLINE_VERIFY_MAX:
                checked, wall, cpu = timed_verify(frame.raws, keys)
            else:
                checked, wall, cpu = await trio.to_thread.run_sync(
                    timed_verify, frame.raws, keys, limiter=self.verifiers)
            self.metrics.verify_seconds.observe(wall)
            self.metrics.verify_cpu.inc(cpu)
            frame.checked = checked
        finally:
            frame.verified.set()

    async def handle(self, request: WebSocketRequest) -> None:
        if request.path.split("?")[0] != PATH:
            self.metrics.upgrade_refusals.labels("404").inc()
            await request.reject(404, body=b"not found\n")
            return
        token = _bearer(request)
        if token is None:
            self.metrics.upgrade_refusals.labels("401").inc()
            await request.reject(401, extra_headers=[(b"www-authenticate", b"Bearer")],
                                 body=b"bearer token required\n")
            return
        try:
            known = await self.backend.token_known(token)
        except BackendError as err:
            # Not a refusal (that would be 403 and a 300 s backoff): unavailable, retry soon.
            log.warning("receiver store unavailable", error=str(err))
            self.metrics.upgrade_refusals.labels("503").inc()
            await request.reject(503, body=b"store unavailable, retry\n")
            return
        if not known:
            log.warning("receiver refused unknown token", remote=str(request.remote))
            self.metrics.upgrade_refusals.labels("403").inc()
            await request.reject(403, body=b"forbidden\n")
            return
        ws = await request.accept()
        self.metrics.connections.inc()
        self.open_connections += 1
        try:
            await self._session(ws, token)
        except ConnectionClosed:
            pass
        except (BackendError, BaseExceptionGroup) as err:
            # The store failed where no caller handles it: this connection ends (1011, the
            # gateway retries), never the receiver with it.
            found = _only_backend_errors(err)
            if found is None:
                raise
            log.warning("receiver store unavailable", error=str(found))
            await self._close_backend(ws, found)
        finally:
            self.open_connections -= 1

    async def _hello(self, ws: WebSocketConnection) -> proto.Hello | None:
        """The connection's first frame, which must be a hello in time; None: closed."""
        with trio.move_on_after(HELLO_TIMEOUT_S) as scope:
            frame = await ws.get_message()
        if scope.cancelled_caught:
            await self._close(ws, proto.CLOSE_PROTOCOL, "no hello")
            return None
        try:
            hello = proto.decode(frame)
            if not isinstance(hello, proto.Hello):
                raise proto.ProtocolViolation(f"expected hello, got {type(hello).__name__}")
        except proto.ProtocolViolation as violation:
            repeated = self.throttle.admit(f"hello {violation.code}", trio.current_time())
            if repeated is not None:
                log.warning("receiver refused hello", code=violation.code,
                            reason=str(violation)[:200], remote=str(ws.remote), repeated=repeated)
            await self._close(ws, violation.code, str(violation))
            return None
        return hello

    async def _session(self, ws: WebSocketConnection, token: str) -> None:
        hello = await self._hello(ws)
        if hello is None:
            return
        gid, epoch = hello.gateway_id, hello.epoch
        allowed = await self.backend.check_token(gid, token)
        if not allowed:
            log.warning("receiver refused gateway", gateway_id=gid, reason="token mismatch")
            await self._close(ws, proto.CLOSE_AUTH, "token does not belong to this gateway")
            return
        me = _Live(ws)
        previous, self.live[gid] = self.live.get(gid), me
        try:
            if previous is not None:
                # The newer connection takes over; the old one stops committing before the
                # welcome's mark is read (docs/uplink-protocol.md P-TAKEOVER-1).
                log.warning("receiver connection taken over", gateway_id=gid)
                await previous.supersede()
            try:
                # Another receiver of the same store may hold the gateway: it stops too.
                await self.backend.take_over(gid)
                release = await self.backend.claim(gid, me.supersede)
            except BackendError as err:
                log.warning("receiver store unavailable", gateway_id=gid, error=str(err))
                await self._close_backend(ws, err)
                return
            try:
                try:
                    stream = await self.backend.open_stream(gid, epoch)
                except BackendError as err:
                    log.warning("receiver store unavailable", gateway_id=gid, error=str(err))
                    await self._close_backend(ws, err)
                    return
                await ws.send_message(proto.encode(proto.Welcome(epoch, stream.high_water)))
                log.info("receiver gateway connected", gateway_id=gid, epoch=epoch,
                         high_water=stream.high_water)
                with me.scope:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._send_commands, ws, gid)
                        try:
                            await self._stream(ws, gid, epoch, stream)
                        except ConnectionClosed:
                            pass
                        nursery.cancel_scope.cancel()
            finally:
                me.done.set()  # commits nothing more: the newer connection may read the mark
                with trio.CancelScope(shield=True):
                    await release()
            if me.superseded:
                await self._close(ws, proto.CLOSE_SUPERSEDED,
                                  "a newer connection of this gateway took over")
        finally:
            if self.live.get(gid) is me:
                del self.live[gid]
            me.done.set()

    async def _stream(self, ws: WebSocketConnection, gid: str, epoch: str,
                      stream: StreamSession) -> None:
        """Read frames and start verifying each at once; `_commit_frames` stores them in order.

        A pipeline, so both cores work: while one group of frames commits (and fsyncs), the
        frames behind it are verified in worker threads. What reaches the store, and when the
        ack goes out, is exactly as if each frame were handled alone, in order."""
        send, receive = trio.open_memory_channel[_Frame](PIPELINE_FRAMES)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._commit_frames, ws, gid, epoch, stream, receive,
                               nursery.cancel_scope)
            async with send:
                while True:
                    try:
                        data = await ws.get_message()
                    except ConnectionClosed:
                        return  # what is verified still commits; its acks cannot be sent
                    try:
                        message = proto.decode(data, max_events=MAX_EVENTS_PER_FRAME)
                        if not isinstance(message, proto.Events | proto.CommandResult):
                            raise proto.ProtocolViolation(f"unexpected {type(message).__name__}")
                        if isinstance(message, proto.CommandResult):
                            _check_result(message)
                    except proto.ProtocolViolation as violation:
                        # The frames before it are committed and acked first, then the close.
                        await send.send(_Frame([], violation=violation))
                        return
                    if isinstance(message, proto.CommandResult):
                        await self._command_result(gid, message)
                        continue
                    frame = _Frame(list(message.events))
                    nursery.start_soon(self._verify, frame, stream.keys)
                    await send.send(frame)

    async def _commit_frames(self, ws: WebSocketConnection, gid: str, epoch: str,
                             stream: StreamSession,
                             receive: trio.MemoryReceiveChannel[_Frame],
                             stream_scope: trio.CancelScope) -> None:
        """Commit verified frames in order, several per transaction when they are ready
        together; after each commit, one ack per frame. On a bad event or a protocol violation,
        ack what was committed, close, and stop the stream."""
        waiting: deque[_Frame] = deque()
        async with receive:
            while True:
                if not waiting:
                    try:
                        waiting.append(await receive.receive())
                    except trio.EndOfChannel:
                        return
                while len(waiting) < PIPELINE_FRAMES:  # and whatever else has arrived
                    try:
                        waiting.append(receive.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                head = waiting[0]
                if head.violation is not None:
                    await self._close(ws, head.violation.code, str(head.violation))
                    stream_scope.cancel()
                    return
                await head.verified.wait()
                group: list[_Frame] = []
                while (waiting and waiting[0].violation is None and waiting[0].verified.is_set()
                       and len(group) < GROUP_FRAMES_MAX):
                    group.append(waiting.popleft())
                if any(frame.checked is None for frame in group):
                    return  # a verification failed (its error ends the stream's nursery)
                started = trio.current_time()
                try:
                    results = await stream.ingest([frame.checked for frame in group])
                except BackendError as err:
                    log.warning("receiver cannot store", gateway_id=gid, epoch=epoch,
                                error=str(err), code=err.code)
                    await self._close_backend(ws, err)
                    stream_scope.cancel()
                    return
                self._count(results, trio.current_time() - started)
                # Committed: now (and only now) the acks, one per frame.
                try:
                    for result in results:
                        await ws.send_message(proto.encode(proto.Ack(epoch, result.high_water)))
                except ConnectionClosed:
                    stream_scope.cancel()
                    return
                error = results[-1]
                if error.error:
                    log.warning("receiver rejected batch", gateway_id=gid, epoch=epoch,
                                error=error.error, code=error.error_code)
                    await self._close(ws, error.error_code, error.error)
                    stream_scope.cancel()
                    return

    def _count(self, results: list[IngestResult], seconds: float) -> None:
        m = self.metrics
        m.store_seconds.observe(seconds)
        for result in results:
            if not result.error:
                m.batches.inc()
            m.events.inc(result.stored)
            m.duplicates.inc(result.duplicates)


def _only_backend_errors(err: BaseException) -> BackendError | None:
    """`err` if it is a BackendError, or the first one of a group made only of them."""
    if isinstance(err, BackendError):
        return err
    if isinstance(err, BaseExceptionGroup):
        found, rest = err.split(BackendError)
        if found is not None and rest is None:
            while isinstance(found, BaseExceptionGroup):
                found = found.exceptions[0]
            return found  # type: ignore[return-value]
    return None


async def _set_then_cancel(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _check_result(message: proto.CommandResult) -> None:
    """A command_result is stored as JSON: its data must be JSON-shaped and within budget (a
    bytes map key, which msgpack allows, raised TypeError in the store), else a violation."""
    try:
        check_plain(message.data, max_depth=16, max_items=10_000)
    except InputRejected as err:
        raise proto.ProtocolViolation(f"command_result: data {err}") from None
    if len(message.id) > 256 or len(message.reason) > 4096:
        raise proto.ProtocolViolation("command_result: id or reason too long")


@dataclass(eq=False)
class _Live:
    """A gateway's current connection, so a newer one can take over."""

    ws: WebSocketConnection
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    done: trio.Event = field(default_factory=trio.Event)
    superseded: bool = False

    async def supersede(self) -> None:
        """Stop the old connection (it sends error + close 4004 itself) and return once it
        commits nothing more: a commit in progress finishes, its worker thread is not
        abandoned, and its ack is not sent."""
        self.superseded = True
        self.scope.cancel()
        await self.done.wait()


@dataclass(eq=False)
class _Frame:
    """One events frame in the pipeline: its events, then (once `verified`) their checks."""

    raws: list[bytes]
    checked: list[Checked] | None = None
    verified: trio.Event = field(default_factory=trio.Event)
    violation: proto.ProtocolViolation | None = None  # not events: close with this, in turn


async def serve_receiver(settings: ReceiverSettings, *,
                         task_status: trio.TaskStatus[ReceiverHandle] = trio.TASK_STATUS_IGNORED
                         ) -> None:
    """Serve until cancelled; `task_status.started(handle)` once listening."""
    ssl_ctx = None
    if settings.certfile is not None:
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.load_cert_chain(str(settings.certfile),
                                str(settings.keyfile) if settings.keyfile else None)
    store: ReceiverStore | None = None
    async with AsyncExitStack() as stack:
        backend: Backend
        if settings.jetstream is not None:
            from gateway.platform.backend import open_backend

            backend = await stack.enter_async_context(open_backend(settings.jetstream))
        else:
            if settings.db_path is None:
                raise ValueError("ReceiverSettings: db_path or jetstream is required")
            store = ReceiverStore(settings.db_path)
            stack.callback(store.close)
            backend = SqliteBackend(store)
        metrics = ReceiverMetrics("sqlite" if store is not None else "jetstream")
        if store is None:
            metrics.watch_platform(backend.platform)  # type: ignore[attr-defined]
        receiver = _Receiver(backend, settings.command_check_s, metrics)
        async with trio.open_nursery() as nursery:
            metrics_port = None
            if settings.metrics is not None:
                # The gateway's monitor listener, serving this registry (duck-typed Monitor).
                metrics_port = await nursery.start(serve_monitor, settings.metrics,
                                                   cast(Any, metrics))
            nursery.start_soon(partial(summarize_suppressed, receiver.throttle,
                                       "receiver: repeated refusals not logged one by one"))
            server = await nursery.start(partial(
                serve_websocket, receiver.handle, settings.host, settings.port, ssl_ctx,
                max_message_size=MAX_FRAME, receive_buffer_size=RECEIVE_BUFFER))
            port = server.port
            scheme = "wss" if ssl_ctx else "ws"
            handle = ReceiverHandle(port, f"{scheme}://{settings.host}:{port}{PATH}", store,
                                    receiver, metrics_port)
            log.info("receiver listening", url=handle.url,
                     store="jetstream" if store is None else str(settings.db_path))
            task_status.started(handle)
