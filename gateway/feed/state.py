"""The alert board: what floor staff must see right now, rebuilt from the event stream alone.

Theory of operation. Every sealed envelope, in seq order, goes through `AlertBoard.apply`. Some
events open an alert, some close one, the rest are ignored:

    handpayPending  opens "handpay"         closed by handpayReset (same machine)
    doorOpened      opens "door"            closed by doorClosed (same machine and door)
    tilt            opens "tilt"            closed by alertAcknowledged
    deviceOffline   opens "offline"         closed by deviceOnline (same machine)
    bufferOverflow  opens "bufferOverflow"  closed by alertAcknowledged
    alertAcknowledged marks an open alert as acknowledged (and closes tilts / overflows)
    uplinkDown / uplinkUp set the uplink status

An alert is keyed by the seq of the event that opened it, which is stable across restarts because
the board can be rebuilt by replaying the outbox. Because the board is a pure function of the
stream, every client and every restart agree on it. No I/O, no clock: times are the events' own.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

__all__ = ["ALERT_KINDS", "OPENING_EVENTS", "Alert", "AlertBoard", "UplinkStatus",
           "machine_label"]

ALERT_KINDS = ("handpay", "door", "tilt", "offline", "bufferOverflow")

_OPENERS = {"handpayPending": "handpay", "doorOpened": "door", "tilt": "tilt",
            "deviceOffline": "offline", "bufferOverflow": "bufferOverflow"}
OPENING_EVENTS = frozenset(_OPENERS)
# Alerts without a closing event from the machine: an acknowledgement is what clears them.
_CLOSED_BY_ACK = frozenset({"tilt", "bufferOverflow"})


def machine_label(machine: dict[str, Any] | None) -> str | None:
    """'port/address', the name staff and filters use for a machine."""
    if not machine:
        return None
    return f"{machine.get('port')}/{machine.get('address')}"


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

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "event": self.event, "machine": self.machine,
                "machine_info": self.machine_info, "opened": self.opened, "data": self.data,
                "acknowledged_by": self.acknowledged_by, "acknowledged_at": self.acknowledged_at,
                "ack_note": self.ack_note}


@dataclass(frozen=True, slots=True)
class UplinkStatus:
    """`connected` is None until the stream has said anything about the uplink."""

    connected: bool | None = None
    since: str | None = None
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"connected": self.connected, "since": self.since, "reason": self.reason}


class AlertBoard:
    """Current alerts and uplink status, fed sealed envelopes in seq order."""

    def __init__(self) -> None:
        self._alerts: dict[int, Alert] = {}
        self.uplink = UplinkStatus()
        self.seq = 0

    def apply(self, envelope: dict[str, Any]) -> bool:
        """Apply one envelope; return True if the board changed. An envelope at or below the last
        applied seq is ignored, so overlapping replays (start-up rebuild + live) are harmless."""
        seq = envelope["seq"]
        if seq <= self.seq:
            return False
        self.seq = seq
        event = envelope["event"]
        machine = machine_label(envelope.get("machine"))
        data = envelope.get("data") or {}
        kind = _OPENERS.get(event)
        if kind is not None:
            return self._open(kind, envelope, machine, data)
        if event == "handpayReset":
            return self._close(lambda a: a.kind == "handpay" and a.machine == machine)
        if event == "doorClosed":
            door = data.get("door")
            return self._close(lambda a: a.kind == "door" and a.machine == machine
                               and a.data.get("door") == door)
        if event == "deviceOnline":
            return self._close(lambda a: a.kind == "offline" and a.machine == machine)
        if event == "alertAcknowledged":
            return self._acknowledge(data, envelope["timestamp"])
        if event in ("uplinkDown", "uplinkUp"):
            up = event == "uplinkUp"
            if self.uplink.connected is up:
                return False
            self.uplink = UplinkStatus(up, envelope["timestamp"],
                                       None if up else data.get("reason"))
            return True
        return False

    def _open(self, kind: str, envelope: dict[str, Any], machine: str | None,
              data: dict[str, Any]) -> bool:
        # A door reported open twice, or a machine reported offline twice, is still one alert:
        # the first report is the one staff are already looking at.
        for alert in self._alerts.values():
            if alert.kind == kind and alert.machine == machine and kind in ("door", "offline") \
                    and alert.data.get("door") == data.get("door"):
                return False
        self._alerts[envelope["seq"]] = Alert(
            seq=envelope["seq"], kind=kind, event=envelope["event"], machine=machine,
            machine_info=envelope.get("machine"), opened=envelope["timestamp"], data=dict(data))
        return True

    def _close(self, matches: Any) -> bool:
        gone = [seq for seq, alert in self._alerts.items() if matches(alert)]
        for seq in gone:
            del self._alerts[seq]
        return bool(gone)

    def _acknowledge(self, data: dict[str, Any], timestamp: str) -> bool:
        alert = self._alerts.get(data.get("alert_seq", -1))
        if alert is None:
            return False
        if alert.kind in _CLOSED_BY_ACK:
            del self._alerts[alert.seq]
        else:
            self._alerts[alert.seq] = replace(alert, acknowledged_by=data.get("by"),
                                              acknowledged_at=timestamp, ack_note=data.get("note"))
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

    @property
    def alerts(self) -> list[Alert]:
        """Open alerts, newest first."""
        return sorted(self._alerts.values(), key=lambda a: a.seq, reverse=True)

    def snapshot(self) -> dict[str, Any]:
        """The whole board as JSON-ready data, sent on connect and after every change."""
        return {"seq": self.seq, "alerts": [a.as_dict() for a in self.alerts],
                "uplink": self.uplink.as_dict()}
