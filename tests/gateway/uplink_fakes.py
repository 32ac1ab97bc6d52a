"""Fakes for the uplink tests: an in-memory outbox holding really signed events, a loopback
platform (TLS material, registration), a fake machine driver, and a TCP proxy that cuts
connections and drops or injects WebSocket frames."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import nacl.signing
import trio

from drivers.base import (
    CommandOutcome,
    CommandResult,
    EventSink,
    MachineCommand,
    PortStatistics,
)
from gateway.events import CATALOGUE, rfc3339
from gateway.signing import GENESIS, Signer, canonical, decode_envelope, seal
from gateway.uplink import protocol as proto


class FakeOutbox:
    def __init__(self, signer: Signer | None = None, *, gateway_id: str = "gw-test",
                 epoch: str | None = None) -> None:
        self.signer = signer or Signer(nacl.signing.SigningKey.generate())
        self.gateway_id = gateway_id
        self.epoch = epoch or os.urandom(8).hex()
        self.kids = [self.signer.kid]
        self.rows: list[bytes] = []
        self.delivered_seq = 0
        self.system: list[tuple[str, dict[str, Any]]] = []
        self._last_hash = GENESIS
        self._changed = trio.Event()
        self.max_read_seq = 0  # the highest seq the client has read: how far ahead it ran

    # -- test helpers --------------------------------------------------------------------------

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def append(self, event_type: str = "betPlaced", data: dict[str, Any] | None = None) -> int:
        seq = len(self.rows) + 1
        envelope = {
            "event": event_type, "channel": CATALOGUE[event_type].channel,
            "schema_version": CATALOGUE[event_type].version,
            "id": f"{self.gateway_id}:{self.epoch}:{seq}", "seq": seq, "epoch": self.epoch,
            "gateway_id": self.gateway_id, "venue": "test-venue", "region": "test-region",
            "machine": {"port": "sim0", "address": 1} if event_type == "betPlaced" else None,
            "timestamp": rfc3339(time.time()), "trace_id": os.urandom(8).hex(),
            "data": data if data is not None else {"wager": {"minor": 100, "currency": "USD"}},
        }
        sealed, raw = seal(envelope, self._last_hash, self.signer)
        self._last_hash = sealed["hash"]
        self.rows.append(raw)
        self._wake()
        return seq

    def extend(self, count: int) -> int:
        for _ in range(count):
            self.append()
        return len(self.rows)

    def corrupt_signature(self, seq: int) -> None:
        """Flip one bit of the stored signature of `seq` (the row stays well-formed msgpack)."""
        envelope = decode_envelope(self.rows[seq - 1])
        sig = bytearray(envelope["sig"])
        sig[0] ^= 0x01
        envelope["sig"] = bytes(sig)
        self.rows[seq - 1] = canonical(envelope)

    @property
    def last_seq(self) -> int:
        return len(self.rows)

    async def wait_delivered(self, seq: int) -> None:
        while self.delivered_seq < seq:
            await self._changed.wait()

    # -- the outbox contract -------------------------------------------------------------------

    async def read_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        await trio.lowlevel.checkpoint()
        rows = [(i + 1, self.rows[i]) for i in range(seq, min(len(self.rows), seq + limit))]
        if rows:
            self.max_read_seq = max(self.max_read_seq, rows[-1][0])
        return rows

    async def wait_appended(self, after_seq: int) -> None:
        while len(self.rows) <= after_seq:
            await self._changed.wait()

    may_start_new_epoch = False  # a witness was present at open (the real outbox's default)

    async def start_new_epoch(self, high_water: int) -> None:
        await trio.lowlevel.checkpoint()
        self.may_start_new_epoch = False
        self.epoch, self.rows, self.delivered_seq = os.urandom(8).hex(), [], 0
        self._last_hash = GENESIS
        self.append("lossMarker", {"reason": "rollback", "last_seq": high_water})

    async def mark_delivered(self, seq: int) -> None:
        await trio.lowlevel.checkpoint()
        if seq > self.delivered_seq:
            self.delivered_seq = seq
            self._wake()

    async def append_system(self, event_type: str, data: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        self.system.append((event_type, data))
        self.append(event_type, data)


def envelope_types(rows: list[bytes]) -> list[str]:
    return [msgpack.unpackb(r)["event"] for r in rows]


# -- a loopback platform: TLS material, a started receiver, a started client -----------------------

class Pki:
    """A trustme CA, a server certificate for 127.0.0.1, and the files both sides need."""

    def __init__(self, directory: Path) -> None:
        import trustme

        self.ca = trustme.CA()
        server = self.ca.issue_cert("127.0.0.1")
        self.ca_file = directory / "ca.pem"
        self.server_pem = directory / "server.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        server.private_key_and_cert_chain_pem.write_to_path(str(self.server_pem))

    def other_ca_file(self, directory: Path) -> Path:
        import trustme

        path = directory / "other-ca.pem"
        trustme.CA().cert_pem.write_to_path(str(path))
        return path


def write_token(directory: Path, token: str, name: str = "token") -> Path:
    path = directory / name
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def register(store: Any, outbox: FakeOutbox, token: str) -> None:
    store.register(outbox.gateway_id, token, bytes(outbox.signer.verify_key).hex())


# -- a machine driver that counts what it is asked to do ------------------------------------------

OK = CommandOutcome(CommandResult.OK)


class FakeDriver:
    """drivers.base.Driver for one port: records every command, answers `outcome`; while `gate` is
    set, each command waits for it (a slow machine)."""

    def __init__(self, port: str = "sas0",
                 outcome: CommandOutcome = OK) -> None:
        self.port = port
        self.outcome = outcome
        self.executed: list[MachineCommand] = []
        self.gate: trio.Event | None = None
        self._called = trio.Event()

    async def run(self, sink: EventSink, *,
                  task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    async def execute(self, command: MachineCommand) -> CommandOutcome:
        self.executed.append(command)
        self._called.set()
        self._called = trio.Event()
        if self.gate is not None:
            await self.gate.wait()
        return self.outcome

    async def wait_executed(self, count: int) -> None:
        while len(self.executed) < count:
            await self._called.wait()

    def statistics(self) -> PortStatistics:
        return PortStatistics(self.port, "running")


# -- a TCP proxy between the uplink client and the receiver ----------------------------------------

def ws_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """One unmasked (server -> client) WebSocket frame."""
    n = len(payload)
    if n < 126:
        header = bytes([0x80 | opcode, n])
    elif n < 65536:
        header = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
    return header + payload


class _FrameFilter:
    """Passes the HTTP upgrade through, then whole WebSocket frames; `keep(message)` decides for
    each binary frame that decodes as a protocol message (anything else passes)."""

    def __init__(self, keep: Callable[[proto.Message], bool]) -> None:
        self.keep = keep
        self.buffer = b""
        self.upgraded = False

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out = b""
        if not self.upgraded:
            head, sep, rest = self.buffer.partition(b"\r\n\r\n")
            if not sep:
                return out
            out, self.buffer, self.upgraded = head + sep, rest, True
        while len(self.buffer) >= 2:
            b0, b1 = self.buffer[0], self.buffer[1]
            n, i = b1 & 0x7F, 2
            if n == 126:
                if len(self.buffer) < 4:
                    break
                n, i = int.from_bytes(self.buffer[2:4], "big"), 4
            elif n == 127:
                if len(self.buffer) < 10:
                    break
                n, i = int.from_bytes(self.buffer[2:10], "big"), 10
            mask = b""
            if b1 & 0x80:
                mask, i = self.buffer[i:i + 4], i + 4
            if len(self.buffer) < i + n:
                break
            frame, payload = self.buffer[:i + n], self.buffer[i:i + n]
            self.buffer = self.buffer[i + n:]
            if mask:
                payload = bytes(c ^ mask[k % 4] for k, c in enumerate(payload))
            if b0 & 0x0F == 0x2:
                try:
                    message = proto.decode(payload)
                except proto.ProtocolViolation:
                    message = None
                if message is not None and not self.keep(message):
                    continue
            out += frame
        return out


@dataclass(eq=False)
class _Conn:
    scope: trio.CancelScope
    to_client: trio.SocketStream
    lock: trio.Lock = field(default_factory=trio.Lock)


class Proxy:
    """Listens on loopback and forwards each connection to `upstream_port`.

    - `cut_after`: per accepted connection, in order, the number of client -> server bytes after
      which it is cut (mid-frame, both sides closed); connections beyond the list are not cut.
    - `drop_acks_above`: drop ack frames whose seq is above this (None: drop none).
    - `drop_results`: drop command_result frames (gateway -> platform) while True.
    - `cut()` cuts the current connections now; `inject(message)` sends a frame to the client(s).
    - `results`: every command_result the gateway sent, dropped or not.
    """

    def __init__(self, upstream_port: int, cut_after: list[int] | None = None) -> None:
        self.upstream_port = upstream_port
        self.cut_after = list(cut_after or [])
        self.drop_acks_above: int | None = None
        self.drop_results = False
        self.connections = 0
        self.cuts = 0
        self.acks_dropped = 0
        self.commands_seen = 0
        self.results: list[proto.CommandResult] = []
        self.port = 0
        self._live: set[_Conn] = set()
        self._changed = trio.Event()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(trio.serve_tcp, self._handle, 0)
            self.port = listeners[0].socket.getsockname()[1]
            task_status.started(self.port)

    def cut(self) -> None:
        for conn in list(self._live):
            conn.scope.cancel()

    async def inject(self, payload: bytes) -> None:
        """Send one binary frame holding `payload` to the gateway, between whole frames."""
        for conn in list(self._live):
            async with conn.lock:
                await conn.to_client.send_all(ws_frame(payload))

    def _keep_from_server(self, message: proto.Message) -> bool:
        if isinstance(message, proto.Command):
            self.commands_seen += 1
            self._wake()
        if (isinstance(message, proto.Ack) and self.drop_acks_above is not None
                and message.seq > self.drop_acks_above):
            self.acks_dropped += 1
            self._wake()
            return False
        return True

    def _keep_from_client(self, message: proto.Message) -> bool:
        if isinstance(message, proto.CommandResult):
            self.results.append(message)
            self._wake()
            return not self.drop_results
        return True

    async def _handle(self, client: trio.SocketStream) -> None:
        budget = self.cut_after[self.connections] if self.connections < len(self.cut_after) else None
        self.connections += 1
        self._wake()
        try:
            server = await trio.open_tcp_stream("127.0.0.1", self.upstream_port)
        except OSError:
            await client.aclose()
            return
        conn = _Conn(trio.CancelScope(), client)
        self._live.add(conn)
        try:
            with conn.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump_up, client, server, budget, conn)
                    nursery.start_soon(self._pump_down, server, conn)
        finally:
            self._live.discard(conn)
            if conn.scope.cancelled_caught:
                self.cuts += 1
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(client)
                await trio.aclose_forcefully(server)
            self._wake()

    async def _pump_up(self, client: trio.SocketStream, server: trio.SocketStream,
                       budget: int | None, conn: _Conn) -> None:
        filt = _FrameFilter(self._keep_from_client)
        sent = 0
        while True:
            try:
                data = await client.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                conn.scope.cancel()
                return
            if budget is not None and sent + len(data) >= budget:
                # Forward the first bytes only, then cut: the receiver sees half a frame.
                await server.send_all(data[:budget - sent])
                conn.scope.cancel()
                return
            sent += len(data)
            out = filt.feed(data)
            if out:
                await server.send_all(out)

    async def _pump_down(self, server: trio.SocketStream, conn: _Conn) -> None:
        filt = _FrameFilter(self._keep_from_server)
        while True:
            try:
                data = await server.receive_some(65536)
            except trio.BrokenResourceError:
                data = b""
            if not data:
                conn.scope.cancel()
                return
            out = filt.feed(data)
            if out:
                async with conn.lock:
                    await conn.to_client.send_all(out)


def assert_exactly_once(store: Any, gateway_id: str, epoch: str,
                        keys: dict[str, nacl.signing.VerifyKey], last_seq: int) -> None:
    """The platform holds seq 1..last_seq, each once, and the chain verifies end to end."""
    from gateway.verify import verify_events

    stored = store.events(gateway_id, epoch)
    assert [seq for seq, _ in stored] == list(range(1, last_seq + 1))
    report = verify_events(stored, keys)
    assert report.ok, report.reason
    assert report.checked == last_seq
