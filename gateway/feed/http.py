"""HTTP on the feed's port, the parts that are not the feed: reading a request head within its
limit, writing a response, refusing a connection over a cap, and handing the upgrade request's
bytes on to trio-websocket. gateway/feed/server.py decides what to answer.
"""

from __future__ import annotations

from typing import Any

import h11
import trio

__all__ = ["CONTENT_TYPES", "MAX_HEADER_BYTES", "REASONS", "SECURITY_HEADERS", "Prefixed",
           "header", "linger", "next_event", "refuse", "remote_address",
           "request_bytes", "respond", "same_origin"]

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
