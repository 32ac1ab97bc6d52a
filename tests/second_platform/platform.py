"""A second, minimal platform for the uplink protocol, written from docs/uplink-protocol.md alone
(asyncio `websockets`, in memory; imports nothing from `gateway`). QUESTIONS.md beside it lists
what its writer had to ask and where the spec now answers it.

`flaws` switches on deliberate violations, one rule each (see FLAWS), for the conformance kit's
own test: a platform with flaw F must fail exactly rule FLAWS[F].
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import struct
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import msgpack
import nacl.exceptions
import nacl.signing
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

# flaw -> the spec rule it breaks
FLAWS = {
    "any-path": "P-TRANSPORT-1",
    "no-401": "P-AUTH-1",
    "unknown-token-401": "P-AUTH-2",
    "any-token": "P-AUTH-3",
    "no-welcome": "P-HELLO-1",
    "lenient-first": "P-HELLO-2",
    "any-epoch": "P-HELLO-2",
    "strict-kids": "P-HELLO-3",
    "sig-over-body": "P-VERIFY-1",
    "ack-ahead": "P-ACK-1",
    "one-stream-per-gateway": "P-EPOCH-1",
    "ignore-unknown-type": "P-FRAME-1",
    "strict-keys": "P-FRAME-2",
    "refuse-duplicates": "P-DUP-1",
    "refuse-gaps": "P-GAP-1",
    "refuse-bad-link": "P-LINK-1",
    "no-hash-check": "P-VERIFY-2",
    "unknown-kid-accepted": "P-VERIFY-3",
    "no-stream-check": "P-STREAM-1",
    "drop-prefix": "P-REFUSE-1",
    "schema-strict": "P-SCHEMA-1",
    "no-rotation": "P-ROTATE-1",
    "small-frames": "P-SIZE-1",
    "no-takeover": "P-TAKEOVER-1",
    "command-before-welcome": "P-CMD-1",
    "no-resend": "P-CMD-2",
    "close-on-unknown-result": "P-CMD-3",
    "no-error-frames": "P-CLOSE-1",
}
KNOWN_TYPES = frozenset({"hello", "welcome", "events", "ack", "error", "command",
                         "command_result"})
KNOWN_EVENTS = frozenset({"gameSelected", "betPlaced", "keyRotated", "gatewayStarted"})
HELLO_KEYS = {"type", "proto", "gateway_id", "epoch", "kids"}
ZERO = bytes(32)
HEX = frozenset("0123456789abcdef")


def _is_epoch(value: str) -> bool:
    """Section 5: 8 random bytes as 16 lowercase hex characters."""
    return len(value) == 16 and set(value) <= HEX


# -- spec section 4: canonical bytes, written from the byte table ---------------------------------

def _uint(value: int, small: int, forms: tuple[tuple[int, int, str], ...]) -> bytes:
    for limit, tag, fmt in forms:
        if value < limit:
            return bytes([tag]) + struct.pack(fmt, value)
    raise ValueError("too long")


def canonical(value: Any) -> bytes:
    if value is None:
        return b"\xc0"
    if value is True:
        return b"\xc3"
    if value is False:
        return b"\xc2"
    if isinstance(value, int):
        if 0 <= value <= 0x7F:
            return bytes([value])
        if -32 <= value < 0:
            return struct.pack(">b", value)
        if value >= 0:
            for limit, tag, fmt in ((1 << 8, 0xCC, ">B"), (1 << 16, 0xCD, ">H"),
                                    (1 << 32, 0xCE, ">I"), (1 << 64, 0xCF, ">Q")):
                if value < limit:
                    return bytes([tag]) + struct.pack(fmt, value)
        for limit, tag, fmt in ((1 << 7, 0xD0, ">b"), (1 << 15, 0xD1, ">h"),
                                (1 << 31, 0xD2, ">i"), (1 << 63, 0xD3, ">q")):
            if -limit <= value:
                return bytes([tag]) + struct.pack(fmt, value)
        raise ValueError("integer out of range")
    if isinstance(value, float):
        return b"\xcb" + struct.pack(">d", value)
    if isinstance(value, str):
        raw = value.encode("utf-8")
        head = bytes([0xA0 | len(raw)]) if len(raw) < 32 else _uint(
            len(raw), 0, ((1 << 8, 0xD9, ">B"), (1 << 16, 0xDA, ">H"), (1 << 32, 0xDB, ">I")))
        return head + raw
    if isinstance(value, bytes):
        return _uint(len(value), 0, ((1 << 8, 0xC4, ">B"), (1 << 16, 0xC5, ">H"),
                                     (1 << 32, 0xC6, ">I"))) + value
    if isinstance(value, list | tuple):
        head = bytes([0x90 | len(value)]) if len(value) < 16 else _uint(
            len(value), 0, ((1 << 16, 0xDC, ">H"), (1 << 32, 0xDD, ">I")))
        return head + b"".join(canonical(v) for v in value)
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: k.encode("utf-8"))
        head = bytes([0x80 | len(keys)]) if len(keys) < 16 else _uint(
            len(keys), 0, ((1 << 16, 0xDE, ">H"), (1 << 32, 0xDF, ">I")))
        return head + b"".join(canonical(k) + canonical(value[k]) for k in keys)
    raise TypeError(f"no canonical form for {type(value).__name__}")


def kid_of(public_key: bytes) -> str:
    return "ed25519:" + hashlib.blake2b(public_key, digest_size=8).hexdigest()


# -- state ----------------------------------------------------------------------------------------

@dataclass
class Gateway:
    token_sha256: str
    keys: dict[str, nacl.signing.VerifyKey]
    commands: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> command, in order


@dataclass
class Stream:
    high_water: int = 0
    last_hash: bytes = ZERO
    events: dict[int, bytes] = field(default_factory=dict)


@dataclass(eq=False)
class Live:
    ws: ServerConnection
    superseded: bool = False


class Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class SecondPlatform:
    def __init__(self, flaws: frozenset[str] = frozenset()) -> None:
        unknown = flaws - FLAWS.keys()
        if unknown:
            raise ValueError(f"unknown flaws {sorted(unknown)}")
        self.flaws = flaws
        self.gateways: dict[str, Gateway] = {}
        self.streams: dict[tuple[str, str], Stream] = {}
        self.live: dict[str, Live] = {}
        self.tasks: set[asyncio.Future[None]] = set()  # take-over closes in progress
        self.port = 0

    # -- operator side --

    def register(self, gateway_id: str, public_key_file: str) -> str:
        """Register a gateway with its public key file (§3); returns the new token."""
        words = public_key_file.split()
        public = bytes.fromhex(words[0])
        kid = kid_of(public)
        if len(words) > 1 and words[1] != kid:
            raise ValueError(f"stated kid {words[1]} is not the key's kid {kid}")  # P-KEY-1
        token = uuid.uuid4().hex + uuid.uuid4().hex  # 256 bits, hex: P-TOKEN-1
        self.gateways[gateway_id] = Gateway(
            hashlib.sha256(token.encode("utf-8")).hexdigest(),
            {kid: nacl.signing.VerifyKey(public)})
        return token

    def queue_command(self, gateway_id: str, name: str, target: Any = None,
                      args: dict[str, Any] | None = None) -> str:
        command_id = "c-" + uuid.uuid4().hex
        self.gateways[gateway_id].commands[command_id] = {
            "id": command_id, "name": name, "target": target, "args": args or {},
            "status": "pending", "result": None}
        return command_id

    def stream(self, gateway_id: str, epoch: str) -> Stream:
        key = (gateway_id, "*" if "one-stream-per-gateway" in self.flaws else epoch)
        return self.streams.setdefault(key, Stream())

    # -- the endpoint --

    async def serve(self, started: asyncio.Event, stop: asyncio.Event) -> None:
        max_size = 256 * 1024 if "small-frames" in self.flaws else 16 * 1024 * 1024
        async with serve(self._handler, "127.0.0.1", 0, process_request=self._upgrade,
                         max_size=max_size, ping_interval=None, compression=None,
                         close_timeout=1) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            started.set()
            await stop.wait()

    def _upgrade(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?")[0] != "/v1/stream" and "any-path" not in self.flaws:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            status = HTTPStatus.FORBIDDEN if "no-401" in self.flaws else HTTPStatus.UNAUTHORIZED
            response = connection.respond(status, "bearer token required\n")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        digest = hashlib.sha256(token.encode("utf-8")).hexdigest()
        owner = next((g for g, gw in self.gateways.items()
                      if hmac.compare_digest(gw.token_sha256, digest)), None)
        if owner is None:
            status = (HTTPStatus.UNAUTHORIZED if "unknown-token-401" in self.flaws
                      else HTTPStatus.FORBIDDEN)
            return connection.respond(status, "forbidden\n")
        connection.token_owner = owner  # type: ignore[attr-defined]
        return None

    async def _send(self, ws: ServerConnection, body: dict[str, Any]) -> None:
        await ws.send(msgpack.packb(body, use_bin_type=True))

    async def _refuse(self, ws: ServerConnection, code: int, message: str) -> None:
        if "no-error-frames" not in self.flaws:
            try:
                await self._send(ws, {"type": "error", "code": code, "message": message})
            except ConnectionClosed:
                return
        await ws.close(code, message.encode("utf-8")[:123].decode("utf-8", "ignore"))

    async def _handler(self, ws: ServerConnection) -> None:
        try:
            await self._session(ws)
        except Refused as refused:
            await self._refuse(ws, refused.code, str(refused))
        except ConnectionClosed:
            pass

    def _frame(self, data: bytes | str) -> dict[str, Any]:
        if isinstance(data, str):
            raise Refused(4002, "text frame")
        try:
            body = msgpack.unpackb(data, raw=False)
        except Exception:
            raise Refused(4002, "frame is not msgpack") from None
        if not isinstance(body, dict):
            raise Refused(4002, "frame is not a map")
        if "strict-keys" in self.flaws and body.get("type") == "hello" \
                and set(body) - HELLO_KEYS:
            raise Refused(4002, "unknown keys")
        return body

    async def _session(self, ws: ServerConnection) -> None:
        owner = ws.token_owner  # type: ignore[attr-defined]
        gateway = self.gateways[owner]
        if "command-before-welcome" in self.flaws:
            await self._send_commands(ws, gateway, resend=True)
        while True:
            try:
                hello = self._frame(await asyncio.wait_for(ws.recv(), 10))
            except TimeoutError:
                raise Refused(4002, "no hello within 10 s") from None
            except Refused:
                if "lenient-first" in self.flaws:
                    continue
                raise
            if hello.get("type") == "hello" or "lenient-first" not in self.flaws:
                break
        if (hello.get("type") != "hello" or hello.get("proto") != 1
                or not isinstance(hello.get("gateway_id"), str)
                or not isinstance(hello.get("epoch"), str)
                or not isinstance(hello.get("kids"), list)
                or not (_is_epoch(hello["epoch"]) or "any-epoch" in self.flaws)):
            raise Refused(4002, "expected a hello (proto 1)")
        gid, epoch = hello["gateway_id"], hello["epoch"]
        if gid != owner and "any-token" not in self.flaws:
            raise Refused(4001, "token does not belong to this gateway")
        gateway = self.gateways.get(gid, gateway)
        if "strict-kids" in self.flaws and set(hello["kids"]) - gateway.keys.keys():
            raise Refused(4003, "unknown kid in hello")
        previous = self.live.get(gid)
        me = self.live[gid] = Live(ws)
        if previous is not None and "no-takeover" not in self.flaws:
            previous.superseded = True  # commits are synchronous: none after this line
            self.tasks.add(task := asyncio.ensure_future(
                self._refuse(previous.ws, 4004, "taken over")))
            task.add_done_callback(self.tasks.discard)
        try:
            if "no-welcome" not in self.flaws:
                await self._send(ws, {"type": "welcome", "epoch": epoch,
                                      "high_water": self.stream(gid, epoch).high_water})
            if "command-before-welcome" not in self.flaws:
                await self._send_commands(ws, gateway, resend="no-resend" not in self.flaws)
            async for data in ws:
                if me.superseded:
                    return
                await self._message(ws, gateway, gid, epoch, self._frame(data), me)
        finally:
            if self.live.get(gid) is me:
                del self.live[gid]

    async def _send_commands(self, ws: ServerConnection, gateway: Gateway, *,
                             resend: bool) -> None:
        for command in gateway.commands.values():
            if command["status"] == "pending" or (command["status"] == "sent" and resend):
                await self._send(ws, {"type": "command", "id": command["id"],
                                      "name": command["name"], "target": command["target"],
                                      "args": command["args"]})
                command["status"] = "sent"

    async def _message(self, ws: ServerConnection, gateway: Gateway, gid: str, epoch: str,
                       body: dict[str, Any], me: Live) -> None:
        kind = body.get("type")
        if kind == "command_result":
            command = gateway.commands.get(body.get("id"))
            if command is None or command["status"] == "done":
                if "close-on-unknown-result" in self.flaws:
                    raise Refused(4002, "result for an unknown command")
                return  # P-CMD-3: log and ignore
            command.update(status="done", result=body.get("result"))
            return
        if kind != "events":
            if kind in KNOWN_TYPES or "ignore-unknown-type" not in self.flaws:
                raise Refused(4002, f"unexpected frame {kind!r}")
            return
        events = body.get("events")
        if not isinstance(events, list) or not events or not all(
                isinstance(e, bytes) for e in events):
            raise Refused(4002, "events must be a non-empty list of bin")
        stream = self.stream(gid, epoch)
        staged: dict[int, bytes] = {}
        high_water, last_hash = stream.high_water, stream.last_hash
        refusal: Refused | None = None
        for raw in events:
            try:
                high_water, last_hash = self._one(gateway, gid, epoch, raw, high_water,
                                                  last_hash, staged)
            except Refused as refused:
                refusal = refused
                break
        if refusal is not None and "drop-prefix" in self.flaws:
            raise refusal
        # commit (in memory), then the ack: P-ACK-1
        stream.events.update(staged)
        stream.high_water, stream.last_hash = high_water, last_hash
        ack = high_water + (1 if "ack-ahead" in self.flaws else 0)
        await self._send(ws, {"type": "ack", "epoch": epoch, "seq": ack})
        if refusal is not None:
            raise refusal

    def _one(self, gateway: Gateway, gid: str, epoch: str, raw: bytes, high_water: int,
             last_hash: bytes, staged: dict[int, bytes]) -> tuple[int, bytes]:
        """§8 rules 1-8 for one event; returns the new (high_water, last_hash)."""
        try:
            env = msgpack.unpackb(raw, raw=False)
        except Exception:
            raise Refused(4002, "event is not msgpack") from None
        seq = env.get("seq") if isinstance(env, dict) else None
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise Refused(4002, "event without a valid seq")
        if env.get("epoch") != epoch or (env.get("gateway_id") != gid
                                         and "no-stream-check" not in self.flaws):
            raise Refused(4002, f"seq {seq} is not of stream ({gid}, {epoch})")
        if seq <= high_water:
            if "refuse-duplicates" in self.flaws:
                raise Refused(4002, f"duplicate seq {seq}")
            return high_water, last_hash  # rule 2
        digest = self._verify(gateway, env, seq)
        if seq > high_water + 1 and "refuse-gaps" in self.flaws:
            raise Refused(4002, f"gap before {seq}")
        if seq == high_water + 1 and env["prev_hash"] != last_hash \
                and "refuse-bad-link" in self.flaws:
            raise Refused(4003, f"seq {seq} does not link")
        if "schema-strict" in self.flaws and env.get("event") not in KNOWN_EVENTS:
            raise Refused(4002, f"unknown event type {env.get('event')!r}")
        staged[seq] = raw
        if env.get("event") == "keyRotated" and "no-rotation" not in self.flaws:
            data = env.get("data") or {}
            try:
                public = bytes.fromhex(data.get("new_public_key", ""))
                if kid_of(public) == data.get("new_kid"):
                    gateway.keys[data["new_kid"]] = nacl.signing.VerifyKey(public)
            except (ValueError, TypeError, nacl.exceptions.CryptoError):
                pass
        return seq, digest

    def _verify(self, gateway: Gateway, env: dict[str, Any], seq: int) -> bytes:
        """§4: hash over prev_hash || canonical(envelope - hash - sig); Ed25519 over the hash."""
        prev, digest, sig = env.get("prev_hash"), env.get("hash"), env.get("sig")
        if not (isinstance(prev, bytes) and len(prev) == 32 and isinstance(digest, bytes)
                and len(digest) == 32 and isinstance(sig, bytes) and len(sig) == 64):
            raise Refused(4003, f"seq {seq}: integrity fields missing or of the wrong size")
        body = canonical({k: v for k, v in env.items() if k not in ("hash", "sig")})
        if (hashlib.blake2b(prev + body, digest_size=32).digest() != digest
                and "no-hash-check" not in self.flaws):
            raise Refused(4003, f"seq {seq}: bad hash")
        key = gateway.keys.get(env.get("kid"))
        if key is None:
            if "unknown-kid-accepted" in self.flaws:
                return digest
            raise Refused(4003, f"seq {seq}: unknown kid {env.get('kid')}")
        signed = body if "sig-over-body" in self.flaws else digest
        try:
            key.verify(signed, sig)
        except nacl.exceptions.BadSignatureError:
            raise Refused(4003, f"seq {seq}: bad signature") from None
        return digest
