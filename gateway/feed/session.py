"""One staff client's WebSocket session: the upgrade checks (origin, failed-login limit), the
handshake, authentication, then a reader that turns each message into the pure session's actions
(gateway/feed/protocol.py) and a sender that drains the client's bounded queue
(gateway/feed/fanout.py), merging waiting `events` frames and serving replays from the outbox.

Acknowledgements are appended to the outbox as `alertAcknowledged` events and fanned out before
the `ack_result`, so the acting client sees the new alert state first.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h11
import structlog
import trio
import trio_websocket

from drivers.base import MachineRef
from gateway import __version__
from gateway.errors import GatewayError, StoreError
from gateway.events import rfc3339, system_draft
from gateway.feed.fanout import CLOSE_TIMEOUT_S, Batch, Client, Item, live_frame, weight
from gateway.feed.http import Prefixed, header, request_bytes, respond, same_origin
from gateway.feed.protocol import (
    EVENTS_FRAME_OVERHEAD,
    POLICY_VIOLATION,
    SUBPROTOCOL,
    TOKEN_PREFIX,
    Acknowledge,
    Action,
    Authenticated,
    AuthFailed,
    Close,
    Command,
    FailureLimiter,
    FeedSession,
    History,
    Identity,
    Replay,
    Resync,
    Send,
    dumps,
    envelope_json,
    error,
    events_frame,
)
from gateway.limits import Ticket
from gateway.signing import decode_envelope

if TYPE_CHECKING:
    from gateway.feed.server import FeedServer

__all__ = ["Sessions"]

log = structlog.get_logger(__name__)

HANDSHAKE_TIMEOUT_S = 10.0
SHUTDOWN_CLOSE_S = 0.25     # per client, while the daemon stops
REPLAY_PAGE = 500


@dataclass(eq=False)
class _Attempt:
    """An authentication attempt in flight, counted by the limiter until `done()`."""

    limiter: FailureLimiter
    remote: str
    open: bool = True

    def done(self) -> None:
        if self.open:
            self.open = False
            self.limiter.end(self.remote)


class Sessions:
    """The WebSocket side of the feed server: `upgrade` serves one connection that asked for
    /feed until it closes. Reads the server's live settings, token table and limiter (a SIGHUP
    replaces them)."""

    def __init__(self, server: FeedServer) -> None:
        self.server = server
        self._acking: set[int] = set()

    async def upgrade(self, conn: h11.Connection, stream: trio.abc.Stream,
                      request: h11.Request, target: str, remote: str, ticket: Ticket) -> None:
        server = self.server
        if target != "/feed":
            await respond(conn, stream, 404, b"the feed is at /feed\n", "text/plain")
            return
        origin = header(request, b"origin").decode("latin-1")
        allowed = server.settings.allowed_origins
        if origin and allowed and origin not in allowed \
                and not same_origin(origin, header(request, b"host").decode("latin-1")):
            await respond(conn, stream, 403, b"origin not allowed\n", "text/plain")
            return
        now = trio.current_time()
        if server.limiter.blocked(remote, now):
            server.metrics.rate_limited.inc()
            server.note("feed login refused: too many attempts (429)", "429", client=remote)
            retry = str(server.limiter.retry_after(remote, now)).encode()
            await respond(conn, stream, 429, b"too many failed authentications\n", "text/plain",
                          [(b"retry-after", retry)])
            return
        # Counted from here, before any checkpoint: attempts in flight use up the budget too.
        server.limiter.begin(remote)
        attempt = _Attempt(server.limiter, remote)
        try:
            await self._websocket(conn, stream, request, remote, ticket, attempt)
        finally:
            attempt.done()

    async def _websocket(self, conn: h11.Connection, stream: trio.abc.Stream,
                         request: h11.Request, remote: str, ticket: Ticket,
                         attempt: _Attempt) -> None:
        offered = [p.strip() for p in header(request, b"sec-websocket-protocol")
                   .decode("latin-1").split(",") if p.strip()]
        token = next((p[len(TOKEN_PREFIX):] for p in offered if p.startswith(TOKEN_PREFIX)), None)
        # A browser fails the handshake unless the server picks one of the offered protocols.
        chosen = SUBPROTOCOL if SUBPROTOCOL in offered else (
            TOKEN_PREFIX + token if token is not None else None)
        raw = request_bytes(request) + conn.trailing_data[0]
        async with trio.open_nursery() as nursery:
            ws = None
            with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
                ws_request = await trio_websocket.wrap_server_stream(
                    nursery, Prefixed(stream, raw),
                    max_message_size=self.server.settings.max_message_bytes)
                ws = await ws_request.accept(subprotocol=chosen)
            if ws is None:
                nursery.cancel_scope.cancel()
                return
            client: Client | None = None
            try:
                client = await self._serve_client(ws, remote, token, ticket, attempt)
            finally:
                # Still cancelled here means the server itself is stopping: say "going away".
                stopping = trio.current_effective_deadline() == -math.inf
                with trio.CancelScope(shield=True):
                    await _close(ws, stream, client, stopping)
                nursery.cancel_scope.cancel()

    async def _serve_client(self, ws: trio_websocket.WebSocketConnection, remote: str,
                            token: str | None, ticket: Ticket,
                            attempt: _Attempt) -> Client | None:
        server = self.server
        session = FeedSession(server.tokens,
                              commands_enabled=server.command_handler is not None,
                              max_message_bytes=server.settings.max_message_bytes)
        client = Client(session, remote, server.settings.client_queue)
        if token is not None:
            actions = session.authenticate(token)
        else:
            frame = None
            with trio.move_on_after(server.settings.auth_timeout_s):
                try:
                    frame = await ws.get_message()
                except trio_websocket.ConnectionClosed:
                    return None
            actions = session.receive(frame) if frame is not None else [
                Send(error("auth_required", "no auth message in time")),
                Close(1008, "authentication timeout")]
        ends = await self._authenticate(ws, client, actions, ticket, attempt)
        if ends is None:
            return None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sender, ws, client, nursery.cancel_scope)
                nursery.start_soon(self._expire, client, ends)
                await self._reader(ws, client)
                if not client.too_slow:
                    nursery.cancel_scope.cancel()
        finally:
            server.fanout.clients.discard(client)
        return client

    async def _authenticate(self, ws: trio_websocket.WebSocketConnection, client: Client,
                            actions: list[Action], ticket: Ticket,
                            attempt: _Attempt) -> float | None:
        """Carry out the session's answer to the first message: when the login ends (trio
        time), or None once the connection is closed."""
        server, ends = self.server, math.inf
        for action in actions:
            if isinstance(action, Send):
                await ws.send_message(dumps(action.message))
            elif isinstance(action, AuthFailed):
                server.limiter.record(client.remote, trio.current_time())
                attempt.done()
                server.metrics.auth_failures.inc()
                server.note("feed authentication failed", "auth_failed", client=client.remote)
            elif isinstance(action, Close):
                await ws.aclose(action.code, action.reason)
                return None
            elif isinstance(action, Authenticated):
                attempt.done()
                # The login's end is the server's to enforce, not only the page's.
                granted = server.logins.begin(action.identity.name, action.login,
                                              trio.current_time())
                if granted is None:
                    await ws.send_message(dumps(error(
                        "session_expired", "this login has ended: log in again")))
                    await ws.aclose(POLICY_VIOLATION, "session expired")
                    return None
                # No checkpoint between the snapshot and joining: no event is missed or doubled.
                ticket.authenticated()
                self._join(client, action.identity, *granted)
                ends = granted[1]
        return ends

    def _join(self, client: Client, identity: Identity, login: str, ends: float) -> None:
        """Welcome the client (its starting snapshot) and add it to the fan-out."""
        server = self.server
        expires = time.time() + max(0.0, ends - trio.current_time())
        client.offer(("text", dumps({
            "type": "welcome", "name": identity.name, "role": identity.role,
            "server": {"version": __version__, "gateway_id": server.outbox.gateway_id,
                       "epoch": server.outbox.epoch, "last_seq": server.outbox.last_seq},
            "time": rfc3339(time.time()), "time_zone": server.settings.time_zone or None,
            "session_max_s": server.settings.session_max_s, "login": login,
            "session_expires": rfc3339(expires), "state": server.state(identity.hidden_alerts())})))
        server.fanout.clients.add(client)
        log.info("feed client joined", client=client.remote, name=identity.name,
                 role=identity.role)

    async def _expire(self, client: Client, ends: float) -> None:
        """End the session when its login does: 1008 "session expired", after what is queued."""
        await trio.sleep_until(ends)
        self.server.fanout.clients.discard(client)
        client.close_soon(POLICY_VIOLATION, "session expired")

    async def _reader(self, ws: trio_websocket.WebSocketConnection, client: Client) -> None:
        while True:
            try:
                frame = await ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            for action in client.session.receive(frame):
                await self._act(action, client)

    async def _act(self, action: Action, client: Client) -> None:
        fanout = self.server.fanout
        if isinstance(action, Send):
            fanout.offer(client, ("text", dumps(action.message)))
        elif isinstance(action, Replay):
            # Events up to `high` come from the database; live ones above it from the queue.
            fanout.offer(client, ("replay", action.from_seq, self.server.outbox.last_seq))
        elif isinstance(action, Acknowledge):
            result = await self._acknowledge(action)
            # The acknowledgement event is committed: fan it out now, so every client (this one
            # included) gets the event and the new alert state before the result.
            await fanout.flush()
            fanout.offer(client, ("text", dumps(result)))
        elif isinstance(action, Command):
            fanout.offer(client, ("text", dumps(await self._command(action))))
        elif isinstance(action, Resync):
            # Queued behind what the client already has: deltas after it at or below the
            # snapshot's version are skipped by the client (their `v` is not above it).
            fanout.offer(client, ("text", self.server.snapshot_message(
                client.session.hidden_alerts())))
        elif isinstance(action, History):
            fanout.offer(client, ("text", dumps({
                "type": "history", "machine": action.machine, "ref": action.ref,
                "alerts": self.server.board.history(action.machine,
                                                    client.session.hidden_alerts())})))

    async def _acknowledge(self, ack: Acknowledge) -> dict[str, Any]:
        board = self.server.board
        refusal = board.ack_refusal(ack.alert_seq)
        seen = board.get(ack.alert_seq)
        if seen is not None and seen.kind in ack.identity.hidden_alerts():
            refusal = "no open alert has that seq"  # not on this role's board (ALERT_ROLES)
        if refusal is None and ack.alert_seq in self._acking:
            refusal = "being acknowledged by someone else"
        result = {"type": "ack_result", "alert_seq": ack.alert_seq}
        if refusal is not None:
            return {**result, "ok": False, "reason": refusal}
        alert = board.get(ack.alert_seq)
        assert alert is not None
        info = alert.machine_info
        machine = MachineRef(info["port"], info["address"], info.get("serial"),
                             info.get("asset")) if info else None
        data: dict[str, Any] = {"alert_seq": ack.alert_seq, "by": ack.identity.name,
                                "role": ack.identity.role}
        if ack.note:
            data["note"] = ack.note
        self._acking.add(ack.alert_seq)
        try:
            seq = await self.server.outbox.append(system_draft(
                "alertAcknowledged", data, now=time.time(), machine=machine,
                monotonic=trio.current_time()))
        except StoreError as err:
            return {**result, "ok": False, "reason": f"could not record the acknowledgement: {err}"}
        finally:
            self._acking.discard(ack.alert_seq)
        log.info("alert acknowledged", alert_seq=ack.alert_seq, by=ack.identity.name, seq=seq)
        return {**result, "ok": True, "seq": seq}

    async def _command(self, command: Command) -> dict[str, Any]:
        handler = self.server.command_handler
        assert handler is not None
        base = {"type": "command_result", "id": command.request["id"]}
        try:
            result = await handler(command.request, command.identity.name)
        except GatewayError as err:
            # The handler's own expected failures; anything else is a bug and propagates.
            return {**base, "result": "failed", "reason": str(err)}
        return {**result, **base}

    async def _sender(self, ws: trio_websocket.WebSocketConnection, client: Client,
                      done: trio.CancelScope) -> None:
        with client.sender_scope:
            try:
                held: Item | None = None
                while not client.too_slow and client.closing is None:
                    item = held if held is not None else await client.receive.receive()
                    held = None
                    if item[0] == "close":
                        break
                    client.queued -= weight(item)
                    if item[0] == "events":
                        held = await self._send_events(ws, client, item[1])
                    elif item[0] == "text":
                        await ws.send_message(item[1])
                    else:
                        await self._replay(ws, client, item[1], item[2])
                if client.too_slow:
                    await ws.aclose(1008, "too slow")
                elif client.closing is not None:
                    with trio.move_on_after(CLOSE_TIMEOUT_S):
                        await ws.aclose(*client.closing)
            except trio_websocket.ConnectionClosed:
                pass
        done.cancel()

    async def _send_events(self, ws: trio_websocket.WebSocketConnection, client: Client,
                           first: Batch) -> Item | None:
        """Send `first` merged with the events frames already waiting behind it (a client that
        fell behind catches up in fewer, bigger frames); return the item that stopped the
        merge, if any, for the sender to handle next."""
        batches = [first]
        size = len(first.frame)
        held: Item | None = None
        while True:
            try:
                held = client.receive.receive_nowait()
            except trio.WouldBlock:
                held = None
                break
            if held[0] != "events" or \
                    size + len(held[1].frame) > self.server.settings.max_frame_bytes:
                break
            client.queued -= weight(held)
            batches.append(held[1])
            size += len(held[1].frame)
        frame = live_frame(batches, client.skip_through)
        if frame is not None:
            await ws.send_message(frame)
            self.server.fanout.frames_sent += 1
        return held

    async def _replay(self, ws: trio_websocket.WebSocketConnection, client: Client,
                      from_seq: int, high: int) -> None:
        settings, outbox = self.server.settings, self.server.outbox
        after, scanned, sent = from_seq - 1, 0, 0
        while after < high and scanned < settings.replay_max:
            page = min(REPLAY_PAGE, settings.replay_max - scanned, high - after)
            rows = await outbox.read_after(after, page)
            if not rows:
                break
            texts: list[str] = []
            size = EVENTS_FRAME_OVERHEAD
            for seq, body in rows:
                if seq > high:
                    break
                envelope = decode_envelope(body)
                if client.session.wants(envelope):
                    text = envelope_json(envelope)
                    if texts and size + len(text) + 1 > settings.max_frame_bytes:
                        await ws.send_message(events_frame(texts))
                        texts, size = [], EVENTS_FRAME_OVERHEAD
                    texts.append(text)
                    size += len(text) + 1
                    sent += 1
                after = seq
            if texts:
                await ws.send_message(events_frame(texts))
            scanned += len(rows)
        client.skip_through = max(client.skip_through, high)
        await ws.send_message(dumps({"type": "replay_done", "from_seq": from_seq,
                                     "to_seq": after, "sent": sent, "complete": after >= high}))


async def _close(ws: trio_websocket.WebSocketConnection, stream: trio.abc.Stream,
                 client: Client | None, stopping: bool) -> None:
    """End the WebSocket (called shielded); `stopping`: the server itself is stopping."""
    if client is not None and client.too_slow and client.sender_scope.cancelled_caught:
        # The close frame could not get out in time: cut the TCP connection.
        await trio.aclose_forcefully(stream)
    elif stopping:
        # The reader task is cancelled too, so the peer's closing reply can never be seen:
        # send the close frame and give up waiting soon after.
        with trio.move_on_after(SHUTDOWN_CLOSE_S):
            await ws.aclose(1001, "gateway shutting down")
    else:
        with trio.move_on_after(CLOSE_TIMEOUT_S):
            await ws.aclose()
