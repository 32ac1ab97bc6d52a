"""HTTP on the feed's port: admission (connection caps), reading a request head within its limit,
routing (/health, /metrics, /feed, the board's static files), writing a response, and handing an
upgrade request's bytes on to trio-websocket (gateway/feed/session.py).

HTTP is parsed with h11. A request that asks to upgrade to a WebSocket at /feed is checked by the
session (origin, failed-auth rate limit) and then handed to trio-websocket by replaying the request
bytes into `wrap_server_stream`; everything else is answered here. docs/feed-protocol.md says why
this rather than hypercorn.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import h11
import structlog
import trio
import trio_websocket

from gateway.feed.protocol import dumps
from gateway.monitor import METRICS_TYPE

if TYPE_CHECKING:
    from gateway.feed.server import FeedServer
    from gateway.limits import Ticket

__all__ = ["CONTENT_TYPES", "MAX_HEADER_BYTES", "REASONS", "SECURITY_HEADERS", "STATIC_DIR",
           "HttpFront", "Prefixed", "header", "linger", "next_event", "refuse", "remote_address",
           "request_bytes", "respond", "same_origin"]

log = structlog.get_logger(__name__)

STATIC_DIR = Path(__file__).parent / "static"

REASONS = {431: b"Request Header Fields Too Large"}

MAX_HEADER_BYTES = 16_384   # request line and headers; more is answered with 431

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"cache-control", b"no-cache"),
    (b"content-security-policy",
     b"default-src 'self'; connect-src 'self'; frame-ancestors 'none'"),
]

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
                 ".png": "image/png", ".ico": "image/x-icon", ".json": "application/json"}

class Prefixed(trio.abc.Stream):
    """A stream that first yields bytes already read by h11, so trio-websocket sees the upgrade
    request as if it had read it itself."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes) -> None:
        self._stream = stream
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self._stream.aclose()


REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\n"
            b"content-length: 18\r\nconnection: close\r\nretry-after: 5\r\n\r\n"
            b"too many requests\n")


async def refuse(stream: trio.abc.Stream) -> None:
    """Answer a connection over a cap with 503 (plain HTTP only: a TLS handshake would cost
    more than the answer is worth) and close it."""
    if isinstance(stream, trio.SocketStream):
        with trio.move_on_after(1.0):
            try:
                await stream.send_all(REFUSED)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
    await trio.aclose_forcefully(stream)


def remote_address(stream: trio.abc.Stream) -> str:
    inner = getattr(stream, "transport_stream", stream)
    try:
        return str(inner.socket.getpeername()[0])  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        return "unknown"


def header(request: h11.Request, name: bytes) -> bytes:
    values = [value for key, value in request.headers if key == name]
    return b", ".join(values)


def same_origin(origin: str, host: str) -> bool:
    return bool(host) and origin.split("://", 1)[-1] == host


def request_bytes(request: h11.Request) -> bytes:
    lines = [b"%s %s HTTP/%s" % (request.method, request.target, request.http_version)]
    lines += [name + b": " + value for name, value in request.headers.raw_items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def linger(stream: trio.abc.Stream) -> None:
    """Half-close and read what the client still sends, briefly: closing a socket with unread
    input makes the kernel send a reset, which can destroy the response before it is read."""
    with trio.move_on_after(1.0):
        if isinstance(stream, trio.SocketStream):
            await stream.send_eof()
        while await stream.receive_some(MAX_HEADER_BYTES):
            pass


async def next_event(conn: h11.Connection, stream: trio.abc.Stream) -> Any:
    """The next h11 event, reading as needed; None once the peer has closed."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            # h11 checks its limit only between reads, so reading 16 KiB at a time let a head
            # grow to nearly 32 KiB: never read past MAX_HEADER_BYTES of unparsed input.
            room = MAX_HEADER_BYTES - len(conn.trailing_data[0])
            if room <= 0 and conn.their_state is h11.IDLE:
                raise h11.RemoteProtocolError("request head too large", 431)
            conn.receive_data(await stream.receive_some(max(room, 1)))
            continue
        if isinstance(event, h11.ConnectionClosed):
            return None
        return event


async def respond(conn: h11.Connection, stream: trio.abc.Stream, status: int, body: bytes,
                  content_type: str, extra: list[tuple[bytes, bytes]] | None = None, *,
                  head: bool = False) -> None:
    headers = [(b"content-type", content_type.encode()),
               (b"content-length", str(len(body)).encode()), *SECURITY_HEADERS, *(extra or [])]
    if status >= 400:
        headers.append((b"connection", b"close"))
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
    if body and not head:
        await stream.send_all(conn.send(h11.Data(data=body)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


class HttpFront:
    """Serves one accepted connection: admits it (or refuses it over a cap), answers its
    requests, hands a /feed upgrade to the sessions. Only files listed from the static directory
    at start are served: no client path reaches open()."""

    def __init__(self, server: FeedServer) -> None:
        self.server = server
        self._static = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file()}

    async def serve_connection(self, stream: trio.abc.Stream) -> None:
        server = self.server
        remote = remote_address(stream)
        ticket = server.admission.admit(remote)
        if isinstance(ticket, str):
            server.metrics.refused.labels(ticket).inc()
            server.note("feed connection refused: cap reached", f"refused:{ticket}",
                        client=remote, reason=ticket)
            await refuse(stream)
            return
        try:
            await self._serve_http(stream, remote, ticket)
            await linger(stream)
        except* (trio.BrokenResourceError, trio.ClosedResourceError,
                 trio_websocket.ConnectionClosed, h11.RemoteProtocolError):
            pass  # the client went away, sent garbage, or failed its TLS handshake
        except* Exception as group:
            # A bulkhead, deliberately: a bug reached from one client's input must not stop
            # the polling of the floor. It is a bug all the same: counted, logged with its
            # traceback (once a minute at most), and the connection is closed.
            server.metrics.handler_errors.inc()
            if server.throttle.admit("handler_bug", trio.current_time()) is not None:
                log.error("feed connection failed: a bug, please report it", client=remote,
                          exc_info=group)
        finally:
            ticket.release()
            await trio.aclose_forcefully(stream)

    async def _serve_http(self, stream: trio.abc.Stream, remote: str, ticket: Ticket) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        timeout = self.server.settings.header_timeout_s
        while True:
            request = None
            with trio.move_on_after(timeout):
                try:
                    request = await next_event(conn, stream)
                except h11.RemoteProtocolError as err:
                    # h11 will not frame a response to a request it could not parse: write
                    # the error by hand and close.
                    await stream.send_all(
                        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\n"
                        b"content-length: 12\r\nconnection: close\r\n\r\nbad request\n"
                        % (err.error_status_hint, REASONS.get(err.error_status_hint,
                                                             b"Bad Request")))
                    return
            if not isinstance(request, h11.Request):
                return
            if request.method not in (b"GET", b"HEAD"):
                await respond(conn, stream, 405, b"method not allowed\n", "text/plain",
                              [(b"allow", b"GET, HEAD")])
                return
            target = request.target.split(b"?", 1)[0].decode("ascii", "replace")
            # A WebSocket opening handshake is a GET (RFC 6455 4.1); a HEAD asking to upgrade
            # is answered as a HEAD, headers only (h11 refuses a body after one).
            upgrade = request.method == b"GET" \
                and header(request, b"upgrade").lower() == b"websocket"
            # Read to the end of the request (a GET has no body); an upgrade request then
            # pauses h11, which leaves any bytes after it in `trailing_data`.
            end = None
            with trio.move_on_after(timeout):
                end = await next_event(conn, stream)
                while end is not None and end is not h11.PAUSED and upgrade:
                    end = await next_event(conn, stream)
            if end is None:
                return
            if upgrade:
                await self.server.sessions.upgrade(conn, stream, request, target, remote, ticket)
                return
            status, body, ctype, *extra = await self._route(target, remote)
            await respond(conn, stream, status, body, ctype, *extra,
                          head=request.method == b"HEAD")
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _route(self, target: str, remote: str) -> tuple[Any, ...]:
        """(status, body, content type[, extra headers]) for a plain GET or HEAD."""
        server = self.server
        if target == "/health":
            code, body = server.health()
            return code, dumps(body).encode(), "application/json"
        if target == "/feed":
            # A plain GET of the feed's URL: how a page learns why its WebSocket handshake
            # failed (browsers hide the status): 429 while this address is blocked.
            now = trio.current_time()
            if server.limiter.blocked(remote, now):
                retry = server.limiter.retry_after(remote, now)
                return 429, b"too many failed authentications\n", "text/plain", \
                    [(b"retry-after", str(retry).encode())]
            return 426, b"the feed is a WebSocket: send Upgrade: websocket\n", "text/plain", \
                [(b"upgrade", b"websocket")]
        if target == "/metrics":
            return 200, await server.monitor.scrape(), METRICS_TYPE
        name = "index.html" if target in ("/", "/index.html") else (
            target.removeprefix("/static/") if target.startswith("/static/") else None)
        path = self._static.get(name) if name else None
        if path is not None:
            return 200, await trio.Path(path).read_bytes(), \
                CONTENT_TYPES.get(path.suffix, "application/octet-stream")
        return 404, b"not found\n", "text/plain"
