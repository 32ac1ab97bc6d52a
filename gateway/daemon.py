"""The daemon: builds the one nursery tree and keeps it alive (house-style.md section 3.5).

    root nursery (in start order)
    +-- signals             SIGTERM/SIGINT -> STOPPING=1 and cancel; SIGHUP -> reload what can be
    |                       reloaded (feed tokens, command allow-list), log what needs a restart
    +-- outbox writer       sole owner of the SQLite write connection (group commit)
    +-- control socket      `casino-gateway diag`: status snapshots and live poll traces
    +-- feed                the floor's alert board, WebSocket feed, /health, /metrics
    +-- port supervisor xN  gateway/ports.py: restarts its driver with backoff when the port breaks;
    |                       never touches the other ports
    +-- uplink              reconnect loop to the platform; platform commands -> CommandRouter
    +-- status              STATUS= lines; WATCHDOG=1 only while the pipeline is alive

Every service is started with `await nursery.start(...)`; READY=1 goes out after the last one
returned, so "ready" means every service is really up.

Watchdog honesty: the pings come from a task on the trio loop, so a wedged loop sends none; and
they are withheld while any machine event has waited longer than the stall limit (half of
WatchdogSec) for the outbox to make it durable -- a writer stuck on a dead disk gets the daemon
restarted by systemd instead of silently holding every machine on the floor.
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio

import gateway
from drivers.base import Driver, EventSink, MachineEvent, MachineRef, SourceRef
from gateway.capture import OutboxSink
from gateway.clock import clock_synchronised
from gateway.commands import CommandRouter, CommandSettings
from gateway.config import Config, load_config, settings_for
from gateway.control import (
    Activity,
    ControlServer,
    ControlUnavailableError,
    TraceHub,
    control_socket_path,
)
from gateway.errors import ConfigError
from gateway.feed.protocol import TokenEntry
from gateway.feed.server import FeedServer, FeedSettings
from gateway.monitor import HealthLimits, Monitor, serve_monitor
from gateway.outbox import Outbox, OutboxSettings
from gateway.ports import check_devices_free, open_drivers, recoverable, stoppable_port
from gateway.reconcile import Reconciler
from gateway.signing import load_signing_key
from gateway.statistics import (
    GatewayFigures,
    OutboxFigures,
    PortFigures,
    ReconciliationFigures,
    UplinkFigures,
)
from gateway.status import UplinkTracker, UplinkView
from gateway.systemd import Notifier
from gateway.uplink.client import UplinkClient, UplinkSettings

__all__ = ["Gateway", "PipelineHealth", "WatchedSink", "format_duration", "reload_config",
           "report_status", "run"]

log = structlog.get_logger("gateway.daemon")

class PipelineHealth:
    """Tracks machine events on their way into the outbox, for an honest watchdog: the pipeline
    is alive while no event has waited longer than `stall_after_s` to become durable (an idle
    pipeline is healthy)."""

    def __init__(self, stall_after_s: float, *,
                 paused: Callable[[], bool] = lambda: False) -> None:
        self.stall_after_s = stall_after_s
        # True while waiting is by design (the outbox stopped intake at its disk floor: machines
        # hold their exceptions until space is back); a restart would not help.
        self.paused = paused
        self._pending: dict[int, float] = {}
        self._ids = itertools.count()
        self.last_durable_at: float | None = None

    @contextmanager
    def recording(self) -> Iterator[None]:
        token = next(self._ids)
        self._pending[token] = trio.current_time()
        try:
            yield
        finally:
            del self._pending[token]
            self.last_durable_at = trio.current_time()

    def stalled_for(self, now: float) -> float:
        """How long the oldest event still on its way has waited (0 if none)."""
        return max((now - t for t in self._pending.values()), default=0.0)

    def alive(self, now: float) -> bool:
        return self.stalled_for(now) < self.stall_after_s or self.paused()

    def describe(self, now: float) -> dict[str, Any]:
        return {"alive": self.alive(now), "paused": self.paused(),
                "events_in_flight": len(self._pending),
                "oldest_in_flight_s": round(self.stalled_for(now), 3),
                "stall_after_s": self.stall_after_s}


class WatchedSink:
    """The EventSink drivers get: the outbox sink, with every record() timed by PipelineHealth."""

    def __init__(self, inner: EventSink, health: PipelineHealth) -> None:
        self._inner = inner
        self._health = health

    async def record(self, event: MachineEvent) -> None:
        with self._health.recording():
            await self._inner.record(event)

    def acknowledged(self, event: MachineEvent) -> None:
        self._inner.acknowledged(event)

    def is_redelivery(self, machine: MachineRef, source: SourceRef) -> bool:
        return self._inner.is_redelivery(machine, source)

    async def redelivered(self, event: MachineEvent) -> None:
        with self._health.recording():
            await self._inner.redelivered(event)


def format_duration(seconds: float) -> str:
    """45s, 4m, 2h05m, 3d04h: what a STATUS line or a table has room for."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


@dataclass
class Gateway:
    """Handles on the running services, for the demo, the control socket and tests."""

    config: Config
    outbox: Outbox
    sink: EventSink
    drivers: dict[str, Driver]
    uplink: UplinkClient
    commands: CommandRouter
    feed: FeedServer | None = None
    feed_port: int | None = None
    monitor: Monitor | None = None
    monitor_port: int | None = None
    started_at: float = field(default_factory=time.time)
    port_failures: dict[str, int] = field(default_factory=dict)
    port_errors: dict[str, str] = field(default_factory=dict)  # why a port is down, for diag
    trace: TraceHub = field(default_factory=TraceHub)
    activity: Activity = field(default_factory=Activity)
    health: PipelineHealth = field(default_factory=lambda: PipelineHealth(15.0))
    control_path: Path | None = None
    config_path: Path | None = None
    uplink_down_since: float | None = field(default_factory=time.time)
    # One per supervised port: a clean stop ends machine intake before gatewayStopping.
    port_scopes: list[trio.CancelScope] = field(default_factory=list)
    tracker: UplinkTracker | None = None
    reconciler: Reconciler | None = None  # docs/reconciliation.md

    def uplink_view(self) -> UplinkView:
        """The uplink as everything reports it (gateway/status.py): one tracker, one answer."""
        if self.tracker is None:
            self.tracker = UplinkTracker(self.started_at, self.config.uplink.frozen_after_s)
        return self.tracker.observe(self.uplink.statistics(),
                                    delivered_seq=self.outbox.delivered_seq,
                                    depth=self.outbox.depth(), now=time.monotonic(),
                                    wall=time.time())

    def figures(self) -> GatewayFigures:
        """The one typed snapshot diag, /metrics, /health and the status line read."""
        ports = []
        for name, driver in self.drivers.items():
            stats = driver.statistics()
            ports.append(PortFigures.of(name, stats.state, stats.machines,
                                        failures=self.port_failures.get(name, 0),
                                        last_error=self.port_errors.get(name)))
        return GatewayFigures(tuple(ports), OutboxFigures.of(self.outbox.statistics()),
                              UplinkFigures.of(self.uplink.statistics()),
                              self.uplink_view().as_dict(),
                              reconciliation=(ReconciliationFigures.of(self.reconciler.summary())
                                              if self.reconciler else None))

    def status(self) -> dict[str, Any]:
        """`figures()` as JSON for the feed (alert banner) and the monitor."""
        return self.figures().as_status()

    def uplink_down_for(self) -> float | None:
        """Seconds the uplink has not been delivering (down or frozen; since start if it never
        connected), None while up."""
        view = self.uplink_view()
        if view.connected or view.since is None:
            return None
        return max(0.0, time.time() - view.since)

    def status_line(self) -> str:
        """'12/14 machines online, uplink down 4m, 3,211 queued', each other kind of device
        the floor has counted apart after the machines (GatewayFigures.floor_line)."""
        floor = self.figures().floor_line()
        down = self.uplink_down_for()
        state = "frozen" if self.uplink_view().state == "frozen" else "down"
        uplink = "uplink up" if down is None else f"uplink {state} {format_duration(down)}"
        line = f"{floor}, {uplink}, {self.outbox.depth():,} queued"
        if self.outbox.intake_stopped:
            line += ", DISK FULL: intake stopped"
        return line


def health_limits(config: Config) -> HealthLimits:
    """When /health says degraded: [monitor] settings, else the defaults (and the feed's
    degraded_depth, which predates [monitor])."""
    if config.monitor is not None:
        return settings_for(config.monitor, HealthLimits, skip=("host", "port", "token_file"))
    if config.feed is not None:
        return HealthLimits(degraded_depth=config.feed.degraded_depth)
    return HealthLimits()


def outbox_settings(config: Config) -> OutboxSettings:
    """The `[outbox]` section, with where the outbox lives and whose events it seals."""
    gw = config.gateway
    return settings_for(config.outbox, OutboxSettings, skip=("commit_interval_ms",),
                        path=config.outbox_path, gateway_id=gw.id, venue=gw.venue,
                        region=gw.region)


def uplink_settings(config: Config) -> UplinkSettings:
    """The `[uplink]` section as the client takes it (`frozen_after_s` is the status tracker's)."""
    return settings_for(config.uplink, UplinkSettings, skip=("frozen_after_s",))


async def watch_uplink(gw: Gateway) -> None:
    """Feed the uplink tracker every change of the uplink task, and once a second (a frozen
    platform is a matter of time), whether or not anyone is looking at /health or the board."""
    while True:
        gw.uplink_view()
        with trio.move_on_after(1.0):
            await gw.uplink.wait_changed()


async def handle_signals(gw: Gateway, notifier: Notifier, cancel_scope: trio.CancelScope, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Started first, so a SIGTERM or SIGHUP during a slow start-up is handled, not fatal."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            if signum == signal.SIGHUP:
                reload_config(gw)
                continue
            log.info("stopping", signal=signal.Signals(signum).name)
            notifier.stopping()
            await record_stopping(gw, signal.Signals(signum).name)
            cancel_scope.cancel()
            return


# How long a clean stop may take to record gatewayStopping and hand it to a connected platform.
STOPPING_GRACE_S = 2.0


async def record_stopping(gw: Gateway, reason: str) -> None:
    """A clean stop: machine intake ends (a machine keeps what was not acknowledged, as on any
    stop), a signed `gatewayStopping` becomes the outbox's last event, and while the platform
    is connected it gets the chance to ack it, so the platform can tell a stop from a crash.
    Bounded: a stuck writer (a full disk) or a slow platform must not hold up the stop."""
    for scope in gw.port_scopes:
        scope.cancel()
    seq = 0
    with trio.move_on_after(STOPPING_GRACE_S):
        seq = await gw.outbox.append_system("gatewayStopping", {"reason": reason})
        if gw.uplink.statistics()["connected"]:
            while gw.outbox.delivered_seq < seq:
                await gw.uplink.wait_changed()
    if not seq:
        log.warning("stopping without a gatewayStopping event: the outbox did not commit it "
                    f"within {STOPPING_GRACE_S:g} s")


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the configuration fields that differ (a list or a section appearing or
    going away counts as one change)."""
    if dataclasses.is_dataclass(old) and dataclasses.is_dataclass(new) and type(old) is type(new):
        out: list[str] = []
        for f in dataclasses.fields(old):
            name = f"{prefix}.{f.name}" if prefix else f.name
            out += _differences(getattr(old, f.name), getattr(new, f.name), name)
        return out
    return [] if old == new else [prefix]


def reload_config(gw: Gateway) -> dict[str, list[str]]:
    """SIGHUP: re-read the configuration file and apply what can change at run time (the feed's
    tokens, the command allow-list); log every other change as needing a restart. A file that no
    longer validates changes nothing. Returns {"applied": [...], "restart_needed": [...]}."""
    result: dict[str, list[str]] = {"applied": [], "restart_needed": []}
    if gw.config_path is None:
        log.warning("SIGHUP: started without a configuration file; nothing to reload")
        return result
    try:
        new = load_config(gw.config_path)
    except ConfigError as err:
        log.error("SIGHUP: configuration rejected; still running with the previous one",
                  path=str(gw.config_path), error=str(err))
        return result
    old = gw.config
    changed = _differences(old, new)
    running = old
    if "feed.tokens" in changed and old.feed is not None and new.feed is not None:
        assert gw.feed is not None
        entries = tuple(TokenEntry(t.name, t.role, t.sha256) for t in new.feed.tokens)
        # New connections use the new table; sessions whose token is gone are closed.
        revoked = gw.feed.replace_tokens(entries)
        running = dataclasses.replace(running, feed=dataclasses.replace(
            running.feed, tokens=new.feed.tokens))  # type: ignore[arg-type]
        before = {t.name for t in old.feed.tokens}
        after = {t.name for t in new.feed.tokens}
        log.info("SIGHUP: feed tokens reloaded", added=sorted(after - before),
                 removed=sorted(before - after), tokens=len(entries), sessions_closed=revoked)
        result["applied"].append("feed.tokens")
    if "commands.allowed" in changed:
        gw.commands.settings = dataclasses.replace(gw.commands.settings,
                                                   allowed=frozenset(new.commands.allowed))
        running = dataclasses.replace(running, commands=new.commands)
        log.info("SIGHUP: command allow-list reloaded", allowed=sorted(new.commands.allowed),
                 was=sorted(old.commands.allowed))
        result["applied"].append("commands.allowed")
    result["restart_needed"] = [c for c in changed if c not in result["applied"]]
    gw.config = running
    if result["restart_needed"]:
        log.warning("SIGHUP: these changes need a restart (systemctl restart casino-gateway)",
                    fields=result["restart_needed"])
    elif not result["applied"]:
        log.info("SIGHUP: configuration unchanged", path=str(gw.config_path))
    return result


async def report_status(gw: Any, notifier: Notifier) -> None:
    """STATUS= whenever the line changes; WATCHDOG=1 at half of WatchdogSec while the pipeline is
    alive (`gw.health`), withheld -- and logged once -- while it is not."""
    interval = notifier.watchdog_interval()
    last = ""
    withheld = False
    next_ping = trio.current_time()
    while True:
        now = trio.current_time()
        line = gw.status_line()
        alive = gw.health.alive(now)
        if not alive:
            line += f", outbox stalled {format_duration(gw.health.stalled_for(now))}"
        if line != last:
            notifier.status(line)
            last = line
        if interval is not None and now >= next_ping:
            next_ping = now + interval
            if alive:
                notifier.watchdog()
                if withheld:
                    log.info("watchdog resumed: events reach the outbox again")
                    withheld = False
            elif not withheld:
                log.error("watchdog withheld: a machine event has waited too long for the outbox",
                          waited_s=round(gw.health.stalled_for(now), 1),
                          limit_s=gw.health.stall_after_s)
                withheld = True
        # STATUS= every 5 s at most; WATCHDOG=1 every half WatchdogSec (docs/operations.md).
        wake = now + 5.0 if interval is None else min(now + 5.0, next_ping)
        await trio.sleep_until(wake)


def assemble(config: Config, outbox: Outbox, *, stall_after_s: float,
             config_path: Path | None) -> Gateway:
    """The gateway's parts around an open outbox: drivers, commands, uplink, monitor, feed."""
    trace = TraceHub()
    reconciler = Reconciler()
    capture = OutboxSink(outbox, currency=config.gateway.currency, reconciler=reconciler)
    drivers = open_drivers(config, trace, capture)
    router = CommandRouter(CommandSettings(allowed=frozenset(config.commands.allowed),
                                           db_path=config.gateway.state_dir / "commands.db",
                                           currency=config.gateway.currency),
                           outbox, drivers)
    uplink = UplinkClient(uplink_settings(config), outbox, command_handler=router.handle)
    health = PipelineHealth(stall_after_s=stall_after_s,
                            paused=lambda: outbox.intake_stopped)
    gw = Gateway(config=config, outbox=outbox, sink=WatchedSink(capture, health),
                 reconciler=reconciler, drivers=drivers, uplink=uplink, commands=router,
                 trace=trace, health=health,
                 control_path=control_socket_path(config.gateway), config_path=config_path)
    outbox.commit_listeners.append(gw.activity.on_commit)
    gw.monitor = Monitor(outbox, gw.figures, health_limits(config),
                         events_per_s=gw.activity.rate_per_s)
    if config.feed is not None:
        async def staff_command(request: dict[str, Any], requested_by: str) -> dict[str, Any]:
            return await router.handle(request, f"staff:{requested_by}")

        gw.feed = FeedServer(FeedSettings.from_config(config.feed), outbox, gw.status,
                             command_handler=staff_command, monitor=gw.monitor)
        router.alerts = gw.feed.board  # acknowledgeAlert is checked against the open alerts
    return gw


async def run(config: Config, *, notifier: Notifier | None = None, handle_signals_: bool = True,
              config_path: Path | None = None,
              task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the gateway until cancelled (or SIGTERM when `handle_signals_`). `config_path` is the
    file SIGHUP re-reads."""
    # Polling makes many short-lived objects: with the default generation-0 threshold (700) the
    # collector cost 10% of the poll rate at 1,000 machines (bench/sas_poll.py, docs/sas.md).
    gc.set_threshold(100_000, 100, 1_000)
    check_devices_free(config)  # before anything is opened: a second gateway touches nothing
    notifier = notifier or Notifier()
    interval = notifier.watchdog_interval()
    signer = load_signing_key(config.gateway.key_file)
    outbox = Outbox.open(outbox_settings(config), signer)
    log.info("outbox open", path=str(config.outbox_path), epoch=outbox.epoch,
             last_seq=outbox.last_seq, undelivered=outbox.depth(), kid=signer.kid)
    gw = assemble(config, outbox, stall_after_s=max(interval or 15.0, 2.0),
                  config_path=config_path)
    router, uplink = gw.commands, gw.uplink
    control: ControlServer | None = ControlServer(gw, gw.control_path)
    try:
        # Bound before the nursery: another gateway on this socket is a plain ConfigError (78).
        try:
            await control.open()  # type: ignore[union-attr]
        except ControlUnavailableError as err:
            log.error("running without the control socket: diag will not work", error=str(err))
            control = gw.control_path = None
        async with trio.open_nursery() as nursery:
            if handle_signals_:
                await nursery.start(handle_signals, gw, notifier, nursery.cancel_scope)
            await nursery.start(outbox.run_writer)
            await outbox.append_system("gatewayStarted", _started_data(config))
            if control is not None:
                await nursery.start(control.run)
            if gw.feed is not None:
                # The floor works without the platform: the feed starts before the uplink.
                gw.feed_port = await nursery.start(gw.feed.run)
            if config.monitor is not None:
                gw.monitor_port = await nursery.start(serve_monitor, config.monitor, gw.monitor)
            nursery.start_soon(watch_uplink, gw)
            for port in config.ports:
                await nursery.start(partial(stoppable_port, errors=recoverable(port.protocol)),
                                    gw, port.name)
            await nursery.start(uplink.run)
            nursery.start_soon(report_status, gw, notifier)
            gc.freeze()  # what start-up built lives for the whole run: keep it out of collections
            notifier.ready(gw.status_line())
            log.info("gateway ready", gateway_id=config.gateway.id, ports=len(config.ports),
                     version=gateway.__version__)
            task_status.started(gw)
    finally:
        with trio.CancelScope(shield=True):
            router.close()
            await outbox.aclose()
        log.info("gateway stopped", last_seq=outbox.last_seq, delivered_seq=outbox.delivered_seq)


def _started_data(config: Config) -> dict[str, Any]:
    data: dict[str, Any] = {
        "version": gateway.__version__,
        "ports": [{"name": p.name, "device": str(p.device), "addresses": list(p.addresses)}
                  for p in config.ports]}
    synchronised = clock_synchronised()
    if synchronised is not None:
        data["clock_synchronised"] = synchronised
    return data
