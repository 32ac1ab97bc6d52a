"""The feed's own Prometheus series, registered in the monitor's registry (gateway/monitor.py
owns /metrics and the daemon-wide series). Counters are incremented by http and session; the
two gauges read live figures when scraped."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["FeedMetrics"]


@dataclass(frozen=True, eq=False)
class FeedMetrics:
    dropped: Counter
    rate_limited: Counter
    refused: Counter
    handler_errors: Counter
    accept_full: Counter
    auth_failures: Counter

    @classmethod
    def register(cls, registry: CollectorRegistry, auth_failures: Counter, *,
                 clients: Callable[[], int], connections: Callable[[], int]) -> FeedMetrics:
        """The series in `registry`; `auth_failures` is the monitor's (it is daemon-wide)."""
        Gauge("gateway_feed_clients", "Authenticated staff feed clients.",
              registry=registry).set_function(clients)
        Gauge("gateway_feed_connections", "Open feed connections (HTTP and WebSocket).",
              registry=registry).set_function(connections)
        return cls(
            dropped=Counter("gateway_feed_dropped_clients", "Feed clients dropped as too slow.",
                            registry=registry),
            rate_limited=Counter("gateway_feed_rate_limited", "Feed logins answered 429: too "
                                 "many attempts from the address.", registry=registry),
            refused=Counter("gateway_feed_refused_connections", "Feed connections closed at "
                            "once: a connection cap was reached.", ["reason"], registry=registry),
            handler_errors=Counter("gateway_feed_handler_errors", "Feed connections ended by "
                                   "an unexpected error (a bug).", registry=registry),
            accept_full=Counter("gateway_feed_accept_failures", "Accepts that failed for lack "
                                "of file descriptors or memory.", registry=registry),
            auth_failures=auth_failures)
