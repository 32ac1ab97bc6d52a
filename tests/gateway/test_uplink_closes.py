"""How the gateway ends a connection (docs/uplink-protocol.md section 8): an error frame with the
reason before each of its own 4xxx closes, the closing handshake completed and the socket closed
after a platform's refusal, a welcome mark beyond the outbox refused, a silent TLS peer named."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
)

from gateway.signing import decode_envelope
from gateway.uplink import protocol as proto
from gateway.uplink.client import UplinkClient, UplinkSettings
from tests.gateway.uplink_fakes import FakeOutbox, write_token

FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, connect_timeout_s=5.0)


@dataclass
class Seen:
    """What the scripted platform saw of one connection."""

    messages: list[proto.Message] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str = ""
    eof: trio.Event = field(default_factory=trio.Event)


Script = Callable[["RawPlatform", trio.SocketStream, WSConnection], Awaitable[None]]


class RawPlatform:
    """A platform on wsproto over a raw socket, so a test controls every frame and sees the TCP
    end: upgrade, hello, welcome(high_water), then `script`; records what the gateway sent."""

    def __init__(self, outbox: FakeOutbox, script: Script, high_water: int = 0) -> None:
        self.outbox = outbox
        self.script = script
        self.high_water = high_water
        self.connections: list[Seen] = []
        self.changed = trio.Event()

    def _note(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def wait(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self.changed.wait()

    async def send(self, stream: trio.SocketStream, ws: WSConnection, message: proto.Message
                   ) -> None:
        await stream.send_all(ws.send(BytesMessage(data=proto.encode(message))))

    async def read(self, stream: trio.SocketStream, ws: WSConnection, seen: Seen) -> bool:
        """Read what arrives; answer the handshake, pings and closes. False at EOF."""
        data = await stream.receive_some(65536)
        if not data:
            seen.eof.set()
            self._note()
            return False
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, Request):
                await stream.send_all(ws.send(AcceptConnection()))
            elif isinstance(event, Ping):
                await stream.send_all(ws.send(event.response()))
            elif isinstance(event, BytesMessage):
                seen.messages.append(proto.decode(bytes(event.data)))
            elif isinstance(event, CloseConnection):
                seen.close_code, seen.close_reason = event.code, event.reason or ""
                if ws.state.name == "REMOTE_CLOSING":
                    await stream.send_all(ws.send(event.response()))
        self._note()
        return True

    async def handle(self, stream: trio.SocketStream) -> None:
        seen = Seen()
        self.connections.append(seen)
        ws = WSConnection(ConnectionType.SERVER)
        while not seen.messages:
            if not await self.read(stream, ws, seen):
                return
        await self.send(stream, ws, proto.Welcome(self.outbox.epoch, self.high_water))
        await self.script(self, stream, ws)
        while await self.read(stream, ws, seen):
            pass


async def run_against(platform: RawPlatform, tmp_path: Path, done: Callable[[], bool],
                      **overrides: object) -> UplinkClient:
    """Run a client against `platform` until `done()` and the client has given up on that
    connection (state rejected or backoff)."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, platform.handle, 0,
                                                host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        settings = UplinkSettings(url=f"ws://127.0.0.1:{port}/v1/stream",
                                  token_file=write_token(tmp_path, "tok"),
                                  **{**FAST, **overrides})  # type: ignore[arg-type]
        client = UplinkClient(settings, platform.outbox)
        await nursery.start(client.run)
        await platform.wait(done)
        while client.statistics()["state"] not in ("rejected", "backoff"):
            await client.wait_changed()
        nursery.cancel_scope.cancel()
    return client


async def ack_beyond(platform: RawPlatform, stream: trio.SocketStream, ws: WSConnection) -> None:
    await platform.send(stream, ws, proto.Ack(platform.outbox.epoch, 10**9))


async def test_the_gateway_says_why_before_its_own_close(tmp_path: Path) -> None:
    outbox = FakeOutbox()
    outbox.extend(3)
    platform = RawPlatform(outbox, ack_beyond)
    with trio.fail_after(10):
        await run_against(platform, tmp_path,
                          lambda: bool(platform.connections and platform.connections[0].eof.is_set()))
    seen = platform.connections[0]
    errors = [m for m in seen.messages if isinstance(m, proto.Error)]
    assert len(errors) == 1
    assert errors[0].code == proto.CLOSE_PROTOCOL and "was sent" in errors[0].message
    assert seen.close_code == proto.CLOSE_PROTOCOL and "was sent" in seen.close_reason


async def refuse_4003(platform: RawPlatform, stream: trio.SocketStream, ws: WSConnection) -> None:
    seen = platform.connections[-1]
    while not any(isinstance(m, proto.Events) for m in seen.messages):
        await platform.read(stream, ws, seen)
    await platform.send(stream, ws, proto.Error(proto.CLOSE_INTEGRITY, "seq 1: bad-signature"))
    await stream.send_all(ws.send(CloseConnection(proto.CLOSE_INTEGRITY, "bad-signature")))
    # The platform keeps its side open: the gateway must answer the close and end TCP itself.


async def test_a_refusal_gets_the_closing_handshake_and_the_socket_closed(tmp_path: Path) -> None:
    outbox = FakeOutbox()
    outbox.extend(2)
    platform = RawPlatform(outbox, refuse_4003)
    with trio.fail_after(10):
        client = await run_against(
            platform, tmp_path,
            lambda: bool(platform.connections and platform.connections[0].eof.is_set()),
            rejected_backoff_s=300.0)
    seen = platform.connections[0]
    assert seen.close_code == proto.CLOSE_INTEGRITY  # the gateway's close reply
    assert seen.eof.is_set()  # and then its FIN, not a socket left in CLOSE-WAIT
    assert client.statistics()["state"] == "rejected"


async def idle(platform: RawPlatform, stream: trio.SocketStream, ws: WSConnection) -> None:
    return


async def test_a_welcome_mark_beyond_the_last_seq_is_refused_never_jumped(tmp_path: Path) -> None:
    outbox = FakeOutbox()
    outbox.extend(5)
    platform = RawPlatform(outbox, idle, high_water=9)
    with trio.fail_after(10):
        client = await run_against(
            platform, tmp_path,
            lambda: bool(platform.connections and platform.connections[0].eof.is_set()),
            rejected_backoff_s=300.0)
    seen = platform.connections[0]
    errors = [m for m in seen.messages if isinstance(m, proto.Error)]
    assert errors and errors[0].code == proto.CLOSE_PROTOCOL
    assert "beyond this gateway's last seq 5" in errors[0].message
    assert seen.close_code == proto.CLOSE_PROTOCOL
    assert not any(isinstance(m, proto.Events) for m in seen.messages)
    assert outbox.delivered_seq == 0  # nothing marked delivered: no silent jump
    stats = client.statistics()
    assert stats["state"] == "rejected" and "beyond" in stats["last_error"]
    # An alert (a platform error, the witness says so); never counted as up; the outage since
    # start is recorded once (the floor issue's rule).
    assert [t for t, _ in outbox.system] == ["platformAhead", "uplinkDown"]
    assert outbox.system[0][1] == {"high_water": 9, "last_seq": 5}
    assert outbox.system[1][1]["reason"].startswith("never connected since start")


async def test_a_mark_of_2_pow_62_is_refused_and_never_jumped(tmp_path: Path) -> None:
    outbox = FakeOutbox()
    outbox.extend(3)
    platform = RawPlatform(outbox, idle, high_water=2 ** 62)
    with trio.fail_after(10):
        await run_against(
            platform, tmp_path,
            lambda: bool(platform.connections and platform.connections[0].eof.is_set()),
            rejected_backoff_s=300.0)
    assert platform.connections[0].close_code == proto.CLOSE_PROTOCOL
    assert outbox.delivered_seq == 0 and outbox.epoch == platform.connections[0].messages[0].epoch


async def new_stream_after(platform: RawPlatform, stream: trio.SocketStream,
                           ws: WSConnection) -> None:
    platform.high_water = 0  # the next hello names a new stream: P-EPOCH-1


async def test_without_a_witness_the_first_mark_beyond_starts_a_new_epoch(tmp_path: Path) -> None:
    outbox = FakeOutbox()
    outbox.may_start_new_epoch = True  # a restore on a new box: no witness at open
    outbox.extend(5)
    old_epoch = outbox.epoch
    platform = RawPlatform(outbox, new_stream_after, high_water=9)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, platform.handle, 0,
                                                    host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            client = UplinkClient(UplinkSettings(
                url=f"ws://127.0.0.1:{port}/v1/stream", token_file=write_token(tmp_path, "tok"),
                **FAST), outbox)  # type: ignore[arg-type]
            await nursery.start(client.run)
            await platform.wait(lambda: len(platform.connections) >= 2 and any(
                isinstance(m, proto.Events) for m in platform.connections[1].messages))
            nursery.cancel_scope.cancel()
    hellos = [c.messages[0] for c in platform.connections[:2]]
    assert hellos[0].epoch == old_epoch and hellos[1].epoch == outbox.epoch != old_epoch
    assert not any(isinstance(m, proto.Error) for m in platform.connections[0].messages)
    sent = next(m for m in platform.connections[1].messages if isinstance(m, proto.Events))
    assert decode_envelope(sent.events[0])["event"] == "lossMarker"


async def silent_tls_peer(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()  # accepts TCP, never answers the TLS ClientHello


async def test_a_silent_peer_is_not_called_a_certificate_problem(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    outbox = FakeOutbox()
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, silent_tls_peer, 0,
                                                    host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            settings = UplinkSettings(url=f"wss://127.0.0.1:{port}/v1/stream",
                                      token_file=write_token(tmp_path, "tok"),
                                      backoff_initial_s=0.01, backoff_max_s=0.05,
                                      connect_timeout_s=10.0)
            client = UplinkClient(settings, outbox)
            await nursery.start(client.run)
            while client.statistics()["last_error"] is None:
                await client.wait_changed()
            error = client.statistics()["last_error"]
            nursery.cancel_scope.cancel()
    assert "TLS verification" not in error and "certificate" not in error
    assert "platform unresponsive" in error and "10 s" in error


def test_close_codes_decide_the_backoff_as_the_spec_table_says() -> None:
    """docs/uplink-protocol.md section 9: refusals wait rejected_backoff_s; 4004 (taken over)
    and the network's closes use the ordinary backoff."""
    from trio_websocket import ConnectionClosed
    from trio_websocket._impl import CloseReason

    from gateway.uplink.failures import UplinkRejectedError, UplinkUnavailableError, translate

    def after(code: int) -> type:
        return type(translate(ConnectionClosed(CloseReason(code, "why"))))

    for code in (proto.CLOSE_AUTH, proto.CLOSE_PROTOCOL, proto.CLOSE_INTEGRITY):
        assert after(code) is UplinkRejectedError
    for code in (1000, 1001, 1006, 1009, 1011, proto.CLOSE_SUPERSEDED):
        assert after(code) is UplinkUnavailableError
