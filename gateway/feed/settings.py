"""How the staff feed listens, whom it lets in and how it paces its work: one frozen record read by
every part of the feed (http, session, fan-out), built from the `[feed]` configuration section."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.feed.protocol import TokenEntry

if TYPE_CHECKING:
    from gateway.config import FeedSection

__all__ = ["FeedSettings"]


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
        from gateway.config import settings_for

        return settings_for(section, cls, tokens=tuple(
            TokenEntry(t.name, t.role, t.sha256) for t in section.tokens))
