"""The staff feed server: alert page, /health, /metrics and the /feed WebSocket on one port.

This module owns the lifecycle (prime the alert board from recent history, bind or keep retrying,
serve) and what the parts share: settings, tokens, the failed-login limiter, the alert board,
the uplink status. The parts, one job each: gateway/feed/http.py (connections, routing, static
files), gateway/feed/session.py (one WebSocket client), gateway/feed/fanout.py (commits to every
client, bounded), gateway/feed/metrics.py (the feed's Prometheus series) and
gateway/feed/guard.py (connection caps fitted to the descriptor limit).
"""

from __future__ import annotations

import errno
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

import structlog
import trio

from gateway.accepting import CAPACITY_ERRNOS, serve_accepting, summarize_suppressed
from gateway.config import is_loopback
from gateway.events import rfc3339
from gateway.feed import guard
from gateway.feed.fanout import Fanout, FeedStatistics
from gateway.feed.http import HttpFront
from gateway.feed.metrics import FeedMetrics
from gateway.feed.protocol import (
    POLICY_VIOLATION,
    FailureLimiter,
    LoginBook,
    TokenEntry,
    TokenTable,
    dumps,
)
from gateway.feed.session import Sessions
from gateway.feed.settings import FeedSettings
from gateway.feed.state import AlertBoard
from gateway.limits import LogThrottle
from gateway.monitor import HealthLimits, Monitor
from gateway.signing import decode_envelope

if TYPE_CHECKING:
    from gateway.outbox import Outbox

__all__ = ["CommandHandler", "FeedServer", "FeedSettings", "FeedStatistics"]

log = structlog.get_logger(__name__)

CommandHandler = Callable[[dict[str, Any], str], Awaitable[dict[str, Any]]]

STATUS_INTERVAL_S = 1.0     # how often the uplink status is checked for a change to push
_RETRY_BIND_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL}) | CAPACITY_ERRNOS


class FeedServer:
    """The staff feed. Start with `await nursery.start(server.run)`, which returns the bound port.

    `status()` returns the daemon's live figures, e.g. {"uplink_status": {...}, "ports": {name:
    {"timeouts": int, "crc_errors": int}}}. `command_handler(request, requested_by)` executes a
    supervisor's command and returns the result fields; without it, commands are refused with
    "commands not enabled".
    """

    def __init__(self, settings: FeedSettings, outbox: Outbox, status: Callable[[], dict[str, Any]],
                 command_handler: CommandHandler | None = None, *,
                 monitor: Monitor | None = None) -> None:
        self.settings = settings
        self.outbox = outbox
        self.status = status
        self.board = AlertBoard()
        self.command_handler = command_handler
        self.tokens = TokenTable(settings.tokens)
        self.limiter = FailureLimiter(settings.auth_failures_per_minute)
        self.logins = LoginBook(settings.session_max_s)
        self.admission = guard.admission(settings, guard.descriptor_limit())
        self.throttle = LogThrottle(60.0)
        self.port: int | None = None        # once bound
        self.listening = trio.Event()       # set once bound
        self.bind_error: str | None = None  # while the port cannot be bound
        self.bind_failures = 0
        self._own_monitor = monitor is None
        self.monitor = monitor or Monitor(outbox, status, HealthLimits(
            degraded_depth=settings.degraded_depth))
        self.registry = self.monitor.registry
        self.fanout = Fanout(settings, self.board)
        self.metrics = FeedMetrics.register(
            self.registry, self.monitor.auth_failures,
            clients=lambda: len(self.fanout.clients), connections=lambda: self.admission.open)
        self.fanout.on_dropped = self.metrics.dropped.inc
        self.sessions = Sessions(self)
        self.http = HttpFront(self)

    @property
    def client_count(self) -> int:
        return len(self.fanout.clients)

    def statistics(self) -> FeedStatistics:
        return self.fanout.statistics()

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Rebuild the alert board from recent history, bind, report the port, serve forever."""
        self.outbox.commit_listeners.append(self.fanout.on_commit)
        try:
            await self._prime()
            self._warn_if_clear()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.fanout.run)
                nursery.start_soon(self._watch_status)
                nursery.start_soon(partial(summarize_suppressed, self.throttle,
                                           "feed: repeated warnings not logged one by one",
                                           listener="feed"))
                listeners = await self._listen_or_retry(task_status)
                for listener in listeners:
                    nursery.start_soon(partial(
                        serve_accepting, listener, self.http.serve_connection, nursery,
                        name="feed", on_full=self.metrics.accept_full.inc))
        finally:
            self.outbox.commit_listeners.remove(self.fanout.on_commit)
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
                suppressed = self.throttle.admit("bind", trio.current_time())
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

    async def _listen(self) -> list[Any]:
        listeners: list[Any] = await trio.open_tcp_listeners(self.settings.port,
                                                             host=self.settings.host)
        if self.settings.certfile is None:
            return listeners
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.settings.certfile, self.settings.keyfile)
        return [trio.SSLListener(listener, context, https_compatible=True)
                for listener in listeners]

    def _warn_if_clear(self) -> None:
        """Staff tokens over plain ws:// on an address others can reach travel in clear."""
        if self.settings.certfile is None and self.settings.tokens \
                and not is_loopback(self.settings.host):
            log.error("STAFF TOKENS IN CLEAR: the feed listens without TLS on a non-loopback "
                      "address; anyone on the LAN can read them. Set feed.certfile and "
                      "feed.keyfile, or listen on 127.0.0.1 behind a TLS proxy",
                      host=self.settings.host, tokens=len(self.settings.tokens))

    async def _prime(self) -> None:
        """Replay the tail of the outbox into the board so open handpays and doors from before a
        restart are still shown. Commits during the replay wait in the fan-out's backlog."""
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
        self.fanout.primed()

    # -- shared with the parts -------------------------------------------------------------------

    def replace_tokens(self, entries: tuple[TokenEntry, ...]) -> int:
        """The reloaded token list (SIGHUP). Sessions whose token is gone (or whose name or role
        changed) are closed with 1008 "token revoked"; returns how many."""
        self.settings = replace(self.settings, tokens=tuple(entries))
        self.tokens = TokenTable(entries)
        revoked = [c for c in self.fanout.clients
                   if c.session.entry is not None and not self.tokens.holds(c.session.entry)]
        for client in revoked:
            self.fanout.clients.discard(client)
            client.close_soon(POLICY_VIOLATION, "token revoked")
            log.info("feed session closed: token revoked", client=client.remote,
                     name=client.session.identity and client.session.identity.name)
        return len(revoked)

    def note(self, message: str, kind: str, **fields: Any) -> None:
        """A warning about a client, at most once a minute per kind, with the repeat count."""
        suppressed = self.throttle.admit(kind, trio.current_time())
        if suppressed is not None:
            log.warning(message, repeated=suppressed, **fields)

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

    def state(self, hidden: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The board without the `hidden` alert kinds (the client's role: ALERT_ROLES)."""
        return {**self.board.snapshot(hidden), "uplink": self.uplink()}

    def snapshot_message(self, hidden: frozenset[str] = frozenset()) -> str:
        return dumps({"type": "alerts_snapshot", "time": rfc3339(time.time()),
                      "state": self.state(hidden)})

    def health(self) -> tuple[int, dict[str, Any]]:
        """What GET /health returns (gateway/monitor.py), with the feed's own figures."""
        return self.monitor.health({"feed": {"clients": len(self.fanout.clients),
                                             "connections": self.admission.open,
                                             "bind_failures": self.bind_failures}})

    async def _watch_status(self) -> None:
        """Push the uplink status to every client when it changes: checked every
        STATUS_INTERVAL_S (a frozen platform is a matter of time, not of an event)."""
        last = self.uplink()
        while True:
            await trio.sleep(STATUS_INTERVAL_S)
            now = self.uplink()
            if now != last:
                last = now
                self.fanout.broadcast(dumps({"type": "status", "time": rfc3339(time.time()),
                                             "uplink": now}))
