"""The daemon: builds the one nursery tree and keeps it alive (house-style.md section 3.5).

    root nursery
    +-- outbox writer       sole owner of the SQLite write connection (group commit)
    +-- port supervisor xN  restarts its driver with backoff when the port breaks; never touches
    |                       the other ports
    +-- feed                the floor's alert board, WebSocket feed, /health, /metrics
    +-- uplink              reconnect loop to the platform; platform commands -> CommandRouter
    +-- signals             SIGTERM/SIGINT -> STOPPING=1 and cancel; SIGHUP -> logged
    +-- status              STATUS= lines and WATCHDOG=1 while the writer is alive

Every service is started with `await nursery.start(...)`; READY=1 goes out after the last one
returned, so "ready" means every service is really up.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import structlog
import trio

import gateway
from drivers.base import Driver
from drivers.link import LinkError, open_link
from drivers.sas.driver import SasDriver, SasSettings
from drivers.sas.errors import SasRemoteProtocolError
from drivers.sas.journal import PollJournal
from gateway.capture import OutboxSink
from gateway.commands import CommandRouter, CommandSettings
from gateway.config import Config, PortSection
from gateway.feed.server import FeedServer, FeedSettings
from gateway.outbox import Outbox, OutboxSettings
from gateway.signing import load_signing_key
from gateway.systemd import Notifier
from gateway.uplink.client import UplinkClient, UplinkSettings

__all__ = ["Gateway", "build_driver", "run"]

log = structlog.get_logger("gateway.daemon")

# What a port supervisor restarts after; anything else is a bug and stops the daemon.
RECOVERABLE = (LinkError, SasRemoteProtocolError, OSError)


@dataclass
class Gateway:
    """Handles on the running services, for the demo, the control socket and tests."""

    config: Config
    outbox: Outbox
    sink: OutboxSink
    drivers: dict[str, Driver]
    uplink: UplinkClient
    commands: CommandRouter
    feed: FeedServer | None = None
    feed_port: int | None = None
    started_at: float = field(default_factory=time.time)
    port_failures: dict[str, int] = field(default_factory=dict)

    def status(self) -> dict[str, Any]:
        """One snapshot for the feed (/health, /metrics, alert banner) and the control socket."""
        up = self.uplink.statistics()
        ports = {}
        for name, driver in self.drivers.items():
            machines = driver.statistics().machines
            ports[name] = {
                "timeouts": sum(m.get("timeouts", 0) for m in machines.values()),
                "crc_errors": sum(m.get("crc_errors", 0) for m in machines.values()),
                "failures": self.port_failures.get(name, 0),
                "machines": {str(a): dict(m) for a, m in machines.items()},
            }
        return {"uplink": dict(up), "ports": ports, "outbox": self.outbox.statistics()}

    def status_line(self) -> str:
        online = sum(1 for d in self.drivers.values()
                     for m in d.statistics().machines.values() if m.get("online"))
        total = sum(len(p.addresses) for p in self.config.ports)
        up = self.uplink.statistics()
        uplink = "up" if up.get("connected") else "down"
        return (f"{online}/{total} machines online, uplink {uplink}, "
                f"{self.outbox.depth():,} queued")


def build_driver(port: PortSection, config: Config) -> SasDriver:
    settings = SasSettings(
        poll_interval_s=port.poll_interval_ms / 1000,
        response_timeout_s=port.response_timeout_ms / 1000,
        offline_after_misses=port.offline_after_misses,
        rte=port.rte,
    )
    journal = PollJournal(config.gateway.state_dir / "polls" / f"{port.name}.journal")
    return SasDriver(port.name, partial(open_link, str(port.device), mode=port.link),
                     port.addresses, settings, journal=journal)


async def supervise_port(gw: Gateway, name: str, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Run one port's driver forever; a broken port is retried with capped backoff. Reports
    started after the first attempt, successful or not, so one dead port cannot hold READY."""
    driver = gw.drivers[name]
    backoff, reported = 1.0, False
    while True:
        began = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(driver.run, gw.sink)
                if not reported:
                    reported = True
                    task_status.started()
        except* RECOVERABLE as group:
            gw.port_failures[name] = gw.port_failures.get(name, 0) + 1
            error = group.exceptions[0]
            log.warning("port failed; will retry", port=name, error=str(error),
                        error_type=type(error).__name__, retry_in_s=backoff)
        if not reported:
            reported = True
            task_status.started()
        if trio.current_time() - began > 60:
            backoff = 1.0
        await trio.sleep(backoff)
        backoff = min(backoff * 2, 30.0)


async def handle_signals(gw: Gateway, notifier: Notifier, cancel_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.info("SIGHUP received: this version reloads nothing; restart to apply "
                         "configuration changes")
                continue
            log.info("stopping", signal=signal.Signals(signum).name)
            notifier.stopping()
            cancel_scope.cancel()
            return


async def report_status(gw: Gateway, notifier: Notifier) -> None:
    interval = notifier.watchdog_interval()
    last = ""
    while True:
        line = gw.status_line()
        if line != last:
            notifier.status(line)
            last = line
        if interval is not None:
            notifier.watchdog()
        await trio.sleep(min(interval or 5.0, 5.0))


async def run(config: Config, *, notifier: Notifier | None = None, handle_signals_: bool = True,
              task_status: trio.TaskStatus[Gateway] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the gateway until cancelled (or SIGTERM when `handle_signals_`)."""
    notifier = notifier or Notifier()
    signer = load_signing_key(config.gateway.key_file)
    outbox = Outbox.open(OutboxSettings(
        path=config.outbox_path, gateway_id=config.gateway.id, venue=config.gateway.venue,
        region=config.gateway.region, commit_interval_s=config.outbox.commit_interval_ms / 1000,
        batch_max=config.outbox.batch_max), signer)
    log.info("outbox open", path=str(config.outbox_path), epoch=outbox.epoch,
             last_seq=outbox.last_seq, undelivered=outbox.depth(), kid=signer.kid)
    drivers: dict[str, Driver] = {p.name: build_driver(p, config) for p in config.ports}
    router = CommandRouter(CommandSettings(allowed=frozenset(config.commands.allowed),
                                           db_path=config.gateway.state_dir / "commands.db"),
                           outbox, drivers)
    up = config.uplink
    uplink = UplinkClient(UplinkSettings(
        url=up.url, token_file=up.token_file, ca_file=up.ca_file, client_cert=up.client_cert,
        client_key=up.client_key, batch_max=up.batch_max, window=up.window,
        heartbeat_s=up.heartbeat_s, dead_after_s=up.dead_after_s,
        backoff_initial_s=up.backoff_initial_s, backoff_max_s=up.backoff_max_s), outbox,
        command_handler=router.handle)
    gw = Gateway(config=config, outbox=outbox,
                 sink=OutboxSink(outbox, currency=config.gateway.currency),
                 drivers=drivers, uplink=uplink, commands=router)
    if config.feed is not None:
        async def staff_command(request: dict[str, Any], requested_by: str) -> dict[str, Any]:
            return await router.handle(request, f"staff:{requested_by}")

        gw.feed = FeedServer(FeedSettings.from_config(config.feed), outbox, gw.status,
                             command_handler=staff_command)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            await outbox.append_system("gatewayStarted", _started_data(config))
            if gw.feed is not None:
                # The floor works without the platform: the feed starts before the uplink.
                gw.feed_port = await nursery.start(gw.feed.run)
            for port in config.ports:
                await nursery.start(supervise_port, gw, port.name)
            await nursery.start(uplink.run)
            if handle_signals_:
                nursery.start_soon(handle_signals, gw, notifier, nursery.cancel_scope)
            nursery.start_soon(report_status, gw, notifier)
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
    return {"version": gateway.__version__,
            "ports": [{"name": p.name, "device": str(p.device), "addresses": list(p.addresses)}
                      for p in config.ports]}
