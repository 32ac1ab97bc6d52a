"""The conformance kit's tools: a platform connection seen from the gateway side, and event
streams signed exactly as docs/uplink-protocol.md section 4 says (with deliberate faults).

A `Conn` records everything the platform sent and how it closed, so the kit can judge the rule
"an error frame precedes every 4xxx close" (P-CLOSE-1) over all connections of a run."""

from __future__ import annotations

import os
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import nacl.signing
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from gateway.events import CATALOGUE
from gateway.signing import GENESIS, INTEGRITY_FIELDS, Signer, canonical, chain_hash, seal
from gateway.uplink import protocol as proto

__all__ = ["Blocked", "Closed", "Conn", "EventStream", "Failed", "Kit", "Settings", "TimedOut"]


class Failed(Exception):
    """The platform broke the rule being checked; the message says what was seen."""


class TimedOut(Failed):
    pass


class Blocked(Exception):
    """The check cannot judge its rule because another rule it needs failed (a SKIP)."""


class Closed(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"closed {code} {reason!r}")
        self.code = code


@dataclass(frozen=True)
class Settings:
    url: str
    gateway_id: str
    token: str
    other_gateway_id: str
    other_token: str
    ca_file: str | None = None
    command_pending: bool = False
    timeout_s: float = 5.0


@dataclass
class CloseSeen:
    code: int | None
    error_codes: list[int]


@dataclass
class Kit:
    """One run: the settings, the signing key the platform registered, and what was seen."""

    settings: Settings
    signer: Signer
    closes: list[CloseSeen] = field(default_factory=list)
    conns: list[Conn] = field(default_factory=list)  # every connection of the run, in order

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.settings.url.startswith("wss://"):
            return None
        return ssl.create_default_context(cafile=self.settings.ca_file)

    def new_epoch(self) -> str:
        return os.urandom(8).hex()

    def stream(self, epoch: str | None = None, gateway_id: str | None = None) -> EventStream:
        return EventStream(gateway_id or self.settings.gateway_id, epoch or self.new_epoch(),
                           self.signer)

    @asynccontextmanager
    async def connect(self, *, token: str | None = None, path: str | None = None,
                      authorization: str | None = "bearer") -> AsyncIterator[Conn]:
        """A WebSocket to the platform; raises ConnectionRejected for an HTTP answer."""
        url = self.settings.url
        if path is not None:
            base, _, _ = url.partition("/v1/stream")
            url = base + path
        headers = []
        if authorization == "bearer":
            headers.append((b"authorization",
                            f"Bearer {token or self.settings.token}".encode()))
        async with open_websocket_url(url, self.ssl_context(), extra_headers=headers,
                                      connect_timeout=self.settings.timeout_s,
                                      disconnect_timeout=1,
                                      max_message_size=16 * 1024 * 1024) as ws:
            conn = Conn(ws, self.settings.timeout_s)
            self.conns.append(conn)
            try:
                yield conn
            finally:
                if conn.closed is not None:
                    self.closes.append(CloseSeen(conn.closed.code, conn.error_codes))

    async def http_status(self, **kwargs: Any) -> int | None:
        """The HTTP status the upgrade was refused with, None if it was accepted."""
        try:
            async with self.connect(**kwargs):
                return None
        except ConnectionRejected as rejected:
            return rejected.status_code

    @asynccontextmanager
    async def session(self, stream: EventStream, *, kids: tuple[str, ...] | None = None,
                      token: str | None = None) -> AsyncIterator[tuple[Conn, proto.Welcome]]:
        """Connect, hello for `stream`, and the welcome."""
        async with self.connect(token=token) as conn:
            await conn.send(proto.Hello(stream.gateway_id, stream.epoch,
                                        kids or (self.signer.kid,)))
            message = await conn.next()
            if not isinstance(message, proto.Welcome):
                raise Failed(f"expected welcome, got {message!r}")
            yield conn, message


class Conn:
    """One connection: typed receive with a deadline; command frames are set aside."""

    def __init__(self, ws: Any, timeout_s: float) -> None:
        self.ws = ws
        self.timeout_s = timeout_s
        self.received: list[proto.Message] = []
        self.commands: list[proto.Command] = []
        self.error_codes: list[int] = []
        self.closed: Closed | None = None

    async def send(self, message: proto.Message) -> None:
        await self.ws.send_message(proto.encode(message))

    async def send_raw(self, data: bytes | str) -> None:
        await self.ws.send_message(data)

    async def next(self, *, keep_commands: bool = False) -> proto.Message:
        """The platform's next frame (commands skipped unless asked for); raises Closed or
        TimedOut."""
        while True:
            if self.closed is not None:
                raise self.closed
            with trio.move_on_after(self.timeout_s) as scope:
                try:
                    data = await self.ws.get_message()
                except ConnectionClosed as closed:
                    reason = closed.reason
                    self.closed = Closed(reason.code if reason else None,
                                         (reason.reason or "") if reason else "")
                    raise self.closed from None
            if scope.cancelled_caught:
                raise TimedOut(f"nothing from the platform within {self.timeout_s:g} s")
            try:
                message = proto.decode(data)
            except proto.ProtocolViolation as err:
                raise Failed(f"the platform sent an invalid frame: {err}") from None
            self.received.append(message)
            if isinstance(message, proto.Error):
                self.error_codes.append(message.code)
            if isinstance(message, proto.Command):
                self.commands.append(message)
                if not keep_commands:
                    continue
            return message

    async def ack(self) -> int:
        """The next ack's seq, skipping nothing else."""
        message = await self.next()
        if not isinstance(message, proto.Ack):
            raise Failed(f"expected an ack, got {message!r}")
        return message.seq

    async def until_closed(self) -> Closed:
        """Read (and keep) frames until the platform closes; return the close."""
        while True:
            try:
                await self.next()
            except Closed as closed:
                return closed


class EventStream:
    """Events of one (gateway_id, epoch), sealed by the project's signing code."""

    def __init__(self, gateway_id: str, epoch: str, signer: Signer) -> None:
        self.gateway_id = gateway_id
        self.epoch = epoch
        self.signer = signer
        self.seq = 0
        self.last_hash = GENESIS

    def envelope(self, seq: int, event_type: str = "gameSelected",
                 data: dict[str, Any] | None = None, gateway_id: str | None = None
                 ) -> dict[str, Any]:
        gid = gateway_id or self.gateway_id
        spec = CATALOGUE.get(event_type)
        return {
            "event": event_type, "channel": spec.channel if spec else "system",
            "schema_version": spec.version if spec else "1.0.0",
            "id": f"{gid}:{self.epoch}:{seq}", "seq": seq, "epoch": self.epoch,
            "gateway_id": gid, "venue": "conformance", "region": "conformance",
            "machine": None, "timestamp": "2026-11-21T05:56:12.000Z",
            "trace_id": os.urandom(8).hex(),
            "data": {"game_number": seq % 100} if data is None else data,
        }

    def next(self, count: int = 1, event_type: str = "gameSelected",
             data: dict[str, Any] | None = None, *, signer: Signer | None = None
             ) -> list[bytes]:
        """The next `count` events, correctly chained and signed."""
        out = []
        for _ in range(count):
            self.seq += 1
            sealed, raw = seal(self.envelope(self.seq, event_type, data), self.last_hash,
                               signer or self.signer)
            self.last_hash = sealed["hash"]
            out.append(raw)
        return out

    def skip(self, count: int) -> None:
        """Leave a gap of `count` seqs (their hashes never exist: the link breaks too)."""
        self.seq += count

    def faulty(self, fault: str, *, signer: Signer | None = None) -> bytes:
        """The next event with `fault` (the stream does not advance): tampered, bad-sig,
        body-signed, unknown-kid, wrong-link, foreign-gateway."""
        seq, signer = self.seq + 1, signer or self.signer
        env = self.envelope(seq, gateway_id="kit-foreign" if fault == "foreign-gateway" else None)
        prev = bytes(range(32)) if fault == "wrong-link" else self.last_hash
        sealed, _ = seal(env, prev, signer)
        if fault == "tampered":
            sealed["data"] = {"game_number": 999}
        elif fault == "bad-sig":
            sealed["sig"] = bytes([sealed["sig"][0] ^ 1]) + sealed["sig"][1:]
        elif fault == "body-signed":
            sealed["sig"] = signer.key.sign(canonical(sealed, without=("sig",))).signature
        elif fault == "unknown-kid":
            stranger = Signer(nacl.signing.SigningKey.generate())
            body = {k: v for k, v in sealed.items() if k not in INTEGRITY_FIELDS}
            body["kid"] = stranger.kid
            digest = chain_hash(prev, canonical(body))
            sealed = {**body, "hash": digest, "sig": stranger.key.sign(digest).signature}
        return canonical(sealed)
