"""The staff feed server: alert page, /health, /metrics and the /feed WebSocket on one port.

HTTP is parsed with h11. A request that asks to upgrade to a WebSocket at /feed is checked here
(origin, failed-auth rate limit) and then handed to trio-websocket by replaying the request bytes
into `wrap_server_stream`; everything else is answered by h11. docs/feed-protocol.md says why
this rather than hypercorn.

Fan-out. Commits reach the feed through `Outbox.commit_listeners`, called in the trio thread
by the outbox writer, so the listener does almost nothing: it updates the alert board and appends
the envelopes to a pending list. One fan-out task flushes that list at once after a quiet spell
and then after each pause (at least `batch_interval_s`, longer when the last flush queued many
frames: about `max_frames_per_s` in total). A flush selects the events once per distinct client
filter, encodes each selected event to JSON once, builds one `events` frame per filter and puts
it (non-blocking) into each client's bounded queue, 16 clients at a time with an idle gap between
(see `_flush` for why a gap and not just a yield). One sender task per client drains its queue,
merging what is waiting into one frame. So the work per event is one encode, and the senders'
work is bounded by the frame budget however many clients connect or however busy the floor is.
A client whose queue passes `client_queue` messages is closed with 1008 "too slow", so a stalled
browser never slows the outbox (docs/feed-protocol.md 7a).
"""

from __future__ import annotations

import errno
import math
import resource
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h11
import structlog
import trio
import trio_websocket
from prometheus_client import Counter, Gauge

from drivers.base import MachineRef
from gateway import __version__
from gateway.accepting import CAPACITY_ERRNOS, serve_accepting, summarize_suppressed
from gateway.config import is_loopback
from gateway.errors import GatewayError, StoreError
from gateway.events import rfc3339, system_draft
from gateway.feed.guard import Admission, LogThrottle, Ticket
from gateway.feed.http import (
    CONTENT_TYPES,
    MAX_HEADER_BYTES,
    REASONS,
    Prefixed,
    header,
    linger,
    next_event,
    refuse,
    remote_address,
    request_bytes,
    respond,
    same_origin,
)
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
    Replay,
    Resync,
    Send,
    TokenEntry,
    TokenTable,
    dumps,
    envelope_json,
    error,
    events_frame,
)
from gateway.feed.state import AlertBoard, Change
from gateway.monitor import METRICS_TYPE, HealthLimits, Monitor
from gateway.signing import decode_envelope

if TYPE_CHECKING:
    from gateway.config import FeedSection
    from gateway.outbox import Outbox

__all__ = ["CommandHandler", "FeedServer", "FeedSettings", "FeedStatistics"]

log = structlog.get_logger(__name__)

CommandHandler = Callable[[dict[str, Any], str], Awaitable[dict[str, Any]]]

STATIC_DIR = Path(__file__).parent / "static"
HANDSHAKE_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0       # how long a closing handshake (or a "too slow" close) may take
SHUTDOWN_CLOSE_S = 0.25     # per client, while the daemon stops
REPLAY_PAGE = 500
STATUS_INTERVAL_S = 1.0     # how often the uplink status is checked for a change to push
FANOUT_CHUNK = 16           # clients served in one go during a flush ...
FANOUT_GAP_S = 0.001        # ... then the trio thread idles this long (see _flush)


@dataclass(frozen=True)
class FeedSettings:
    """How the feed listens and whom it lets in. `tokens` hold SHA-256 hashes, never tokens."""

    host: str = "127.0.0.1"
    port: int = 0
    tokens: tuple[TokenEntry, ...] = ()
    certfile: Path | None = None
    keyfile: Path | None = None
    allowed_origins: tuple[str, ...] = ()
    max_message_bytes: int = 65536
    client_queue: int = 1000
    auth_failures_per_minute: int = 10
    auth_timeout_s: float = 10.0
    replay_max: int = 10_000
    history_events: int = 50_000
    degraded_depth: int = 10_000
    time_zone: str = ""
    session_max_s: float = 8 * 3600
    # Not in the configuration file: tuning knobs for tests and benchmarks.
    batch_interval_s: float = 0.05      # at most one events frame per client per interval
    max_frames_per_s: int = 2000        # and all clients together about this many frames a second
    max_frame_bytes: int = 256 * 1024   # an events frame holds at most this much (or one event)
    # Connection caps (gateway/feed/guard.py): far below LimitNOFILE, so a flood never takes the
    # descriptors the outbox, the uplink, the serial ports and the control socket need.
    max_connections: int = 256
    max_connections_per_address: int = 32
    max_unauthenticated: int = 64
    max_unauthenticated_per_address: int = 8
    header_timeout_s: float = 30.0      # an idle or slow HTTP client gets this long per request
    bind_retry_s: float = 5.0           # the port is taken: try again this often, keep polling

    def __post_init__(self) -> None:
        if self.client_queue < 2:
            raise ValueError("client_queue must be at least 2 (the welcome and one more message)")
        if self.batch_interval_s < 0:
            raise ValueError("batch_interval_s must not be negative")
        if self.max_frames_per_s < 1:
            raise ValueError("max_frames_per_s must be at least 1")
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile go together: set both or neither")
        if self.max_connections_per_address > self.max_connections or \
                self.max_unauthenticated_per_address > self.max_unauthenticated:
            raise ValueError("a per-address cap above its listener cap lets one address lock "
                             "out the others")

    @classmethod
    def from_config(cls, section: FeedSection) -> FeedSettings:
        """The `[feed]` configuration section as server settings."""
        return cls(
            host=section.host, port=section.port,
            tokens=tuple(TokenEntry(t.name, t.role, t.sha256) for t in section.tokens),
            certfile=section.certfile, keyfile=section.keyfile,
            allowed_origins=section.allowed_origins,
            max_message_bytes=section.max_message_bytes, client_queue=section.client_queue,
            auth_failures_per_minute=section.auth_failures_per_minute,
            auth_timeout_s=section.auth_timeout_s, replay_max=section.replay_max,
            history_events=section.history_events, degraded_depth=section.degraded_depth,
            time_zone=section.time_zone, session_max_s=section.session_max_s)


@dataclass(frozen=True, slots=True)
class _Batch:
    """Events for one frame, in seq order: their seqs, their encoded envelopes and the frame
    itself. Shared, read-only, by every client whose filter selected the same events."""

    seqs: tuple[int, ...]
    texts: tuple[str, ...]
    frame: str


# What a client's queue holds: ("text", str) | ("events", _Batch) | ("replay", from_seq, high).
_Item = tuple[Any, ...]


def _weight(item: _Item) -> int:
    """How many messages an item counts for against `client_queue`: each event is one."""
    return len(item[1].seqs) if item[0] == "events" else 1


@dataclass(eq=False)
class _Client:
    """A connected, authenticated staff client and its bounded outgoing queue. The queue is
    bounded in messages (each event one), not in items, so batching changes nothing about how
    far behind a client may fall: at most `queue_size` messages plus one flush's worth."""

    session: FeedSession
    remote: str
    queue_size: int
    sender_scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    too_slow: bool = False
    closing: tuple[int, str] | None = None   # set by `close_soon`: the sender closes with it
    skip_through: int = 0
    queued: int = 0

    def __post_init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[_Item](math.inf)

    def offer(self, item: _Item) -> bool:
        """Queue without blocking. Return False if the client is (now) too slow: past
        `queue_size` messages it gets nothing more, and its sender has CLOSE_TIMEOUT_S to get the
        1008 close out before the connection is cut."""
        if self.too_slow:
            return False
        weight = _weight(item)
        # A client with nothing waiting is not behind, however many events one flush carries.
        if self.queued and self.queued + weight > self.queue_size:
            self.too_slow = True
            self.sender_scope.deadline = trio.current_time() + CLOSE_TIMEOUT_S
            return False
        self.queued += weight
        self.send.send_nowait(item)
        return True

    def close_soon(self, code: int, reason: str) -> None:
        """Close ahead of anything still queued (its token was revoked)."""
        if self.closing is None and not self.too_slow:
            self.closing = (code, reason)
            self.send.send_nowait(("close",))


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


@dataclass(frozen=True, slots=True)
class FeedStatistics:
    """A snapshot of the fan-out's work since start, for tests, benchmarks and diagnostics."""

    clients: int
    events_encoded: int     # envelopes encoded to JSON for live delivery (at most once each)
    flushes: int            # fan-out rounds
    frames_queued: int      # events frames put into client queues
    frames_sent: int        # frames written by the senders (merged frames count once)
    dropped: int            # clients dropped as too slow




class FeedServer:
    """The staff feed. Start with `await nursery.start(server.run)`, which returns the bound port.

    `status()` returns the daemon's live figures, e.g. {"uplink": {"connected": bool, "since":
    float | None, "reconnects": int}, "ports": {name: {"timeouts": int, "crc_errors": int}}}.
    `command_handler(request, requested_by)` executes a supervisor's command and returns the
    result fields; without it, commands are refused with "commands not enabled".
    """

    def __init__(self, settings: FeedSettings, outbox: Outbox, status: Callable[[], dict[str, Any]],
                 command_handler: CommandHandler | None = None, *,
                 monitor: Monitor | None = None) -> None:
        self.settings = settings
        self.outbox = outbox
        self.status = status
        self.board = AlertBoard()
        self._command_handler = command_handler
        self._tokens = TokenTable(settings.tokens)
        self._limiter = FailureLimiter(settings.auth_failures_per_minute)
        self._admission = _admission(settings, _descriptor_limit())
        self._throttle = LogThrottle(60.0)
        self.port: int | None = None        # once bound
        self.listening = trio.Event()       # set once bound
        self.bind_error: str | None = None  # while the port cannot be bound
        self.bind_failures = 0
        self._clients: set[_Client] = set()
        self._acking: set[int] = set()
        self._priming = True
        self._backlog: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []   # committed, not yet fanned out
        self._board_changed = False
        self._wake = trio.Event()
        self._urgent = trio.Event()   # the board changed: do not wait out the batching pause
        self._flush_lock = trio.Lock()
        self._encoded = self._flushes = self._frames_queued = self._frames_sent = 0
        self._dropped_count = 0
        self._static = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file()}
        self._own_monitor = monitor is None
        self.monitor = monitor or Monitor(outbox, status, HealthLimits(
            depth=settings.degraded_depth))
        self.registry = self.monitor.registry
        self._clients_gauge = Gauge("gateway_feed_clients", "Authenticated staff feed clients.",
                                    registry=self.registry)
        self._clients_gauge.set_function(lambda: len(self._clients))
        self._dropped = Counter("gateway_feed_dropped_clients", "Feed clients dropped as too slow.",
                                registry=self.registry)
        self._auth_failures = self.monitor.auth_failures
        self._rate_limited = Counter("gateway_feed_rate_limited", "Feed logins answered 429: too "
                                     "many attempts from the address.", registry=self.registry)
        self._refused = Counter("gateway_feed_refused_connections", "Feed connections closed at "
                                "once: a connection cap was reached.", ["reason"],
                                registry=self.registry)
        self._handler_errors = Counter("gateway_feed_handler_errors", "Feed connections "
                                       "ended by an unexpected error (a bug).",
                                       registry=self.registry)
        self._accept_full = Counter("gateway_feed_accept_failures", "Accepts that failed for "
                                    "lack of file descriptors or memory.", registry=self.registry)
        connections = Gauge("gateway_feed_connections", "Open feed connections (HTTP and "
                            "WebSocket).", registry=self.registry)
        connections.set_function(lambda: self._admission.open)

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def statistics(self) -> FeedStatistics:
        return FeedStatistics(clients=len(self._clients), events_encoded=self._encoded,
                              flushes=self._flushes, frames_queued=self._frames_queued,
                              frames_sent=self._frames_sent,
                              dropped=self._dropped_count)

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Rebuild the alert board from recent history, bind, report the port, serve forever."""
        self.outbox.commit_listeners.append(self._on_commit)
        try:
            await self._prime()
            self._warn_if_clear()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._fanout)
                nursery.start_soon(self._watch_status)
                nursery.start_soon(partial(summarize_suppressed, self._throttle,
                                           "feed: repeated warnings not logged one by one",
                                           listener="feed"))
                listeners = await self._listen_or_retry(task_status)
                for listener in listeners:
                    nursery.start_soon(partial(
                        serve_accepting, listener, self._serve_connection, nursery, name="feed",
                        on_full=self._accept_full.inc))
        finally:
            self.outbox.commit_listeners.remove(self._on_commit)
            if self._own_monitor:
                self.monitor.close()

    async def _listen_or_retry(self, task_status: trio.TaskStatus[int]) -> list[Any]:
        """Bind; report the port. A port in use (another program, an old gateway still
        stopping) is not fatal: report started with None so the daemon goes on polling, say so
        in the log (once a minute) and in `health()` / diag, and try again every
        `bind_retry_s`. Other bind errors are configuration errors and raise."""
        reported = False
        while True:
            try:
                listeners = await self._listen()
            except OSError as err:
                if err.errno not in _RETRY_BIND_ERRNOS:
                    raise
                self.bind_failures += 1
                self.bind_error = f"cannot listen on {self.settings.host}:{self.settings.port}: " \
                                  f"{err.strerror or err}"
                suppressed = self._throttle.admit("bind", trio.current_time())
                if suppressed is not None:
                    log.error("feed port unavailable; polling goes on, retrying",
                              error=self.bind_error, retry_in_s=self.settings.bind_retry_s,
                              repeated=suppressed)
                if not reported:
                    task_status.started(None)  # type: ignore[arg-type]
                    reported = True
                await trio.sleep(self.settings.bind_retry_s)
                continue
            sock = getattr(listeners[0], "transport_listener", listeners[0]).socket
            self.port = sock.getsockname()[1]
            if self.bind_error is not None:
                log.warning("feed port bound after retrying", port=self.port,
                            failures=self.bind_failures)
            self.bind_error = None
            self.listening.set()
            log.info("feed listening", host=self.settings.host, port=self.port,
                     tls=self.settings.certfile is not None)
            if not reported:
                task_status.started(self.port)
            return listeners

    def _warn_if_clear(self) -> None:
        """Staff tokens over plain ws:// on an address others can reach travel in clear."""
        if self.settings.certfile is None and self.settings.tokens \
                and not is_loopback(self.settings.host):
            log.error("STAFF TOKENS IN CLEAR: the feed listens without TLS on a non-loopback "
                      "address; anyone on the LAN can read them. Set feed.certfile and "
                      "feed.keyfile, or listen on 127.0.0.1 behind a TLS proxy",
                      host=self.settings.host, tokens=len(self.settings.tokens))

    def replace_tokens(self, entries: tuple[TokenEntry, ...]) -> int:
        """The reloaded token list (SIGHUP). Sessions whose token is gone (or whose name or role
        changed) are closed with 1008 "token revoked"; returns how many."""
        self.settings = replace(self.settings, tokens=tuple(entries))
        self._tokens = TokenTable(entries)
        revoked = [c for c in self._clients
                   if c.session.entry is not None and not self._tokens.holds(c.session.entry)]
        for client in revoked:
            self._clients.discard(client)
            client.close_soon(POLICY_VIOLATION, "token revoked")
            log.info("feed session closed: token revoked", client=client.remote,
                     name=client.session.identity and client.session.identity.name)
        return len(revoked)

    def _note(self, message: str, kind: str, **fields: Any) -> None:
        """A warning about a client, at most once a minute per kind, with the repeat count."""
        suppressed = self._throttle.admit(kind, trio.current_time())
        if suppressed is not None:
            log.warning(message, repeated=suppressed, **fields)

    async def _listen(self) -> list[Any]:
        listeners: list[Any] = await trio.open_tcp_listeners(self.settings.port,
                                                             host=self.settings.host)
        if self.settings.certfile is None:
            return listeners
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.settings.certfile, self.settings.keyfile)
        return [trio.SSLListener(listener, context, https_compatible=True)
                for listener in listeners]

    async def _prime(self) -> None:
        """Replay the tail of the outbox into the board so open handpays and doors from before a
        restart are still shown. Commits during the replay wait in `_backlog`."""
        high = self.outbox.last_seq
        after = max(0, high - self.settings.history_events)
        while after < high:
            rows = await self.outbox.read_after(after, 1000)
            if not rows:
                break
            for seq, body in rows:
                self.board.apply(decode_envelope(body))
                after = seq
        # The rebuilt board is every client's starting snapshot: its changes are not news.
        self.board.drain()
        self._priming = False
        backlog, self._backlog = self._backlog, []
        if backlog:
            self._on_commit(backlog)

    # -- the commit listener and the fan-out ------------------------------------------------------

    def _on_commit(self, envelopes: list[dict[str, Any]]) -> None:
        """Called by the outbox writer after each commit: keep it to bookkeeping, no encoding and
        no per-client work (that is the fan-out task's, off the writer's path)."""
        if self._priming:
            self._backlog.extend(envelopes)
            return
        for envelope in envelopes:
            if self.board.apply(envelope):
                self._board_changed = True
                self._urgent.set()
        if self._clients:
            self._pending.extend(envelopes)
        self._wake.set()

    async def _fanout(self) -> None:
        """Flush at once when events arrive after a quiet spell, then pause: a client gets at
        most one events frame per pause however busy the floor is, and the pause grows with the
        frames the last flush queued, so the senders' work stays near `max_frames_per_s` however
        many clients are connected (each client's frames then get bigger and a little later)."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            frames = await self._flush()
            # The frame budget is always kept; the rest of the pause (the batching of routine
            # events) is cut short by a change to the alert board: staff see alerts first.
            budget = frames / self.settings.max_frames_per_s
            await trio.sleep(budget)
            rest = _pause(frames, self.settings) - budget
            if rest > 0 and not self._board_changed:
                with trio.move_on_after(rest):
                    await self._urgent.wait()
            self._urgent = trio.Event()

    async def _flush(self) -> int:
        """Hand everything committed so far to the clients' queues, in seq order. The lock keeps
        two flushes (the fan-out task's and an acknowledgement's) from interleaving."""
        async with self._flush_lock:
            envelopes, self._pending = self._pending, []
            self._board_changed = False
            # Drained even with nobody connected: a client that joins gets a snapshot.
            changes = self.board.drain()
            if not self._clients or (not envelopes and not changes):
                return 0
            self._flushes += 1
            alerts = self._delta_message(changes) if changes else None
            groups: dict[Any, list[_Client]] = {}
            for client in list(self._clients):
                groups.setdefault(client.session.filter.key(), []).append(client)
            encoded: dict[int, str] = {}
            served = queued = 0
            for members in groups.values():
                session = members[0].session
                batches = self._batches([e for e in envelopes if session.wants(e)], encoded)
                for client in members:
                    for batch in batches:
                        if self._offer(client, ("events", batch)):
                            self._frames_queued += 1
                            queued += 1
                    if alerts is not None and self._offer(client, ("text", alerts)):
                        queued += 1
                    served += 1
                    if served % FANOUT_CHUNK == 0:
                        # Let the chunk's senders run, then leave the trio thread idle for a
                        # moment. Yielding to the scheduler is not enough: while this thread
                        # runs Python, the outbox's commit thread waits for the GIL, up to the
                        # 5 ms switch interval each time it needs it. Idle gaps keep a flush to
                        # hundreds of clients from adding that to every commit it overlaps.
                        await trio.sleep(FANOUT_GAP_S)
            return queued

    def _batches(self, envelopes: list[dict[str, Any]], encoded: dict[int, str]) -> list[_Batch]:
        """Frames of at most `max_frame_bytes` (or one event) for these envelopes, each envelope
        encoded at most once per flush, whichever filters select it."""
        batches: list[_Batch] = []
        seqs: list[int] = []
        texts: list[str] = []
        size = EVENTS_FRAME_OVERHEAD
        for envelope in envelopes:
            seq = envelope["seq"]
            text = encoded.get(seq)
            if text is None:
                text = encoded[seq] = envelope_json(envelope)
                self._encoded += 1
            if texts and size + len(text) + 1 > self.settings.max_frame_bytes:
                batches.append(_Batch(tuple(seqs), tuple(texts), events_frame(texts)))
                seqs, texts, size = [], [], EVENTS_FRAME_OVERHEAD
            seqs.append(seq)
            texts.append(text)
            size += len(text) + 1
        if texts:
            batches.append(_Batch(tuple(seqs), tuple(texts), events_frame(texts)))
        return batches

    def _offer(self, client: _Client, item: _Item) -> bool:
        """Queue for a client; drop it (once) when that makes it too slow."""
        if client.offer(item):
            return True
        if client in self._clients:
            self._clients.discard(client)
            self._dropped.inc()
            self._dropped_count += 1
            log.warning("feed client too slow, dropping", client=client.remote,
                        name=client.session.identity and client.session.identity.name,
                        queued=client.queued)
        return False

    def _delta_message(self, changes: list[Change]) -> str:
        return dumps({"type": "alerts_delta", "time": rfc3339(time.time()),
                      "base": changes[0].version - 1, "version": changes[-1].version,
                      "changes": [c.as_dict() for c in changes]})

    def _snapshot_message(self) -> str:
        return dumps({"type": "alerts_snapshot", "time": rfc3339(time.time()),
                      "state": self._state()})

    def uplink(self) -> dict[str, Any]:
        """The uplink as the page and /health show it: the daemon's one tracker
        (gateway/status.py), never the last uplink event in the outbox."""
        view = dict(self.status().get("uplink_status") or {})
        if not view:
            return {"state": "unknown", "connected": None, "since": None,
                    "reason": "no uplink status reported"}
        since = view.get("since")
        view["since"] = rfc3339(since) if isinstance(since, int | float) else None
        return view

    def _state(self) -> dict[str, Any]:
        return {**self.board.snapshot(), "uplink": self.uplink()}

    async def _watch_status(self) -> None:
        """Push the uplink status to every client when it changes: checked every
        STATUS_INTERVAL_S (a frozen platform is a matter of time, not of an event)."""
        last = self.uplink()
        while True:
            await trio.sleep(STATUS_INTERVAL_S)
            now = self.uplink()
            if now != last:
                last = now
                message = dumps({"type": "status", "time": rfc3339(time.time()),
                                 "uplink": now})
                for client in list(self._clients):
                    self._offer(client, ("text", message))

    # -- HTTP ------------------------------------------------------------------------------------

    async def _serve_connection(self, stream: trio.abc.Stream) -> None:
        remote = remote_address(stream)
        ticket = self._admission.admit(remote)
        if isinstance(ticket, str):
            self._refused.labels(ticket).inc()
            self._note("feed connection refused: cap reached", f"refused:{ticket}",
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
            self._handler_errors.inc()
            if self._throttle.admit("handler_bug", trio.current_time()) is not None:
                log.error("feed connection failed: a bug, please report it", client=remote,
                          exc_info=group)
        finally:
            ticket.release()
            await trio.aclose_forcefully(stream)

    async def _serve_http(self, stream: trio.abc.Stream, remote: str, ticket: Ticket) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        while True:
            request = None
            with trio.move_on_after(self.settings.header_timeout_s):
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
            upgrade = header(request, b"upgrade").lower() == b"websocket"
            # Read to the end of the request (a GET has no body); an upgrade request then
            # pauses h11, which leaves any bytes after it in `trailing_data`.
            end = None
            with trio.move_on_after(self.settings.header_timeout_s):
                end = await next_event(conn, stream)
                while end is not None and end is not h11.PAUSED and upgrade:
                    end = await next_event(conn, stream)
            if end is None:
                return
            if upgrade:
                await self._upgrade(conn, stream, request, target, remote, ticket)
                return
            status, body, ctype, *extra = await self._route(target, remote)
            await respond(conn, stream, status, body, ctype, *extra,
                          head=request.method == b"HEAD")
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _route(self, target: str, remote: str) -> tuple[Any, ...]:
        """(status, body, content type[, extra headers]) for a plain GET or HEAD."""
        if target == "/health":
            code, body = self.health()
            return code, dumps(body).encode(), "application/json"
        if target == "/feed":
            # A plain GET of the feed's URL: how a page learns why its WebSocket handshake
            # failed (browsers hide the status): 429 while this address is blocked.
            now = trio.current_time()
            if self._limiter.blocked(remote, now):
                retry = self._limiter.retry_after(remote, now)
                return 429, b"too many failed authentications\n", "text/plain", \
                    [(b"retry-after", str(retry).encode())]
            return 426, b"the feed is a WebSocket: send Upgrade: websocket\n", "text/plain", \
                [(b"upgrade", b"websocket")]
        if target == "/metrics":
            return 200, self.monitor.metrics(), METRICS_TYPE
        name = "index.html" if target in ("/", "/index.html") else (
            target.removeprefix("/static/") if target.startswith("/static/") else None)
        # Only files listed from the static directory at start: no client path reaches open().
        path = self._static.get(name) if name else None
        if path is not None:
            return 200, await trio.Path(path).read_bytes(), \
                CONTENT_TYPES.get(path.suffix, "application/octet-stream")
        return 404, b"not found\n", "text/plain"

    def health(self) -> tuple[int, dict[str, Any]]:
        """What GET /health returns (gateway/monitor.py), with the feed's own figures."""
        return self.monitor.health({"feed": {"clients": len(self._clients),
                                             "connections": self._admission.open,
                                             "bind_failures": self.bind_failures}})

    # -- WebSocket -------------------------------------------------------------------------------

    async def _upgrade(self, conn: h11.Connection, stream: trio.abc.Stream, request: h11.Request,
                       target: str, remote: str, ticket: Ticket) -> None:
        if target != "/feed":
            await respond(conn, stream, 404, b"the feed is at /feed\n", "text/plain")
            return
        origin = header(request, b"origin").decode("latin-1")
        if origin and self.settings.allowed_origins and origin not in self.settings.allowed_origins \
                and not same_origin(origin, header(request, b"host").decode("latin-1")):
            await respond(conn, stream, 403, b"origin not allowed\n", "text/plain")
            return
        now = trio.current_time()
        if self._limiter.blocked(remote, now):
            self._rate_limited.inc()
            self._note("feed login refused: too many attempts (429)", "429", client=remote)
            retry = str(self._limiter.retry_after(remote, now)).encode()
            await respond(conn, stream, 429, b"too many failed authentications\n", "text/plain",
                          [(b"retry-after", retry)])
            return
        # Counted from here, before any checkpoint: attempts in flight use up the budget too.
        self._limiter.begin(remote)
        attempt = _Attempt(self._limiter, remote)
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
                    max_message_size=self.settings.max_message_bytes)
                ws = await ws_request.accept(subprotocol=chosen)
            if ws is None:
                nursery.cancel_scope.cancel()
                return
            client: _Client | None = None
            try:
                client = await self._serve_client(ws, remote, token, ticket, attempt)
            finally:
                # Still cancelled here means the server itself is stopping: say "going away".
                stopping = trio.current_effective_deadline() == -math.inf
                with trio.CancelScope(shield=True):
                    if client is not None and client.too_slow \
                            and client.sender_scope.cancelled_caught:
                        # The close frame could not get out in time: cut the TCP connection.
                        await trio.aclose_forcefully(stream)
                    elif stopping:
                        # The reader task is cancelled too, so the peer's closing reply can
                        # never be seen: send the close frame and give up waiting soon after.
                        with trio.move_on_after(SHUTDOWN_CLOSE_S):
                            await ws.aclose(1001, "gateway shutting down")
                    else:
                        with trio.move_on_after(CLOSE_TIMEOUT_S):
                            await ws.aclose()
                nursery.cancel_scope.cancel()

    async def _serve_client(self, ws: trio_websocket.WebSocketConnection, remote: str,
                            token: str | None, ticket: Ticket,
                            attempt: _Attempt) -> _Client | None:
        session = FeedSession(self._tokens, commands_enabled=self._command_handler is not None,
                              max_message_bytes=self.settings.max_message_bytes)
        client = _Client(session, remote, self.settings.client_queue)
        if token is not None:
            actions = session.authenticate(token)
        else:
            frame = None
            with trio.move_on_after(self.settings.auth_timeout_s):
                try:
                    frame = await ws.get_message()
                except trio_websocket.ConnectionClosed:
                    return None
            actions = session.receive(frame) if frame is not None else [
                Send(error("auth_required", "no auth message in time")),
                Close(1008, "authentication timeout")]
        for action in actions:
            if isinstance(action, Send):
                await ws.send_message(dumps(action.message))
            elif isinstance(action, AuthFailed):
                self._limiter.record(remote, trio.current_time())
                attempt.done()
                self._auth_failures.inc()
                self._note("feed authentication failed", "auth_failed", client=remote)
            elif isinstance(action, Close):
                await ws.aclose(action.code, action.reason)
                return None
            elif isinstance(action, Authenticated):
                # No checkpoint between the snapshot and joining: no event is missed or doubled.
                identity = action.identity
                attempt.done()
                ticket.authenticated()
                client.offer(("text", dumps({
                    "type": "welcome", "name": identity.name, "role": identity.role,
                    "server": {"version": __version__, "gateway_id": self.outbox.gateway_id,
                               "epoch": self.outbox.epoch, "last_seq": self.outbox.last_seq},
                    "time": rfc3339(time.time()), "time_zone": self.settings.time_zone or None,
                    "session_max_s": self.settings.session_max_s, "state": self._state()})))
                self._clients.add(client)
                log.info("feed client joined", client=remote, name=identity.name,
                         role=identity.role)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sender, ws, client, nursery.cancel_scope)
                await self._reader(ws, client)
                if not client.too_slow:
                    nursery.cancel_scope.cancel()
        finally:
            self._clients.discard(client)
        return client

    async def _reader(self, ws: trio_websocket.WebSocketConnection, client: _Client) -> None:
        while True:
            try:
                frame = await ws.get_message()
            except trio_websocket.ConnectionClosed:
                return
            for action in client.session.receive(frame):
                await self._act(action, client)

    async def _act(self, action: Action, client: _Client) -> None:
        if isinstance(action, Send):
            self._offer(client, ("text", dumps(action.message)))
        elif isinstance(action, Replay):
            # Events up to `high` come from the database; live ones above it from the queue.
            self._offer(client, ("replay", action.from_seq, self.outbox.last_seq))
        elif isinstance(action, Acknowledge):
            result = await self._acknowledge(action)
            # The acknowledgement event is committed: fan it out now, so every client (this one
            # included) gets the event and the new alert state before the result.
            await self._flush()
            self._offer(client, ("text", dumps(result)))
        elif isinstance(action, Command):
            self._offer(client, ("text", dumps(await self._command(action))))
        elif isinstance(action, Resync):
            # Queued behind what the client already has: deltas after it at or below the
            # snapshot's version are skipped by the client (their `v` is not above it).
            self._offer(client, ("text", self._snapshot_message()))
        elif isinstance(action, History):
            self._offer(client, ("text", dumps({
                "type": "history", "machine": action.machine, "ref": action.ref,
                "alerts": self.board.history(action.machine)})))

    async def _acknowledge(self, ack: Acknowledge) -> dict[str, Any]:
        refusal = self.board.ack_refusal(ack.alert_seq)
        if refusal is None and ack.alert_seq in self._acking:
            refusal = "being acknowledged by someone else"
        result = {"type": "ack_result", "alert_seq": ack.alert_seq}
        if refusal is not None:
            return {**result, "ok": False, "reason": refusal}
        alert = self.board.get(ack.alert_seq)
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
            seq = await self.outbox.append(system_draft(
                "alertAcknowledged", data, now=time.time(), machine=machine,
                monotonic=trio.current_time()))
        except StoreError as err:
            return {**result, "ok": False, "reason": f"could not record the acknowledgement: {err}"}
        finally:
            self._acking.discard(ack.alert_seq)
        log.info("alert acknowledged", alert_seq=ack.alert_seq, by=ack.identity.name, seq=seq)
        return {**result, "ok": True, "seq": seq}

    async def _command(self, command: Command) -> dict[str, Any]:
        assert self._command_handler is not None
        base = {"type": "command_result", "id": command.request["id"]}
        try:
            result = await self._command_handler(command.request, command.identity.name)
        except GatewayError as err:
            # The handler's own expected failures; anything else is a bug and propagates.
            return {**base, "result": "failed", "reason": str(err)}
        return {**result, **base}

    async def _sender(self, ws: trio_websocket.WebSocketConnection, client: _Client,
                      done: trio.CancelScope) -> None:
        with client.sender_scope:
            try:
                held: _Item | None = None
                while not client.too_slow and client.closing is None:
                    item = held if held is not None else await client.receive.receive()
                    held = None
                    if item[0] == "close":
                        break
                    client.queued -= _weight(item)
                    if item[0] == "events":
                        # Merge the events frames already waiting behind this one: a client that
                        # fell behind catches up in fewer, bigger frames.
                        batches = [item[1]]
                        size = len(item[1].frame)
                        while True:
                            try:
                                held = client.receive.receive_nowait()
                            except trio.WouldBlock:
                                break
                            if held[0] != "events" or \
                                    size + len(held[1].frame) > self.settings.max_frame_bytes:
                                break
                            client.queued -= _weight(held)
                            batches.append(held[1])
                            size += len(held[1].frame)
                            held = None
                        frame = _live_frame(batches, client.skip_through)
                        if frame is not None:
                            await ws.send_message(frame)
                            self._frames_sent += 1
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

    async def _replay(self, ws: trio_websocket.WebSocketConnection, client: _Client,
                      from_seq: int, high: int) -> None:
        after, scanned, sent = from_seq - 1, 0, 0
        while after < high and scanned < self.settings.replay_max:
            page = min(REPLAY_PAGE, self.settings.replay_max - scanned, high - after)
            rows = await self.outbox.read_after(after, page)
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
                    if texts and size + len(text) + 1 > self.settings.max_frame_bytes:
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


# -- helpers ---------------------------------------------------------------------------------------

def _pause(frames: int, settings: FeedSettings) -> float:
    """How long the fan-out waits after a flush that queued `frames` frames."""
    return max(settings.batch_interval_s, frames / settings.max_frames_per_s)


def _live_frame(batches: list[_Batch], skip_through: int) -> str | None:
    """One events frame for these batches, without events a replay already sent (seq at or
    below `skip_through`); None if nothing is left. One batch is sent as built."""
    if len(batches) == 1 and batches[0].seqs[0] > skip_through:
        return batches[0].frame
    texts = [text for batch in batches for seq, text in zip(batch.seqs, batch.texts, strict=True)
             if seq > skip_through]
    return events_frame(texts) if texts else None


# Descriptors kept for everything but feed connections: the outbox (database, WAL, shm), the
# command store, the serial ports, the uplink, the signing child, the control socket and its
# clients (16), the feed's listeners, logging, and a margin.
FD_RESERVE = 96


def _descriptor_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _admission(settings: FeedSettings, nofile: int) -> Admission:
    """The configured caps, lowered if the process may open fewer descriptors than the feed
    would need on top of FD_RESERVE: the feed may use at most half of what is left."""
    budget = max(4, (nofile - FD_RESERVE) // 2) if nofile != resource.RLIM_INFINITY else 1 << 30
    total = min(settings.max_connections, budget)
    unauthenticated = min(settings.max_unauthenticated, total)
    if total < settings.max_connections:
        log.warning("feed connection caps lowered to fit the descriptor limit",
                    limit_nofile=nofile, max_connections=total,
                    max_unauthenticated=unauthenticated)
    return Admission(
        total=total, per_address=min(settings.max_connections_per_address, total),
        unauthenticated=unauthenticated,
        unauthenticated_per_address=min(settings.max_unauthenticated_per_address,
                                        unauthenticated))


_RETRY_BIND_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL}) | CAPACITY_ERRNOS
