"""Who may hold a connection, and how often a failure is written to the log, for every listener
(the staff feed, the control socket) and the daemon's port supervision. Pure: counts and the
time passed in, no I/O, so the limits are tested without sockets.

Why. One address opening 1,100 half-open requests used every file descriptor the daemon had: the
uplink could not reconnect and `diag` could not connect. `Admission` caps connections per
listener and per address, and caps those not (yet) authenticated globally and per address, the
per-address caps well below the global ones, so one address cannot take all the room and lock out
another. `LogThrottle` keeps an attack from writing one journal line per attempt: the first
occurrence of a kind is logged, repeats within the interval are only counted, and the next line
after the interval carries the count.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Admission", "LogThrottle", "Ticket"]


@dataclass(eq=False, slots=True)
class Ticket:
    """One admitted connection; `authenticated()` once it is, `release()` when it closes."""

    admission: Admission
    address: str
    is_authenticated: bool = False
    released: bool = False

    def authenticated(self) -> None:
        if not self.is_authenticated and not self.released:
            self.is_authenticated = True
            self.admission._unauthenticated(self.address, -1)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        if not self.is_authenticated:
            self.admission._unauthenticated(self.address, -1)
        self.admission._connection(self.address, -1)


class Admission:
    """Connection caps: `total` and `per_address` over every connection; `unauthenticated` and
    `unauthenticated_per_address` over those not authenticated (HTTP requests, WebSocket
    clients before their token)."""

    def __init__(self, *, total: int, per_address: int, unauthenticated: int,
                 unauthenticated_per_address: int) -> None:
        if min(total, per_address, unauthenticated, unauthenticated_per_address) < 1:
            raise ValueError("connection caps must be at least 1")
        self.total = total
        self.per_address = per_address
        self.unauthenticated_cap = unauthenticated
        self.unauthenticated_per_address = unauthenticated_per_address
        self.open = 0
        self.unauthenticated = 0
        self._open: dict[str, int] = {}
        self._unauth: dict[str, int] = {}

    def admit(self, address: str) -> Ticket | str:
        """A ticket, or why not: "listener_full", "address_full", "unauthenticated_full",
        "address_unauthenticated_full" (also the metric label)."""
        if self.open >= self.total:
            return "listener_full"
        if self._open.get(address, 0) >= self.per_address:
            return "address_full"
        if self.unauthenticated >= self.unauthenticated_cap:
            return "unauthenticated_full"
        if self._unauth.get(address, 0) >= self.unauthenticated_per_address:
            return "address_unauthenticated_full"
        self._connection(address, 1)
        self._unauthenticated(address, 1)
        return Ticket(self, address)

    def _connection(self, address: str, delta: int) -> None:
        self.open += delta
        _bump(self._open, address, delta)

    def _unauthenticated(self, address: str, delta: int) -> None:
        self.unauthenticated += delta
        _bump(self._unauth, address, delta)


def _bump(counts: dict[str, int], key: str, delta: int) -> None:
    value = counts.get(key, 0) + delta
    if value > 0:
        counts[key] = value
    else:
        counts.pop(key, None)


class LogThrottle:
    """`admit(kind, now)` returns None to stay quiet, else how many of `kind` were suppressed
    since the last line (0 the first time). At most one line per kind per `interval_s`; at most
    `max_kinds` kinds are told apart (the rest share one), so the table stays small too."""

    def __init__(self, interval_s: float = 60.0, max_kinds: int = 256) -> None:
        self.interval_s = interval_s
        self.max_kinds = max_kinds
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def admit(self, kind: str, now: float) -> int | None:
        if kind not in self._last and len(self._last) >= self.max_kinds:
            kind = "(other)"
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return None
        self._last[kind] = now
        return self._suppressed.pop(kind, 0)

    def due(self, now: float) -> list[tuple[str, int]]:
        """Kinds with repeats suppressed for a whole interval, and how many: for a periodic
        summary line, so the count is told even when the attack (and the next line) stops."""
        out = [(kind, count) for kind, count in self._suppressed.items()
               if now - self._last[kind] >= self.interval_s]
        for kind, _ in out:
            del self._suppressed[kind]
            self._last[kind] = now
        return out
