"""What the gateway says about its platform link: one tracker, read by the alert board, the
feed, /health, /metrics and the systemd status line, so they cannot disagree.

The uplink task's own `statistics()` change on every reconnect attempt (connecting, backoff,
connecting ...), and the outbox's last uplinkUp/uplinkDown survives a restart, so neither is the
answer alone. `UplinkTracker.observe` is fed the uplink task's live statistics and the outbox's
delivery figures and returns an `UplinkView`:

    up        connected and the platform acknowledges what it is sent
    frozen    connected, events waiting, and no acknowledgement for `frozen_after_s`
    down      not connected (reason: the last error, or "never connected since start")
    unknown   no uplink task reports anything (a feed without a daemon, in tests)

`since` is when the current state began (not when the last retry started) and `reason` is always
set. Pure: no I/O and no clock of its own; the caller passes monotonic and wall times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["FROZEN_AFTER_S", "UplinkTracker", "UplinkView"]

FROZEN_AFTER_S = 10.0   # observed at least once a second, so a freeze shows within 15 s


@dataclass(frozen=True, slots=True)
class UplinkView:
    """The uplink as the gateway reports it. `connected` is True only in state "up": events
    are flowing to the platform; None when unknown."""

    state: str
    connected: bool | None
    since: float | None     # wall-clock seconds when `state` began
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "connected": self.connected, "since": self.since,
                "reason": self.reason}


class UplinkTracker:
    """Turns samples of the uplink's live state into an `UplinkView` (see the module doc)."""

    def __init__(self, started_at: float, frozen_after_s: float = FROZEN_AFTER_S) -> None:
        self.started_at = started_at
        self.frozen_after_s = frozen_after_s
        self._view = UplinkView("unknown", None, None, "the uplink has not reported yet")
        self._ever_up = False
        self._delivered: int | None = None
        self._stuck_since: float | None = None   # monotonic: events waiting, no progress

    @property
    def view(self) -> UplinkView:
        return self._view

    def observe(self, uplink: dict[str, Any], *, delivered_seq: int, depth: int,
                now: float, wall: float) -> UplinkView:
        """One sample: `uplink` is UplinkClient.statistics() ({} without an uplink task),
        `now` monotonic seconds, `wall` time.time()."""
        if self._delivered != delivered_seq or depth <= 0:
            self._delivered = delivered_seq
            self._stuck_since = None
        elif self._stuck_since is None:
            self._stuck_since = now
        if "connected" not in uplink:
            return self._become("unknown", None, "no uplink status reported", wall)
        if uplink["connected"]:
            if not self._ever_up:
                self._ever_up = True
            stuck_for = 0.0 if self._stuck_since is None else now - self._stuck_since
            if stuck_for >= self.frozen_after_s:
                return self._become("frozen", False, "connected, but the platform has "
                                    f"acknowledged nothing for over {self.frozen_after_s:g} s",
                                    wall, since=wall - stuck_for)
            return self._become("up", True, "connected, events acknowledged", wall)
        if uplink.get("reconnects"):
            self._ever_up = True    # an outage after a connection this tracker did not see
        error = uplink.get("last_error") or (
            "connecting" if uplink.get("state") == "connecting" else "not connected")
        if not self._ever_up:
            return self._become("down", False, f"never connected since start: {error}",
                                wall, since=self.started_at)
        return self._become("down", False, str(error), wall)

    def _become(self, state: str, connected: bool | None, reason: str, wall: float,
                since: float | None = None) -> UplinkView:
        if self._view.state != state:
            self._view = UplinkView(state, connected, since if since is not None else wall,
                                    reason)
        elif self._view.reason != reason:
            self._view = UplinkView(state, connected, self._view.since, reason)
        return self._view
