"""/health and /metrics for the people who page on them, on a listener of their own.

`Monitor` holds the Prometheus registry and decides health; the staff feed (gateway/feed) serves
the same two endpoints from the same `Monitor`, and `serve_monitor` serves them on their own
port, with or without the feed: loopback by default with no authentication, and a non-loopback
bind only with a bearer token file (docs/operations.md "Monitoring").

Health is one function of the daemon's typed figures (`assess`, gateway/statistics.py), which
diag reads too, so /health, the metrics and the board cannot disagree: `degraded` (HTTP 503)
with one reason per problem, `ok` (200) without.
"""

from __future__ import annotations

import hmac
import platform
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import h11
import structlog
import trio
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from drivers.model import machine_key
from gateway import __version__
from gateway.config import MonitorSection
from gateway.events import rfc3339
from gateway.outbox import footprint
from gateway.outbox.footprint import Footprint
from gateway.statistics import (
    CARD_READER,
    COUNTERS,
    MACHINE,
    GatewayFigures,
    OutboxFigures,
    PortFigures,
    ReconciliationFigures,
)

if TYPE_CHECKING:
    from gateway.outbox import Outbox

__all__ = ["HealthLimits", "Monitor", "assess", "serve_monitor"]

log = structlog.get_logger(__name__)

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UPLINK_STATES = ("up", "frozen", "down", "unknown")
MAX_HEAD = 8192


@dataclass(frozen=True, slots=True)
class HealthLimits:
    """When /health turns `degraded`."""

    uplink_down_s: float = 60.0        # the uplink not delivering for longer than this
    undelivered_s: float = 300.0       # the oldest undelivered event older than this
    degraded_depth: int = 10_000       # more undelivered events than this


def assess(status: GatewayFigures | Mapping[str, Any], limits: HealthLimits, *,
           wall: float) -> list[str]:
    """Why the gateway is degraded, one plain sentence per problem; [] when it is ok. `status`:
    the figures, or their JSON form (`GatewayFigures.as_status`)."""
    figures = status if isinstance(status, GatewayFigures) else GatewayFigures.from_status(status)
    reasons: list[str] = []
    view = figures.view or {}
    since = view.get("since")
    if view.get("state") == "frozen":
        reasons.append(f"uplink frozen: {view.get('reason')}")
    elif view.get("connected") is False and isinstance(since, int | float) \
            and wall - since > limits.uplink_down_s:
        reasons.append(f"uplink down for {wall - since:.0f} s (limit {limits.uplink_down_s:g} s):"
                       f" {view.get('reason')}")
    outbox = figures.outbox or OutboxFigures()
    if outbox.oldest_undelivered_s > limits.undelivered_s:
        reasons.append(f"oldest undelivered event is {outbox.oldest_undelivered_s:.0f} s old "
                       f"(limit {limits.undelivered_s:g} s)")
    if outbox.depth > limits.degraded_depth:
        reasons.append(f"{outbox.depth} events undelivered (limit {limits.degraded_depth})")
    if outbox.intake_stopped:
        reasons.append("disk floor reached: the outbox stopped taking events")
    for port in figures.ports:
        if not port.running:
            reasons.append(f"port {port.name} down ({port.state})")
            continue
        offline = [m.address for m in port.of_device(MACHINE) if not m.online]
        if offline:
            reasons.append(f"port {port.name}: machine(s) {', '.join(map(str, offline))} "
                           "offline")
        for reader in port.of_device(CARD_READER):
            if not reader.online:
                reasons.append(f"card reader {port.name} (beside {reader.own.get('machine')})"
                               " offline")
    reconciliation = figures.reconciliation or ReconciliationFigures()
    for machine, meters in sorted(reconciliation.open.items()):
        reasons.append(f"machine {machine}: meters do not add up ({', '.join(meters)}); "
                       f"see its meterDiscrepancy")
    return reasons


class _StatusCollector:
    """Figures read at scrape time from the daemon's `status()`."""

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        monitor = self._monitor
        status = monitor.snapshot()
        outbox = monitor.outbox
        info = GaugeMetricFamily("gateway_build_info", "The gateway's version (value is 1).",
                                 labels=["version", "python"])
        info.add_metric([__version__, platform.python_version()], 1.0)
        yield info
        reasons = assess(status, monitor.limits, wall=time.time())
        found = CounterMetricFamily("gateway_meter_discrepancies", "Windows in which a meter "
                                    "did not add up (docs/reconciliation.md).",
                                    labels=["machine", "meter"])
        reconciliation = status.reconciliation or ReconciliationFigures()
        for machine, meters in sorted(reconciliation.discrepancies_total.items()):
            for meter, n in sorted(meters.items()):
                found.add_metric([machine, meter], n)
        yield found
        yield GaugeMetricFamily("gateway_health_degraded", "1 while /health says degraded.",
                                value=1.0 if reasons else 0.0)
        yield GaugeMetricFamily("gateway_outbox_depth", "Events not yet acknowledged by the "
                                "platform.", value=outbox.depth())
        yield from _footprint_metrics(monitor)
        yield GaugeMetricFamily("gateway_outbox_last_seq", "Seq of the newest durable event.",
                                value=outbox.last_seq)
        yield GaugeMetricFamily("gateway_outbox_delivered_seq", "Highest seq the platform "
                                "acknowledged.", value=outbox.delivered_seq)
        yield GaugeMetricFamily("gateway_outbox_oldest_undelivered_age_seconds",
                                "Age of the oldest event not yet acknowledged (0 if none).",
                                value=outbox.oldest_undelivered_s() or 0.0)
        yield GaugeMetricFamily("gateway_outbox_intake_stopped", "1 while the disk floor "
                                "stops intake.", value=1.0 if outbox.intake_stopped else 0.0)
        view = status.view or {"state": "unknown"}
        yield GaugeMetricFamily("gateway_uplink_up", "1 while the platform is connected and "
                                "acknowledging (state up).",
                                value=1.0 if view.get("state") == "up" else 0.0)
        yield GaugeMetricFamily("gateway_uplink_connected", "Same as gateway_uplink_up (kept "
                                "for existing dashboards).",
                                value=1.0 if view.get("state") == "up" else 0.0)
        state = GaugeMetricFamily("gateway_uplink_state", "1 for the uplink's current state.",
                                  labels=["state"])
        for name in UPLINK_STATES:
            state.add_metric([name], 1.0 if view.get("state") == name else 0.0)
        yield state
        if isinstance(view.get("since"), int | float):
            yield GaugeMetricFamily("gateway_uplink_state_since_seconds", "Unix time the "
                                    "current uplink state began.", value=view["since"])
        uplink = status.uplink
        if uplink.attempts is not None:
            yield CounterMetricFamily("gateway_uplink_connect_attempts", "Connection attempts "
                                      "to the platform.", value=uplink.attempts)
        if uplink.reconnects is not None:
            yield CounterMetricFamily("gateway_uplink_reconnects", "Connections to the platform "
                                      "lost after being up (each followed by reconnecting).",
                                      value=uplink.reconnects)
        yield from _port_families(status.ports)


# statistics.COUNTERS, in words.
_COUNTER_HELP = {
    "polls": "Polls sent.",
    "timeouts": "Polls unanswered.",
    "crc_errors": "Frames with a bad CRC.",
    "resent_after_reset": "Exceptions a machine re-sent after a reset cut off their ACK, "
                          "acknowledged without a second record.",
}


def _port_families(ports: tuple[PortFigures, ...]) -> Any:
    up = GaugeMetricFamily("gateway_port_up", "1 while the port's driver runs.", labels=["port"])
    failures = CounterMetricFamily("gateway_port_failures", "Times the port's driver failed "
                                   "and was restarted.", labels=["port"])
    machine_up = GaugeMetricFamily("gateway_machine_up", "1 while the machine answers polls.",
                                   labels=["port", "address"])
    reader_up = GaugeMetricFamily("gateway_card_reader_up", "1 while the player-card reader's "
                                  "line is open (machine: the one it sits beside).",
                                  labels=["port", "machine"])
    per_port = {key: CounterMetricFamily(f"gateway_port_{key}", _COUNTER_HELP[key],
                                         labels=["port"]) for key in COUNTERS}
    per_machine = {key: CounterMetricFamily(f"gateway_machine_{key}", _COUNTER_HELP[key],
                                            labels=["port", "address"]) for key in COUNTERS}
    for port in ports:
        up.add_metric([port.name], 1.0 if port.running else 0.0)
        failures.add_metric([port.name], port.failures)
        for key in COUNTERS:
            per_port[key].add_metric([port.name], port.total(key))
        for reader in port.of_device(CARD_READER):
            reader_up.add_metric([port.name, str(reader.own.get("machine", ""))],
                                 1.0 if reader.online else 0.0)
        for m in port.of_device(MACHINE):
            machine_up.add_metric([port.name, str(m.address)], 1.0 if m.online else 0.0)
            for key in COUNTERS:
                per_machine[key].add_metric([port.name, str(m.address)], getattr(m, key))
    yield up
    yield failures
    yield from per_port.values()
    yield machine_up
    yield from per_machine.values()
    yield reader_up


def _footprint_metrics(monitor: Monitor) -> Iterator[GaugeMetricFamily]:
    """The outbox's size per event and the hours of uplink outage the free disk holds at the
    current event rate (absent until a scrape measured them, or with no estimate)."""
    found = monitor.footprint
    if found is None or found.error is not None:
        return
    if found.bytes_per_event is not None:
        yield GaugeMetricFamily("gateway_outbox_bytes_per_event", "Outbox file bytes (with its "
                                "WAL) per event kept.", value=found.bytes_per_event)
    rate = monitor.events_per_s() if monitor.events_per_s is not None else 0.0
    hours = found.outage_hours_left(rate)
    if hours is not None:
        yield GaugeMetricFamily("gateway_outbox_outage_capacity_hours", "Hours of uplink outage "
                                "the free disk holds at the current event rate.", value=hours)


def _epoch_state(outbox: Outbox) -> dict[str, Any]:
    """The epoch state, as diag shows it: a start that began a new epoch (a torn or restored
    outbox, docs/outbox.md section 3) says so in /health too, not only in its lossMarker."""
    stats = outbox.statistics()
    return {key: stats[key] for key in ("epoch", "witness", "epoch_changes", "epoch_change")}


class Monitor:
    """The registry and the health verdict, shared by the feed and the monitor listener."""

    def __init__(self, outbox: Outbox,
                 status: Callable[[], GatewayFigures | Mapping[str, Any]],
                 limits: HealthLimits | None = None, *,
                 events_per_s: Callable[[], float] | None = None) -> None:
        self.outbox = outbox
        self.status = status
        self.limits = limits or HealthLimits()
        # The outage the disk can hold, measured before each scrape (`scrape`): the same
        # figures `diag status` shows (gateway/outbox/footprint.py).
        self.events_per_s = events_per_s
        self.footprint: Footprint | None = None
        self.registry = CollectorRegistry()
        self._events = Counter("gateway_events", "Events made durable, by type.", ["type"],
                               registry=self.registry)
        self.auth_failures = Counter("gateway_feed_auth_failures", "Failed staff logins on the "
                                     "feed.", registry=self.registry)
        self._durable = Histogram(
            "gateway_capture_to_durable_seconds", "From capture to committed in the outbox.",
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry)
        self.registry.register(_StatusCollector(self))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        latencies = outbox.durable_latencies
        self._last_latency: float | None = latencies[-1] if latencies else None
        outbox.commit_listeners.append(self._on_commit)

    def close(self) -> None:
        if self._on_commit in self.outbox.commit_listeners:
            self.outbox.commit_listeners.remove(self._on_commit)

    def snapshot(self) -> GatewayFigures:
        """The daemon's figures, with the outbox's own when the status has none."""
        raw = self.status()
        figures = raw if isinstance(raw, GatewayFigures) else GatewayFigures.from_status(raw)
        if figures.outbox is None:
            figures = replace(figures, outbox=OutboxFigures.of(self.outbox.statistics()))
        return figures

    def _on_commit(self, envelopes: list[dict[str, Any]]) -> None:
        for envelope in envelopes:
            self._events.labels(envelope["event"]).inc()
        # The outbox keeps the last 10,000 capture->durable figures in a deque; the newest ones
        # since the last call are those to the right of the float object seen last time.
        latencies = self.outbox.durable_latencies
        fresh = []
        for value in reversed(latencies):
            if value is self._last_latency:
                break
            fresh.append(value)
        if latencies:
            self._last_latency = latencies[-1]
        for value in fresh:
            self._durable.observe(value)

    def metrics(self) -> bytes:
        return generate_latest(self.registry)

    async def scrape(self) -> bytes:
        """/metrics: the outbox's footprint measured first (file system and database, so in a
        worker thread), then the registry."""
        outbox = self.outbox
        self.footprint = await trio.to_thread.run_sync(
            footprint.measure, outbox.settings.path, outbox.delivered_seq)
        return self.metrics()

    def health(self, extra: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of GET /health: 200 ok, 503 degraded with its reasons."""
        status = self.snapshot()
        wall = time.time()
        epoch = _epoch_state(self.outbox)
        reasons = assess(status, self.limits, wall=wall)
        view = dict(status.view or {"state": "unknown", "connected": None, "since": None,
                                    "reason": "no uplink status reported"})
        if isinstance(view.get("since"), int | float):
            view["since"] = rfc3339(view["since"])
        outbox = self.outbox
        ports = {p.name: _port_summary(p) for p in status.ports}
        body = {"status": "degraded" if reasons else "ok", "reasons": reasons,
                "version": __version__, "time": rfc3339(wall), "uplink": view,
                "outbox": {"depth": outbox.depth(),
                           "oldest_undelivered_s": round(outbox.oldest_undelivered_s() or 0.0, 3),
                           "last_seq": outbox.last_seq, "delivered_seq": outbox.delivered_seq,
                           "intake_stopped": bool(outbox.intake_stopped), **epoch},
                "ports": ports, "machines": _machines_summary(status.ports),
                "card_readers": _readers_summary(status.ports),
                **(extra or {})}
        return (503 if reasons else 200), body


def _port_summary(port: PortFigures) -> dict[str, Any]:
    """A port on /health: its slot machines online of configured, or its card reader's."""
    out: dict[str, Any] = {"state": port.state}
    if port.of_device(CARD_READER):
        out.update(card_readers_online=port.online_of(CARD_READER),
                   card_readers=len(port.of_device(CARD_READER)))
    if port.of_device(MACHINE) or len(out) == 1:
        out.update(machines_online=port.machines_online, machines=len(port.of_device(MACHINE)))
    return out


def _machines_summary(ports: tuple[PortFigures, ...]) -> dict[str, Any]:
    """/health's view of the floor, from the same figures diag shows: slot machines online of
    configured, and each offline one with why (its port down, or missed polls)."""
    return {"online": sum(p.machines_online for p in ports),
            "total": sum(len(p.of_device(MACHINE)) for p in ports),
            "offline": [{"machine": machine_key(p.name, m.address), "reason": m.offline_reason}
                        for p in ports for m in p.of_device(MACHINE) if not m.online]}


def _readers_summary(ports: tuple[PortFigures, ...]) -> dict[str, Any]:
    """The player-card readers likewise: each offline one by its port, beside its machine."""
    return {"online": sum(p.online_of(CARD_READER) for p in ports),
            "total": sum(len(p.of_device(CARD_READER)) for p in ports),
            "offline": [{"card_reader": p.name, "beside": r.own.get("machine"),
                         "reason": r.offline_reason}
                        for p in ports for r in p.of_device(CARD_READER) if not r.online]}


# -- the listener ----------------------------------------------------------------------------------

async def serve_monitor(settings: MonitorSection, monitor: Monitor, *,
                        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve GET /health and /metrics on their own port until cancelled; reports the port."""
    token = None
    if settings.token_file is not None:
        token = (await trio.Path(settings.token_file).read_text()).strip().encode()
        if not token:
            raise ValueError(f"monitor.token_file {settings.token_file} is empty")
    listeners = await trio.open_tcp_listeners(settings.port, host=settings.host)
    port = listeners[0].socket.getsockname()[1]
    log.info("monitor listening", host=settings.host, port=port, auth=token is not None)
    task_status.started(port)

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(10):
                await _serve_one(stream, monitor, token)
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    await trio.serve_listeners(handle, listeners)


async def _serve_one(stream: trio.SocketStream, monitor: Monitor, token: bytes | None) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(MAX_HEAD)
            if not data:
                return
            conn.receive_data(data)
            continue
        break
    if not isinstance(event, h11.Request):
        return
    path = event.target.split(b"?", 1)[0]
    presented = b""
    for name, value in event.headers:
        if name == b"authorization" and value.startswith(b"Bearer "):
            presented = value[len(b"Bearer "):].strip()
    if event.method not in (b"GET", b"HEAD"):
        status, body, ctype = 405, b"method not allowed\n", "text/plain"
    elif token is not None and not hmac.compare_digest(presented, token):
        status, body, ctype = 401, b"bearer token required\n", "text/plain"
    elif path == b"/health":
        status, data = monitor.health()
        body, ctype = _json(data), "application/json"
    elif path == b"/metrics":
        status, body, ctype = 200, await monitor.scrape(), METRICS_TYPE
    else:
        status, body, ctype = 404, b"not found: /health and /metrics are here\n", "text/plain"
    headers = [(b"content-type", ctype.encode()), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-cache"), (b"connection", b"close")]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
    if event.method != b"HEAD":
        await stream.send_all(conn.send(h11.Data(data=body)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


def _json(data: Any) -> bytes:
    import json
    return json.dumps(data, separators=(",", ":"), default=str).encode()

