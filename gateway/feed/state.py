"""The alert board: what floor staff must see right now, rebuilt from the event stream alone.

Theory of operation. Every sealed envelope, in seq order, goes through `AlertBoard.apply`. Some
events open an alert, some close one, the rest are ignored:

    handpayPending  opens "handpay"         closed by handpayReset (same machine)
    doorOpened      opens "door"            closed by doorClosed (same machine and door)
    tilt            opens "tilt"            closed by alertAcknowledged
    deviceOffline   opens "offline"         closed by deviceOnline (same machine)
    cardReaderOffline opens "reader"        closed by cardReaderOnline (same machine and reader)
    bufferOverflow  opens "bufferOverflow"  closed by alertAcknowledged
    meterDiscrepancy opens "meters"         closed by alertAcknowledged (docs/reconciliation.md)
    alertAcknowledged marks an open alert as acknowledged (and closes tilts / overflows)

An alert is keyed by the seq of the event that opened it, which is stable across restarts because
the board can be rebuilt by replaying the outbox. Because the board is a pure function of the
stream, every client and every restart agree on it. No I/O, no clock: times are the events' own.

Deltas. Every change to the board gets the next `version` and is kept as a `Change` until the
server drains it (`drain`) into one `alerts_delta` message, so a client holding version V applies
exactly the changes above V and can tell when it missed one (docs/feed-protocol.md section 4).
The same tilt again on a machine whose tilt of that kind is still open is a `changed` (its count
goes up), not a second alert: a machine that repeats a fault is one thing for a person to fix.

The uplink's status is not on the board: it comes from the uplink task's live state
(gateway/feed/status.py), never from the last uplinkUp/uplinkDown in the outbox.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Any

from drivers.model import machine_key

__all__ = ["ALERT_KINDS", "OPENING_EVENTS", "SEVERITY", "Alert", "AlertBoard", "Change",
           "machine_label"]

ALERT_KINDS = ("handpay", "door", "tilt", "offline", "reader", "bufferOverflow", "meters")
# Most urgent first: a handpay is a player waiting for money, an open door a security matter.
# A card reader offline (players there cannot be rated, the machine plays on) comes after the
# machine's own faults, before the bookkeeping ones nobody on the floor can fix.
SEVERITY = {"handpay": 0, "door": 1, "tilt": 2, "offline": 3, "reader": 4, "bufferOverflow": 5,
            "meters": 6}

_OPENERS = {"handpayPending": "handpay", "doorOpened": "door", "tilt": "tilt",
            "deviceOffline": "offline", "cardReaderOffline": "reader",
            "bufferOverflow": "bufferOverflow", "meterDiscrepancy": "meters"}
OPENING_EVENTS = frozenset(_OPENERS)
# Alerts without a closing event from the machine: an acknowledgement is what clears them.
CLOSED_BY_ACK = frozenset({"tilt", "bufferOverflow", "meters"})  # the others stay, marked
HISTORY_PER_MACHINE = 10
MAX_PENDING_CHANGES = 10_000


def machine_label(machine: dict[str, Any] | None) -> str | None:
    """'port/address', the name staff and filters use for a machine."""
    if not machine:
        return None
    return machine_key(machine.get("port"), machine.get("address"))


@dataclass(frozen=True, slots=True)
class Alert:
    """One open alert. `seq` is the seq of the event that opened it and is the alert's id."""

    seq: int
    kind: str
    event: str
    machine: str | None
    machine_info: dict[str, Any] | None
    opened: str
    data: dict[str, Any]
    acknowledged_by: str | None = None
    acknowledged_at: str | None = None
    ack_note: str | None = None
    count: int = 1
    last: str | None = None
    closed: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "event": self.event, "machine": self.machine,
                "machine_info": self.machine_info, "opened": self.opened, "data": self.data,
                "acknowledged_by": self.acknowledged_by, "acknowledged_at": self.acknowledged_at,
                "ack_note": self.ack_note, "count": self.count, "last": self.last or self.opened}


@dataclass(frozen=True, slots=True)
class Change:
    """One change to the board: `op` is opened, changed, acknowledged or closed."""

    version: int
    op: str
    alert: Alert

    def as_dict(self) -> dict[str, Any]:
        if self.op == "closed":
            return {"v": self.version, "op": "closed", "seq": self.alert.seq,
                    "machine": self.alert.machine, "at": self.alert.closed}
        return {"v": self.version, "op": self.op, "alert": self.alert.as_dict()}


class AlertBoard:
    """Current alerts, fed sealed envelopes in seq order."""

    def __init__(self) -> None:
        self._alerts: dict[int, Alert] = {}
        self._history: dict[str, deque[Alert]] = {}
        self._changes: list[Change] = []
        self.seq = 0
        self.version = 0
        self.epoch: str | None = None

    def apply(self, envelope: dict[str, Any]) -> bool:
        """Apply one envelope; return True if the board changed. An envelope at or below the last
        applied seq is ignored, so overlapping replays (start-up rebuild + live) are harmless.
        An envelope of a new epoch starts the board over (`_new_epoch`)."""
        epoch = envelope.get("epoch")
        changed = False
        if epoch is not None and epoch != self.epoch:
            changed = self.epoch is not None and self._new_epoch(envelope["timestamp"])
            self.epoch = epoch
        return self._apply(envelope) or changed

    def _new_epoch(self, at: str) -> bool:
        """The outbox started a new epoch (docs/outbox.md section 3): seqs restart at 1, so the
        seq cursor starts over, and the open alerts, keyed by the old epoch's seqs (a new alert
        could take the same id), are closed; the salvaged events re-open theirs."""
        gone = list(self._alerts.values())
        for alert in gone:
            self._remove(alert, at)
        self.seq = 0
        return bool(gone)

    def _apply(self, envelope: dict[str, Any]) -> bool:
        seq = envelope["seq"]
        if seq <= self.seq:
            return False
        self.seq = seq
        event = envelope["event"]
        machine = machine_label(envelope.get("machine"))
        data = envelope.get("data") or {}
        kind = _OPENERS.get(event)
        at = envelope["timestamp"]
        if kind is not None:
            return self._open(kind, envelope, machine, data)
        if event == "handpayReset":
            return self._close(lambda a: a.kind == "handpay" and a.machine == machine, at)
        if event == "doorClosed":
            door = data.get("door")
            return self._close(lambda a: a.kind == "door" and a.machine == machine
                               and a.data.get("door") == door, at)
        if event == "deviceOnline":
            return self._close(lambda a: a.kind == "offline" and a.machine == machine, at)
        if event == "cardReaderOnline":
            reader = data.get("reader")
            return self._close(lambda a: a.kind == "reader" and a.machine == machine
                               and a.data.get("reader") == reader, at)
        if event == "alertAcknowledged":
            return self._acknowledge(data, at)
        return False

    def _record(self, op: str, alert: Alert) -> None:
        self.version += 1
        self._changes.append(Change(self.version, op, alert))
        if len(self._changes) > MAX_PENDING_CHANGES:
            # Nobody drains (no client connected): clients resync from a snapshot anyway.
            del self._changes[: len(self._changes) // 2]

    def _open(self, kind: str, envelope: dict[str, Any], machine: str | None,
              data: dict[str, Any]) -> bool:
        # A door reported open twice, or a machine or reader reported offline twice, is still
        # one alert: the first report is the one staff are already looking at. The same tilt
        # again counts.
        for alert in self._alerts.values():
            if alert.kind != kind or alert.machine != machine:
                continue
            if kind in ("door", "offline", "reader") and alert.data.get("door") == data.get(
                    "door") and alert.data.get("reader") == data.get("reader"):
                return False
            if kind == "tilt" and alert.data.get("kind") == data.get("kind"):
                again = replace(alert, count=alert.count + 1, last=envelope["timestamp"])
                self._alerts[alert.seq] = again
                self._record("changed", again)
                return True
        alert = Alert(seq=envelope["seq"], kind=kind, event=envelope["event"], machine=machine,
                      machine_info=envelope.get("machine"), opened=envelope["timestamp"],
                      data=dict(data))
        self._alerts[alert.seq] = alert
        self._record("opened", alert)
        return True

    def _close(self, matches: Any, at: str) -> bool:
        gone = [alert for alert in self._alerts.values() if matches(alert)]
        for alert in gone:
            self._remove(alert, at)
        return bool(gone)

    def _remove(self, alert: Alert, at: str) -> None:
        del self._alerts[alert.seq]
        closed = replace(alert, closed=at)
        if alert.machine is not None:
            history = self._history.setdefault(alert.machine, deque(maxlen=HISTORY_PER_MACHINE))
            history.appendleft(closed)
        self._record("closed", closed)

    def _acknowledge(self, data: dict[str, Any], timestamp: str) -> bool:
        alert = self._alerts.get(data.get("alert_seq", -1))
        if alert is None:
            return False
        acked = replace(alert, acknowledged_by=data.get("by"), acknowledged_at=timestamp,
                        ack_note=data.get("note"))
        if alert.kind in CLOSED_BY_ACK:
            self._alerts[alert.seq] = acked
            self._remove(acked, timestamp)
        else:
            self._alerts[alert.seq] = acked
            self._record("acknowledged", acked)
        return True

    def get(self, seq: int) -> Alert | None:
        return self._alerts.get(seq)

    def ack_refusal(self, alert_seq: int) -> str | None:
        """Why `alert_seq` cannot be acknowledged now, or None if it can."""
        alert = self._alerts.get(alert_seq)
        if alert is None:
            return "no open alert has that seq"
        if alert.acknowledged_by is not None:
            return f"already acknowledged by {alert.acknowledged_by}"
        return None

    def drain(self) -> list[Change]:
        """The changes since the last drain, oldest first (for one `alerts_delta` message)."""
        changes, self._changes = self._changes, []
        return changes

    def history(self, machine: str, hidden: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
        """A machine's open alerts, most urgent first, then its last closed ones, newest first
        (none of the `hidden` kinds)."""
        open_ = sorted((a for a in self._alerts.values()
                        if a.machine == machine and a.kind not in hidden),
                       key=lambda a: (SEVERITY.get(a.kind, 9), a.seq))
        closed = [a for a in self._history.get(machine, ()) if a.kind not in hidden]
        return [{**a.as_dict(), "closed": None} for a in open_] + \
            [{**a.as_dict(), "closed": a.closed} for a in closed]

    @property
    def alerts(self) -> list[Alert]:
        """Open alerts, newest first."""
        return sorted(self._alerts.values(), key=lambda a: a.seq, reverse=True)

    def snapshot(self, hidden: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The whole board as JSON-ready data: sent on connect and on a client's `resync`;
        without alerts of the `hidden` kinds (what the client's role does not see)."""
        return {"version": self.version, "seq": self.seq,
                "alerts": [a.as_dict() for a in self.alerts if a.kind not in hidden]}
