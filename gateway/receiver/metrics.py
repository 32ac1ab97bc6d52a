"""The receiver's Prometheus metrics (`casino_receiver_*`), served by the gateway's own
monitor listener (gateway/monitor.py `serve_monitor`: loopback by default, a non-loopback bind
only with a bearer token file).

The server counts what it does (connections, frames, events, refusals, verify and store time);
on JetStream, `watch_platform` adds the NATS side, read at scrape time from the `Platform`
(connection state, publishes in flight, compare-and-set conflicts) plus the publish-ack
histogram the platform observes. Every name is listed in docs/platform.md "Metrics".
"""

from __future__ import annotations

import os
import platform as _platform
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nacl.signing import VerifyKey
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gateway import __version__
from gateway.receiver.store import Checked, verify_events

if TYPE_CHECKING:
    from gateway.platform.store import Platform

__all__ = ["NATS_STATES", "ReceiverMetrics", "check_token_file", "timed_verify"]

NATS_STATES = ("up", "reconnecting", "down")
# One frame's checks: ~80 us per event, so 1 to 10,000 events span ~100 us to ~1 s.
VERIFY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# A group commit (SQLite fsync) or a JetStream batch (publish, R3 acks, mark update).
STORE_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


def check_token_file(path: Path) -> None:
    """The scrape token is a secret: a regular file, not readable by group or others, not empty
    (ValueError with a one-line reason otherwise)."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise ValueError(f"metrics token file {path}: {err.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"metrics token file {path} is not a regular file")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"metrics token file {path} has mode {stat.S_IMODE(st.st_mode):04o}; "
                         "it must be 0600")
    if not path.read_text().strip():
        raise ValueError(f"metrics token file {path} is empty")


def timed_verify(raws: list[bytes], keys: dict[str, VerifyKey]
                 ) -> tuple[list[Checked], float, float]:
    """`verify_events`, with its wall and CPU seconds (CPU of the thread it runs in)."""
    wall, cpu = time.perf_counter(), time.thread_time()
    checked = verify_events(raws, keys)
    return checked, time.perf_counter() - wall, time.thread_time() - cpu


class ReceiverMetrics:
    """One receiver process's registry. Duck-types gateway.monitor.Monitor for the listener:
    `scrape()` for /metrics and `health()` for /health."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.platform: Platform | None = None
        self.connections_open: Callable[[], int] = lambda: 0
        r = self.registry = CollectorRegistry()
        self.connections = Counter("casino_receiver_connections", "WebSocket connections "
                                   "accepted (bearer token known).", registry=r)
        self.batches = Counter("casino_receiver_batches", "Events frames stored and "
                               "acknowledged without error.", registry=r)
        self.events = Counter("casino_receiver_events", "Events stored (new to the store, "
                              "duplicates not counted).", registry=r)
        self.duplicates = Counter("casino_receiver_duplicate_events", "Events received again "
                                  "that the store already held (a resend; acknowledged).",
                                  registry=r)
        self.refusals = Counter("casino_receiver_refusals", "Connections the receiver closed "
                                "with an error, by WebSocket close code.", ["code"], registry=r)
        self.upgrade_refusals = Counter("casino_receiver_upgrade_refusals", "WebSocket "
                                        "upgrades refused, by HTTP status.", ["status"],
                                        registry=r)
        self.takeovers = Counter("casino_receiver_takeovers", "Connections closed 4004: a "
                                 "newer connection of the same gateway took over (on this or "
                                 "another receiver).", registry=r)
        self.verify_seconds = Histogram("casino_receiver_verify_seconds", "Signature, hash and "
                                        "schema checks of one events frame (wall time).",
                                        buckets=VERIFY_BUCKETS, registry=r)
        self.verify_cpu = Counter("casino_receiver_verify_cpu_seconds", "CPU time of those "
                                  "checks, summed over the threads that ran them.", registry=r)
        self.store_seconds = Histogram("casino_receiver_store_seconds", "Storing a group of "
                                       "verified frames: the SQLite commit, or the JetStream "
                                       "publishes, their acks and the mark update.",
                                       buckets=STORE_BUCKETS, registry=r)
        self.publish_ack_seconds: Histogram | None = None
        r.register(_Collector(self))
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)

    def refused(self, code: int) -> None:
        self.refusals.labels(str(code)).inc()
        if code == 4004:
            self.takeovers.inc()

    def watch_platform(self, platform: Platform) -> None:
        """JetStream: the NATS side's figures, and the publish-ack histogram it observes."""
        self.platform = platform
        self.publish_ack_seconds = Histogram(
            "casino_receiver_jetstream_publish_ack_seconds", "From the first publish of a batch "
            "to JetStream's last ack of it (each attempt that succeeded).",
            buckets=STORE_BUCKETS, registry=self.registry)
        platform.on_publish_acked = self.publish_ack_seconds.observe

    def nats_state(self) -> str:
        nc = self.platform.nc if self.platform is not None else None
        if nc is None or nc.is_closed:
            return "down"
        if nc.is_connected:
            return "up"
        return "reconnecting" if nc.is_reconnecting else "down"

    async def scrape(self) -> bytes:
        """/metrics (the listener's call): nothing to measure first."""
        return self.metrics()

    def metrics(self) -> bytes:
        return generate_latest(self.registry)

    def health(self, extra: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """200 ok; 503 on JetStream while NATS is not connected (the receiver refuses with
        1011 meanwhile)."""
        body: dict[str, Any] = {"status": "ok", "reasons": [], "version": __version__,
                                "backend": self.backend,
                                "connections_open": self.connections_open()}
        if self.platform is not None:
            body["nats"] = self.nats_state()
            if body["nats"] != "up":
                body.update(status="degraded", reasons=[f"NATS {body['nats']}"])
        body.update(extra or {})
        return (200 if body["status"] == "ok" else 503), body


class _Collector:
    """Figures read at scrape time: build info, open connections, the NATS side."""

    def __init__(self, metrics: ReceiverMetrics) -> None:
        self._m = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Iterator[Any]:
        m = self._m
        info = GaugeMetricFamily("casino_receiver_build_info", "The receiver's version and "
                                 "backend (value is 1).", labels=["version", "python", "backend"])
        info.add_metric([__version__, _platform.python_version(), m.backend], 1.0)
        yield info
        yield GaugeMetricFamily("casino_receiver_connections_open", "Gateway connections open "
                                "now.", value=m.connections_open())
        p = m.platform
        if p is None:
            return
        state = GaugeMetricFamily("casino_receiver_nats_connection_state", "1 for the NATS "
                                  "connection's current state.", labels=["state"])
        now = m.nats_state()
        for name in NATS_STATES:
            state.add_metric([name], 1.0 if name == now else 0.0)
        yield state
        yield CounterMetricFamily("casino_receiver_nats_reconnects", "Times the NATS "
                                  "connection was re-established.",
                                  value=p.nc.stats.get("reconnects", 0))
        yield GaugeMetricFamily("casino_receiver_jetstream_publishes_in_flight", "Events "
                                "published and not yet acknowledged by JetStream.",
                                value=p.in_flight)
        yield CounterMetricFamily("casino_receiver_jetstream_publishes", "Publishes JetStream "
                                  "acknowledged (a batch published again counts again).",
                                  value=p.published)
        yield CounterMetricFamily("casino_receiver_jetstream_duplicate_publishes", "Publishes "
                                  "JetStream acknowledged as duplicates (Nats-Msg-Id seen "
                                  "within the window: a resend after a receiver died).",
                                  value=p.publish_duplicates)
        yield CounterMetricFamily("casino_receiver_kv_cas_conflicts", "KV compare-and-set "
                                  "updates refused because another writer changed the key "
                                  "first (a mark: taken over; registry or commands: retried).",
                                  value=p.cas_conflicts)
