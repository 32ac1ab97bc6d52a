"""The uplink client: streams the outbox to the platform over WSS (trio shell over protocol.py).

One connection at a time, forever:

    connect (TCP, TLS verified, WebSocket upgrade with the bearer token)   -- under one deadline
    hello -> welcome(high_water)                                           -- resume point
    sender:    read_after(next) in batches of batch_max, at most `window` frames in flight
    receiver:  ack -> outbox.mark_delivered(seq)   (cumulative; the platform committed first)
    heartbeat: ping every heartbeat_s, the pong must come within dead_after_s
    commands:  each platform command runs in its own task (outliving the connection it came on),
               through `command_handler(request, "platform")`; the answer goes out on whatever
               connection is up when it is ready (the platform re-sends unanswered ones)
    on loss:   uplinkDown event, backoff (jittered; long after a refusal), reconnect

trio-websocket has no keepalive and a failed TLS check can hang (python-trio/trio-websocket#199),
so this module does the TCP + TLS handshake itself (to name TLS failures precisely) and puts a
deadline on every step. The token is read from its file on each connect and never logged.
"""

from __future__ import annotations

import errno
import math
import random as _random
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog
import trio
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    wrap_client_stream,
)

from gateway.clock import clock_synchronised
from gateway.errors import GatewayError
from gateway.uplink import protocol as proto
from gateway.uplink.failures import (
    UplinkError,
    UplinkRejectedError,
    UplinkUnavailableError,
    first_failure,
    translate,
)

__all__ = [
    "CommandHandler",
    "OutboxLike",
    "UplinkClient",
    "UplinkError",
    "UplinkRejectedError",
    "UplinkSettings",
    "UplinkUnavailableError",
]

log = structlog.get_logger(__name__)

# Frames from the platform are small (welcome, ack, error); anything bigger is a fault.
MAX_SERVER_FRAME = 64 * 1024
# Commands executing at once; beyond that the platform is told "busy" and may ask again.
MAX_COMMANDS_RUNNING = 32

CommandHandler = Callable[[dict[str, Any], str], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class UplinkSettings:
    url: str | tuple[str, ...]  # one platform URL, or several in order (P-FAILOVER-1)
    token_file: Path
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    batch_max: int = 200
    window: int = 8
    heartbeat_s: float = 10.0
    dead_after_s: float = 30.0
    backoff_initial_s: float = 0.5
    backoff_max_s: float = 30.0
    rejected_backoff_s: float = 300.0
    connect_timeout_s: float = 10.0

    @property
    def urls(self) -> tuple[str, ...]:
        return (self.url,) if isinstance(self.url, str) else tuple(self.url)


class OutboxLike(Protocol):
    gateway_id: str
    epoch: str
    kids: list[str]
    delivered_seq: int
    last_seq: int

    async def read_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]: ...
    async def wait_appended(self, after_seq: int) -> None: ...
    async def mark_delivered(self, seq: int) -> None: ...
    async def append_system(self, event_type: str, data: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class _Target:
    secure: bool
    host: str
    port: int
    resource: str
    host_header: str


def _parse_url(url: str) -> _Target:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"uplink url must be ws:// or wss://host[:port]/path, not {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.hostname if port in (80, 443) else f"{parts.hostname}:{port}"
    return _Target(secure, parts.hostname, port, resource, host_header)


def _ssl_context(settings: UplinkSettings) -> ssl.SSLContext:
    # Verification is always on: create_default_context sets CERT_REQUIRED and check_hostname.
    ctx = ssl.create_default_context(
        cafile=str(settings.ca_file) if settings.ca_file else None)
    if settings.client_cert:
        ctx.load_cert_chain(str(settings.client_cert),
                            str(settings.client_key) if settings.client_key else None)
    return ctx


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as err:
        if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
            # The process (or the box) is out of descriptors for a moment, e.g. during a
            # connection flood on the feed: not a refusal, so no 300 s backoff.
            raise UplinkUnavailableError(f"cannot read token file {path}: {err.strerror}; "
                                         "retrying soon") from None
        raise UplinkRejectedError(f"cannot read token file {path}: {err.strerror}") from None
    if not token:
        raise UplinkRejectedError(f"token file {path} is empty")
    if not all(33 <= ord(c) <= 126 for c in token):
        # Never echo the token: say where it is and what is wrong with it.
        raise UplinkRejectedError(f"token file {path} holds characters not allowed in an "
                                  f"HTTP header (spaces, control or non-ASCII characters)")
    return token


class UplinkClient:
    """Streams `outbox` to the platform named by `settings`; `run` never returns on its own."""

    def __init__(self, settings: UplinkSettings, outbox: OutboxLike, *,
                 random: Callable[[], float] = _random.random,
                 command_handler: CommandHandler | None = None) -> None:
        self.settings = settings
        self.outbox = outbox
        self.command_handler = command_handler
        self._ws: WebSocketConnection | None = None  # the connection that is up, if any
        self._commands_running = 0
        self._commands_nursery: trio.Nursery | None = None
        self._random = random
        if not settings.urls:
            raise ValueError("uplink: at least one platform url is required")
        self._targets = [_parse_url(url) for url in settings.urls]
        self._current = 0  # the URL in use: kept while it works, the next after a failure
        self.state = "idle"  # idle, connecting, connected, backoff, rejected
        self._since = time.time()
        self._reconnects = 0
        self._attempts = 0
        self._last_ack_seq = 0
        self._last_error: str | None = None
        self._window_changed = trio.Event()
        self._changed = trio.Event()
        self._was_up = False
        self._outage_recorded = False  # an uplinkDown was recorded for the current outage
        self._alerted_mark = -1  # the last welcome mark beyond the outbox alerted (platformAhead)

    def statistics(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "connected": self.state == "connected",
            "since": self._since,
            "reconnects": self._reconnects,
            "attempts": self._attempts,
            "last_ack_seq": self._last_ack_seq,
            "last_error": self._last_error,
            "url": self.settings.urls[self._current],
        }

    async def wait_changed(self) -> None:
        """Return at the next change of `state` or `statistics()` (for status pages and tests)."""
        await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self._since = time.time()
        self._notify()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        secure = any(target.secure for target in self._targets)
        ssl_ctx = _ssl_context(self.settings) if secure else None
        async with trio.open_nursery() as commands:
            self._commands_nursery = commands
            task_status.started()
            await self._connect_forever(ssl_ctx)

    async def _connect_forever(self, ssl_ctx: ssl.SSLContext | None) -> None:
        failures = 0
        down_since = trio.current_time()
        while True:
            self._set_state("connecting")
            self._attempts += 1
            try:
                err = await self._one_session(ssl_ctx, down_since)
            finally:
                was_up = self._was_up
                self._was_up = False
            if was_up:
                failures = 0
                down_since = trio.current_time()
                await self.outbox.append_system("uplinkDown", {"reason": str(err)})
                self._reconnects += 1
            elif not self._outage_recorded:
                # An outage that began before the first connection is an outage too: recorded
                # once, at its start, so the record does not depend on the platform coming back.
                await self.outbox.append_system(
                    "uplinkDown", {"reason": f"never connected since start: {err}"})
            self._outage_recorded = True
            previous_error, self._last_error = self._last_error, str(err)
            if isinstance(err, UplinkRejectedError):
                self._set_state("rejected")
                delay = self.settings.rejected_backoff_s
                log.error("uplink refused", reason=str(err), retry_in_s=round(delay, 1))
            else:
                if not was_up:
                    # P-FAILOVER-1: a failed attempt moves to the next URL; a refusal does not
                    # (it is about the gateway), and a connection that worked is tried again.
                    self._current = (self._current + 1) % len(self._targets)
                self._set_state("backoff")
                delay = proto.backoff_delay(failures, initial=self.settings.backoff_initial_s,
                                            maximum=self.settings.backoff_max_s,
                                            random=self._random)
                failures += 1
                # One warning per outage or new reason; the same failure again is routine.
                repeat = not was_up and str(err) == previous_error
                (log.info if repeat else log.warning)(
                    "uplink down" if was_up else "uplink connect failed", reason=str(err),
                    retry_in_s=round(delay, 2), attempt=failures)
            await trio.sleep(delay)

    async def _one_session(self, ssl_ctx: ssl.SSLContext | None,
                           down_since: float) -> UplinkError:
        """One connection from attempt to end, and the uplink error it ended with; anything
        that is not a link failure (cancellation, a bug) propagates."""
        try:
            await self._session(ssl_ctx, down_since)
            return UplinkUnavailableError("connection ended")
        except BaseExceptionGroup as group:
            fatal, _ = group.split(lambda e: not isinstance(e, (Exception, BaseExceptionGroup)))
            if fatal is not None:
                # Cancelled / KeyboardInterrupt win; a link error racing them is moot.
                raise fatal from None
            found = first_failure(group)
            if found is None:
                raise
            return found
        except Exception as single:
            found = translate(single)
            if found is None:
                raise
            return found

    async def _connect(self, nursery: trio.Nursery, ssl_ctx: ssl.SSLContext | None
                       ) -> tuple[WebSocketConnection, trio.abc.Stream]:
        t = self._targets[self._current]
        token = _read_token(self.settings.token_file)
        phase = "tcp connect"
        with trio.move_on_after(self.settings.connect_timeout_s) as scope:
            stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
            stream = await trio.open_tcp_stream(t.host, t.port)
            try:
                if t.secure and ssl_ctx is not None:
                    phase = "tls handshake"
                    stream = trio.SSLStream(stream, ssl_ctx, server_hostname=t.host,
                                            https_compatible=True)
                    await stream.do_handshake()
                phase = "websocket upgrade"
                watched = _UpgradeWatch(stream)
                with trio.CancelScope() as watched.scope:
                    ws = await wrap_client_stream(
                        nursery, watched, t.host_header, t.resource,
                        extra_headers=[(b"authorization", f"Bearer {token}".encode())],
                        max_message_size=MAX_SERVER_FRAME)
                    watched.scope = None
                    return ws, stream
                raise UplinkUnavailableError("the platform closed the connection during the "
                                             "websocket upgrade")
            except BaseException:
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)
                raise
        assert scope.cancelled_caught
        if phase == "tls handshake":
            # Silence is not a certificate problem (a failed check raises at once): the
            # platform, or something on the way, accepted TCP and then stopped answering.
            raise UplinkUnavailableError(
                f"platform unresponsive: TCP connected but no TLS handshake within "
                f"{self.settings.connect_timeout_s:g} s")
        raise UplinkUnavailableError(f"connect timed out during {phase} "
                                     f"({self.settings.connect_timeout_s:g} s)")

    async def _session(self, ssl_ctx: ssl.SSLContext | None, down_since: float) -> None:
        s = self.settings
        async with trio.open_nursery() as conn_nursery:
            ws, stream = await self._connect(conn_nursery, ssl_ctx)
            close_code, close_reason = proto.CLOSE_GOING_AWAY, "gateway closing the connection"
            try:
                await ws.send_message(proto.encode(proto.Hello(
                    self.outbox.gateway_id, self.outbox.epoch,
                    tuple(self.outbox.kids[-proto.MAX_HELLO_KIDS:]))))
                with trio.move_on_after(s.connect_timeout_s) as waiting:
                    frame = await ws.get_message()
                if waiting.cancelled_caught:
                    raise UplinkUnavailableError(
                        f"no welcome within {s.connect_timeout_s:g} s of the hello")
                welcome = self._expect_welcome(frame)
                if welcome.high_water > self.outbox.last_seq:
                    await self._mark_beyond(ws, welcome.high_water)
                if welcome.high_water > self.outbox.delivered_seq:
                    await self.outbox.mark_delivered(welcome.high_water)
                self._last_ack_seq = welcome.high_water
                self._was_up = True
                self._outage_recorded = False
                down_for = round(max(0.0, trio.current_time() - down_since), 3)
                up: dict[str, Any] = {"down_for_s": down_for}
                if (synchronised := clock_synchronised()) is not None:
                    up["clock_synchronised"] = synchronised
                await self.outbox.append_system("uplinkUp", up)
                self._set_state("connected")
                log.info("uplink up", url=s.urls[self._current], high_water=welcome.high_water,
                         down_for_s=down_for)
                window = proto.Window(s.window, welcome.high_water)
                self._ws = ws
                async with trio.open_nursery() as tasks:
                    tasks.start_soon(self._sender, ws, window)
                    tasks.start_soon(self._receiver, ws, window)
                    tasks.start_soon(self._heartbeat, ws)
            except proto.ProtocolViolation as violation:
                await _refuse(ws, violation.code, str(violation))
                raise UplinkUnavailableError(f"platform broke the protocol: {violation}") from None
            finally:
                if self._ws is ws:
                    self._ws = None
                # When we are being cancelled the connection's reader task is too, so nobody
                # will see the peer's close reply: send our close frame and do not wait for it.
                grace = 0.05 if trio.current_effective_deadline() == -math.inf else 1.0
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(grace):
                        await ws.aclose(close_code, close_reason)
                    # trio-websocket leaves the TCP socket open after the closing handshake
                    # (the peer's FIN sat in CLOSE-WAIT through a 300 s rejected backoff).
                    await trio.aclose_forcefully(stream)
                conn_nursery.cancel_scope.cancel()

    async def _mark_beyond(self, ws: WebSocketConnection, high_water: int) -> None:
        """G-WELCOME-2/G-WELCOME-3: without a witness at start the platform's first mark beyond
        the outbox is a rollback (a new epoch, then a new session); otherwise it is refused."""
        if not self.outbox.may_start_new_epoch:
            await self._refuse_mark(ws, high_water)
        old = self.outbox.epoch
        await self.outbox.start_new_epoch(high_water)
        log.error("uplink platform mark beyond the outbox: rollback, new epoch",
                  high_water=high_water, previous_epoch=old, epoch=self.outbox.epoch)
        raise UplinkUnavailableError(
            f"welcome high_water {high_water} is beyond this outbox (a restored outbox): epoch "
            f"{old} ended, reconnecting with epoch {self.outbox.epoch}")

    async def _refuse_mark(self, ws: WebSocketConnection, high_water: int) -> None:
        """The platform says it holds events of this epoch beyond the last one this outbox
        wrote (an outbox restored from a backup, or the platform's store confused): never
        jump over them silently. Error frame, close 4002, an alert, the long backoff."""
        message = (f"welcome high_water {high_water} is beyond this gateway's last seq "
                   f"{self.outbox.last_seq} of epoch {self.outbox.epoch}")
        if self._alerted_mark != high_water:
            self._alerted_mark = high_water
            await self.outbox.append_system("platformAhead", {
                "high_water": high_water, "last_seq": self.outbox.last_seq})
        log.error("uplink platform mark beyond the outbox", high_water=high_water,
                  last_seq=self.outbox.last_seq, epoch=self.outbox.epoch,
                  action="refused; see docs/uplink-protocol.md section 5")
        await _refuse(ws, proto.CLOSE_PROTOCOL, message)
        raise UplinkRejectedError(f"refused the platform's welcome: {message}")

    def _expect_welcome(self, frame: bytes | str) -> proto.Welcome:
        message = proto.decode(frame)
        if isinstance(message, proto.Error):
            raise UplinkRejectedError(f"platform error {message.code}: {message.message}")
        if not isinstance(message, proto.Welcome):
            raise proto.ProtocolViolation(f"expected welcome, got {type(message).__name__}")
        if message.epoch != self.outbox.epoch:
            raise proto.ProtocolViolation(f"welcome for epoch {message.epoch!r}, ours is "
                                          f"{self.outbox.epoch!r}")
        return message

    async def _sender(self, ws: WebSocketConnection, window: proto.Window) -> None:
        s, epoch = self.settings, self.outbox.epoch
        while True:
            while not window.can_send:
                await self._window_changed.wait()
            batch = await self.outbox.read_after(window.next_after, s.batch_max)
            if self.outbox.epoch != epoch:  # a damaged file was replaced: a new stream
                raise UplinkUnavailableError(f"the outbox started epoch {self.outbox.epoch}")
            if not batch:
                await self.outbox.wait_appended(window.next_after)
                continue
            await ws.send_message(proto.encode(proto.Events(tuple(raw for _, raw in batch))))
            window.sent(batch[-1][0])

    async def _receiver(self, ws: WebSocketConnection, window: proto.Window) -> None:
        while True:
            frame = await ws.get_message()
            try:
                message = proto.decode(frame)
                if isinstance(message, proto.Ack) and message.epoch != self.outbox.epoch:
                    raise proto.ProtocolViolation(f"ack for epoch {message.epoch!r}")
                if isinstance(message, proto.Ack):
                    moved = window.acked(message.seq)
            except proto.ProtocolViolation as violation:
                await _refuse(ws, violation.code, str(violation))
                raise UplinkUnavailableError(
                    f"platform broke the protocol: {violation}") from None
            if isinstance(message, proto.Ack):
                if moved:
                    self._last_ack_seq = message.seq
                    await self.outbox.mark_delivered(message.seq)
                    self._notify()
                    self._window_changed.set()
                    self._window_changed = trio.Event()
            elif isinstance(message, proto.Command):
                self._start_command(message)
            elif isinstance(message, proto.Error):
                # The platform closes right after; the close code decides the backoff.
                self._last_error = f"platform error {message.code}: {message.message}"
                log.error("uplink platform error", code=message.code, message=message.message)
            else:
                why = f"unexpected {type(message).__name__} frame from the platform"
                await _refuse(ws, proto.CLOSE_PROTOCOL, why)
                raise UplinkUnavailableError(f"platform broke the protocol: {why}")

    def _start_command(self, command: proto.Command) -> None:
        if not command.id:
            answer = {"id": "", "result": "rejected",
                      "reason": "malformed command: id must be a non-empty string"}
        elif self.command_handler is None:
            answer = {"id": command.id, "result": "rejected", "reason": "commands not enabled"}
        elif self._commands_running >= MAX_COMMANDS_RUNNING:
            answer = {"id": command.id, "result": "failed",
                      "reason": f"busy: {MAX_COMMANDS_RUNNING} commands in progress, ask again"}
        else:
            assert self._commands_nursery is not None
            self._commands_running += 1
            self._commands_nursery.start_soon(self._run_command, command)
            return
        log.warning("uplink command refused", command_id=command.id, reason=answer["reason"])
        assert self._commands_nursery is not None
        self._commands_nursery.start_soon(self._send_result, answer)

    async def _run_command(self, command: proto.Command) -> None:
        assert self.command_handler is not None
        try:
            try:
                answer = await self.command_handler(command.request(), "platform")
            except GatewayError as err:
                # The handler's own expected failure (a store); anything else is a bug.
                log.error("uplink command failed", command_id=command.id, error=str(err))
                answer = {"id": command.id, "result": "failed", "reason": str(err)}
        finally:
            self._commands_running -= 1
        await self._send_result(answer)

    async def _send_result(self, answer: dict[str, Any]) -> None:
        result = proto.command_result(str(answer["id"]), str(answer["result"]),
                                      str(answer.get("reason") or ""), answer.get("data"))
        ws = self._ws
        if ws is None:
            # No connection now: the platform re-sends the command, which is answered from the
            # stored result without executing again.
            log.info("uplink command result not sent: link down", command_id=result.id)
            return
        try:
            await ws.send_message(proto.encode(result))
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            log.info("uplink command result not sent: link lost", command_id=result.id)

    async def _heartbeat(self, ws: WebSocketConnection) -> None:
        s = self.settings
        while True:
            await trio.sleep(s.heartbeat_s)
            try:
                with trio.fail_after(s.dead_after_s):
                    await ws.ping()
            except trio.TooSlowError:
                raise UplinkUnavailableError(
                    f"platform did not answer a ping within {s.dead_after_s:g} s") from None


class _UpgradeWatch(trio.abc.Stream):
    """The connection's stream, watched until the WebSocket upgrade is done.

    trio-websocket does not wake its handshake waiter when the stream ends during the upgrade, so
    a connection dropped at that moment would otherwise cost the whole connect_timeout_s: the
    end of the stream cancels `scope` (set while the upgrade runs, None after)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.scope: trio.CancelScope | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self.inner.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._ended()
            raise
        if not data:
            self._ended()
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()

    def _ended(self) -> None:
        if self.scope is not None:
            self.scope.cancel()


async def _refuse(ws: WebSocketConnection, code: int, message: str) -> None:
    """Our own protocol close: an `error` frame saying why, then the close with `code` (the
    close reason is cut to fit a control frame; the error frame carries the whole message)."""
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        try:
            await ws.send_message(proto.encode(proto.Error(code, message)))
        except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            return
        await ws.aclose(code, proto.close_reason(message))
