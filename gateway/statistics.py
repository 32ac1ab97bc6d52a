"""Typed, frozen statistics snapshots: one type per source (machine and port, outbox, uplink),
built from the source's own figures in one place and read alike by `diag` (gateway/control.py),
/metrics and /health (gateway/monitor.py) and the daemon's status line.

Drivers, the outbox and the uplink client report plain mappings (their rooms, their names); the
`of` constructors here are the only code that reads those mappings, and the sums a port reports
(machines online, timeouts) are properties here, not re-added by each consumer. A new counter is
one field here and one line where it is shown. `GatewayFigures.as_status` is the JSON form the
daemon hands the feed and /health; `from_status` reads it back (a feed or monitor run on its own
is given that form). No trio, no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["CARD_READER", "COUNTERS", "DEVICE_WORDS", "MACHINE", "GatewayFigures",
           "MachineFigures", "OutboxFigures", "PortFigures", "UplinkFigures", "device_label",
           "device_of", "device_word"]

# Per-machine counters a port also reports as totals (and /metrics exports at both levels).
COUNTERS = ("polls", "timeouts", "crc_errors", "resent_after_reset")

# What a driver's entry is (its `device` figure; absent: a slot machine), and its name in the
# words staff and IT use. Every count of the floor counts each apart: a card reader's port is
# no machine (status line, /health, /metrics, diag).
MACHINE, CARD_READER = "machine", "card_reader"
DEVICE_WORDS = {MACHINE: ("machine", "machines"), CARD_READER: ("card reader", "card readers")}


def device_of(row: Mapping[str, Any]) -> str:
    """The kind of a machine entry (a driver's figures or diag's row; absent: a machine)."""
    return row.get("device") or MACHINE


def device_word(device: str, plural: bool = False) -> str:
    """'machine', 'card reader' (or the plurals); an unknown kind in words as well."""
    words = DEVICE_WORDS.get(device) or (device.replace("_", " "), device.replace("_", " ") + "s")
    return words[plural]


def device_label(port: str, address: int, device: str, beside: object = None) -> str:
    """A machine as 'bank-a-05/1'; any other device by its kind and port, and the machine it
    sits beside: 'card reader reader-5 (beside bank-a-05/1)'."""
    if device == MACHINE:
        return f"{port}/{address}"
    return f"{device_word(device)} {port}" + (f" (beside {beside})" if beside else "")


def _known(cls: type, figures: Mapping[str, Any], **fixed: Any) -> dict[str, Any]:
    """The entries of `figures` that are fields of `cls` (a source may report more, or fewer:
    an absent figure takes the field's default)."""
    names = {f.name for f in fields(cls)} - set(fixed)  # type: ignore[arg-type]
    return {**{k: v for k, v in figures.items() if k in names and v is not None}, **fixed}


@dataclass(frozen=True, slots=True)
class MachineFigures:
    """One machine as its driver reports it (drivers/base.py `PortStatistics.machines`)."""

    address: int
    device: str = MACHINE
    online: bool = False
    offline_reason: str | None = None
    serial: str | None = None
    asset: str | None = None
    sas_version: str | None = None
    rte: bool | None = None
    polls: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    nacks: int = 0
    busy: int = 0
    retries: int = 0
    exceptions: int = 0
    resent_after_reset: int = 0
    last_response_at: float | None = None   # the driver's (trio) clock
    latency_p50_s: float | None = None
    latency_p99_s: float | None = None
    # The driver's own plain figures beyond the fields above (a card reader's reads, bad reads,
    # bounces): diag and the control socket show them without knowing the protocol.
    own: Mapping[str, bool | int | float | str] = field(default_factory=dict)

    @classmethod
    def of(cls, address: int | str, figures: Mapping[str, Any]) -> MachineFigures:
        shared = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        own = figures.get("own")
        if not isinstance(own, Mapping):
            own = {k: v for k, v in figures.items()
                   if k not in shared and isinstance(v, bool | int | float | str)}
        return cls(**_known(cls, figures, address=int(address), own=dict(own)))


@dataclass(frozen=True, slots=True)
class PortFigures:
    """One port: its driver's state, its supervisor's restarts and last error, its machines."""

    name: str
    state: str = "running"
    failures: int = 0
    last_error: str | None = None
    machines: tuple[MachineFigures, ...] = ()

    @classmethod
    def of(cls, name: str, state: str, machines: Mapping[int | str, Mapping[str, Any]], *,
           failures: int = 0, last_error: str | None = None) -> PortFigures:
        return cls(name, state, failures, last_error, tuple(sorted(
            (MachineFigures.of(a, m) for a, m in machines.items()), key=lambda m: m.address)))

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def machines_online(self) -> int:
        """Slot machines online (not card readers: `online_of`)."""
        return self.online_of(MACHINE)

    def of_device(self, device: str) -> tuple[MachineFigures, ...]:
        return tuple(m for m in self.machines if m.device == device)

    def online_of(self, device: str) -> int:
        return sum(1 for m in self.of_device(device) if m.online)

    def total(self, counter: str) -> int:
        """A per-machine counter (one of COUNTERS, or any int field) summed over the port."""
        return sum(getattr(m, counter) for m in self.machines)


@dataclass(frozen=True, slots=True)
class OutboxFigures:
    """The outbox's figures that health, metrics and diag read (`Outbox.statistics()`)."""

    depth: int = 0
    last_seq: int = 0
    delivered_seq: int = 0
    oldest_undelivered_s: float = 0.0
    intake_stopped: bool = False
    durable_p99_ms: float | None = None

    @classmethod
    def of(cls, figures: Mapping[str, Any]) -> OutboxFigures:
        return cls(**_known(cls, figures))


@dataclass(frozen=True, slots=True)
class UplinkFigures:
    """The uplink task's own figures (`UplinkClient.statistics()`); what the gateway *reports*
    about the uplink is the tracker's view (gateway/status.py), kept beside it."""

    state: str = "unknown"
    connected: bool = False
    since: float | None = None
    attempts: int | None = None
    reconnects: int | None = None
    last_ack_seq: int | None = None
    last_error: str | None = None
    url: str | None = None

    @classmethod
    def of(cls, figures: Mapping[str, Any]) -> UplinkFigures:
        return cls(**_known(cls, figures))


@dataclass(frozen=True, slots=True)
class ReconciliationFigures:
    """The meter reconciler since start (docs/reconciliation.md): windows closed, discrepancies
    by machine key and meter, and the machines whose latest window did not add up (`open`)."""

    windows: int = 0
    discrepancies_total: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    open: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, summary: Mapping[str, Any]) -> ReconciliationFigures:
        return cls(windows=int(summary.get("windows") or 0),
                   discrepancies_total={k: dict(v) for k, v in
                                        (summary.get("discrepancies_total") or {}).items()},
                   open={k: tuple(v) for k, v in (summary.get("open") or {}).items()})

    def as_dict(self) -> dict[str, Any]:
        return {"windows": self.windows,
                "discrepancies_total": {k: dict(v) for k, v in self.discrepancies_total.items()},
                "open": {k: list(v) for k, v in self.open.items()}}


@dataclass(frozen=True, slots=True)
class GatewayFigures:
    """Everything at one instant: ports, outbox, uplink, and the uplink as reported (`view`:
    UplinkView.as_dict(), None when nothing reported one)."""

    ports: tuple[PortFigures, ...] = ()
    outbox: OutboxFigures | None = None
    uplink: UplinkFigures = UplinkFigures()
    view: Mapping[str, Any] | None = None
    reconciliation: ReconciliationFigures | None = None

    @property
    def machines_online(self) -> int:
        return sum(p.machines_online for p in self.ports)

    def floor_line(self) -> str:
        """'12/14 machines online, 13/14 card readers online': each kind of device apart,
        a kind the floor does not have left out (machines are always said)."""
        parts = []
        for device, (_, plural) in DEVICE_WORDS.items():
            total = sum(len(p.of_device(device)) for p in self.ports)
            if total or device == MACHINE:
                online = sum(p.online_of(device) for p in self.ports)
                parts.append(f"{online}/{total} {plural} online")
        return ", ".join(parts)

    def as_status(self) -> dict[str, Any]:
        """The JSON form: {"uplink", "uplink_status", "ports": {name: {..., "machines":
        {"address": {...}}}}, "outbox"}, with each port's totals spelled out."""
        ports = {p.name: {"state": p.state, "failures": p.failures, "last_error": p.last_error,
                          "machines_online": p.machines_online,
                          **{c: p.total(c) for c in COUNTERS},
                          "machines": {str(m.address): asdict(m) for m in p.machines}}
                 for p in self.ports}
        out: dict[str, Any] = {"uplink": asdict(self.uplink), "uplink_status": self.view,
                               "ports": ports}
        if self.outbox is not None:
            out["outbox"] = asdict(self.outbox)
        if self.reconciliation is not None:
            out["reconciliation"] = self.reconciliation.as_dict()
        return out

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> GatewayFigures:
        """Read the JSON form back (any part may be missing)."""
        ports: Iterable[tuple[str, Mapping[str, Any]]] = sorted(
            (status.get("ports") or {}).items())
        outbox = status.get("outbox")
        reconciliation = status.get("reconciliation")
        return cls(
            ports=tuple(PortFigures.of(name, p.get("state") or "running", p.get("machines") or {},
                                       failures=p.get("failures") or 0,
                                       last_error=p.get("last_error"))
                        for name, p in ports if isinstance(p, Mapping)),
            outbox=None if outbox is None else OutboxFigures.of(outbox),
            uplink=UplinkFigures.of(status.get("uplink") or {}),
            view=status.get("uplink_status"),
            reconciliation=(ReconciliationFigures.of(reconciliation)
                            if isinstance(reconciliation, Mapping) else None))
