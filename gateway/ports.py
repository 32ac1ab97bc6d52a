"""Ports: one driver per `[[ports]]` table, built through its protocol's registration
(drivers/registry.py), and the supervisor that keeps it running (gateway/daemon.py starts one per
port).

A broken port is reopened with full-jitter exponential backoff; the other ports never notice. A
device another process holds is refused at start-up (exit 78), before anything is opened.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import structlog
import trio

from drivers import registry
from drivers.base import Driver
from drivers.link import LinkError
from drivers.link.lock import describe_process, lock_holder
from drivers.registry import DriverEnv, RestartJournal
from gateway.capture import OutboxSink
from gateway.config import Config, PortSection
from gateway.control import PortTap, TraceHub
from gateway.errors import ConfigError
from gateway.limits import LogThrottle
from gateway.uplink.protocol import backoff_delay

if TYPE_CHECKING:
    from gateway.daemon import Gateway

__all__ = ["PORT_RETRY_INITIAL_S", "PORT_RETRY_MAX_S", "RECOVERABLE", "build_driver",
           "check_devices_free", "open_drivers", "recoverable", "stoppable_port",
           "supervise_port"]

log = structlog.get_logger("gateway.daemon")

# What a port supervisor restarts after, with the errors its protocol registers
# (`DriverSpec.recoverable`); anything else is a bug and stops the daemon.
RECOVERABLE: tuple[type[BaseException], ...] = (LinkError, OSError)
# Reopening a broken port: full-jitter exponential backoff (the uplink's backoff_delay) from
# 0.5 s, capped at 5 s: an open() is cheap, and a replugged adapter should be polled again
# within seconds. A link that stayed up this long counts as recovered: the next failure
# starts the backoff from the beginning again.
PORT_RETRY_INITIAL_S = 0.5
PORT_RETRY_MAX_S = 5.0
PORT_STABLE_S = 10.0
PORT_LOG_INTERVAL_S = 60.0  # one `port failed` line per error per minute



def build_driver(port: PortSection, config: Config, trace: TraceHub | None = None, *,
                 journal: RestartJournal | None = None) -> Driver:
    """The driver for one port, by its protocol (drivers/registry.py); with `trace`, its link
    reports frames to the control socket; `journal` is the port's restart journal, if any."""
    spec = registry.get(port.protocol)
    tap = None if trace is None else PortTap(trace, port.name, spec.trace_decoder())
    return spec.build(port.driver_config(),
                      DriverEnv(config.gateway.state_dir, journal=journal, tap=tap))


def open_drivers(config: Config, trace: TraceHub,
                 capture: OutboxSink) -> dict[str, Driver]:
    """Every port's driver. Before a driver starts, the exceptions its line acknowledged
    before the restart (frames followed them, by its restart journal) are settled, so only
    the others can be taken for redeliveries (drivers/redelivery.py)."""
    drivers: dict[str, Driver] = {}
    for port in config.ports:
        journal = registry.get(port.protocol).open_journal(config.gateway.state_dir, port.name)
        capture.settle_restart(port.name, None if journal is None else journal.counter_at_open)
        drivers[port.name] = build_driver(port, config, trace, journal=journal)
    return drivers


def recoverable(protocol: str) -> tuple[type[BaseException], ...]:
    """What a port of `protocol` is reopened after: link errors and the protocol's own."""
    return (*RECOVERABLE, *registry.get(protocol).recoverable)


async def supervise_port(gw: Gateway, name: str, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                         jitter: Callable[[], float] = random.random,
                         recoverable: tuple[type[BaseException], ...] = RECOVERABLE) -> None:
    """Run one port's driver forever; a broken port is reopened with jittered backoff (the
    driver has reported its machines offline by then). `port failed; will retry` (retry_in_s:
    the delay really slept) is logged at most once a minute per error, with how many retries it
    stands for, so a dead port cannot fill the journal; every outage ends with its `port
    recovered` line. Reports started after the first attempt, successful or not, so one dead
    port cannot hold READY."""
    driver = gw.drivers[name]
    reported = False
    down_since: float | None = None  # trio time of the first failure of the current outage
    failures = 0  # in the current outage
    streak = 0  # failures since the link last stayed up PORT_STABLE_S: the backoff exponent
    throttle = LogThrottle(PORT_LOG_INTERVAL_S)
    while True:
        opened_at: float | None = None
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(driver.run, gw.sink)
                opened_at = trio.current_time()
                if down_since is not None:
                    # Every "down" has its recovery line, so the journal shows how long.
                    log.info("port recovered", port=name, attempts=failures,
                             down_for_s=round(opened_at - down_since, 3))
                    down_since, failures = None, 0
                    gw.port_errors.pop(name, None)
                if not reported:
                    reported = True
                    task_status.started()
        except* recoverable as group:
            gw.port_failures[name] = gw.port_failures.get(name, 0) + 1
            now = trio.current_time()
            failures += 1
            if down_since is None:
                down_since = now
            if opened_at is not None and now - opened_at >= PORT_STABLE_S:
                streak = 0
            error = group.exceptions[0]
            gw.port_errors[name] = str(error)
            # Decided before the log line, so retry_in_s is the delay really slept.
            delay = backoff_delay(streak, initial=PORT_RETRY_INITIAL_S,
                                  maximum=PORT_RETRY_MAX_S, random=jitter)
            streak += 1
            repeats = throttle.admit(f"{type(error).__name__}: {error}", now)
            if repeats is not None:
                log.warning("port failed; will retry", port=name, error=str(error),
                            error_type=type(error).__name__, retry_in_s=round(delay, 3),
                            attempt=failures, repeated=repeats)
        else:
            delay = 0.0  # the driver returned (it does not, but a return is no failure)
        if not reported:
            reported = True
            task_status.started()
        await trio.sleep(delay)


def check_devices_free(config: Config) -> None:
    """ConfigError (exit 78) naming the holder if another process holds a configured device's
    lock: a second gateway on a line would take its answers (docs/sas.md, "Port lifecycle")."""
    for i, port in enumerate(config.ports):
        holder = lock_holder(str(port.device))
        if holder is not None and holder != os.getpid():
            who = describe_process(holder) if holder > 0 else "another process"
            raise ConfigError(f"ports[{i}].device",
                              f"{port.device} is in use by {who}; is another gateway running? "
                              "Only one program may poll a SAS line")


async def stoppable_port(gw: Gateway, name: str, *,
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
                         errors: tuple[type[BaseException], ...] = RECOVERABLE) -> None:
    """`supervise_port` under a scope of its own, so a clean stop ends machine intake before
    gatewayStopping (`record_stopping`). Reports started even when stopped before the port
    did, so a stop during start-up is no error. `errors`: what the port is reopened after
    (`recoverable(protocol)`)."""
    reported = False

    class _Status:
        def started(self, value: None = None) -> None:
            nonlocal reported
            reported = True
            task_status.started(value)

    with trio.CancelScope() as stop:
        gw.port_scopes.append(stop)
        await supervise_port(gw, name, task_status=_Status(),  # type: ignore[arg-type]
                             recoverable=errors)
    if not reported:
        task_status.started()
