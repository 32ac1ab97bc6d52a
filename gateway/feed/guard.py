"""The feed's connection caps, fitted to the process's descriptor limit. The counting itself
(`Admission`, shared with the control socket) is in gateway/limits.py."""

from __future__ import annotations

import resource

import structlog

from gateway.feed.settings import FeedSettings
from gateway.limits import Admission

__all__ = ["FD_RESERVE", "admission", "descriptor_limit"]

log = structlog.get_logger(__name__)

# Descriptors kept for everything but feed connections: the outbox (database, WAL, shm), the
# command store, the serial ports, the uplink, the signing child, the control socket and its
# clients (16), the feed's listeners, logging, and a margin.
FD_RESERVE = 96


def descriptor_limit() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def admission(settings: FeedSettings, nofile: int) -> Admission:
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
