"""The daemon's own logic: honest watchdog, STATUS lines, SIGHUP reload, traced ports."""

from __future__ import annotations

import io
import json
import os
import socket
import sys
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, open_websocket_url

from drivers.base import MachineEvent, MachineRef, SourceRef
from drivers.sim.fleet import serve_fleet
from gateway import daemon, ports
from gateway.config import load_config
from gateway.daemon import (
    PipelineHealth,
    WatchedSink,
    format_duration,
    reload_config,
    report_status,
)
from gateway.feed.protocol import hash_token
from gateway.logs import configure_logging
from gateway.outbox import open_readonly
from gateway.receiver.server import ReceiverSettings, serve_receiver
from gateway.signing import write_signing_key
from tests.gateway.test_control import all_online, running_gateway, short_dir, wait_until


class FakeNotifier:
    def __init__(self, interval: float | None) -> None:
        self.interval = interval
        self.sent: list[tuple[float, str]] = []

    def watchdog_interval(self) -> float | None:
        return self.interval

    def status(self, line: str) -> bool:
        self.sent.append((trio.current_time(), f"STATUS={line}"))
        return True

    def watchdog(self) -> bool:
        self.sent.append((trio.current_time(), "WATCHDOG=1"))
        return True


class FakeGateway:
    def __init__(self, health: PipelineHealth) -> None:
        self.health = health
        self.line = "2/2 machines online, uplink up, 0 queued"

    def status_line(self) -> str:
        return self.line


class StuckSink:
    """An outbox whose writer never returns until released (a dead disk)."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.acked: list[MachineEvent] = []

    async def record(self, event: MachineEvent) -> None:
        await self.release.wait()

    def acknowledged(self, event: MachineEvent) -> None:
        self.acked.append(event)

    async def redelivered(self, event: MachineEvent) -> None:
        pass

    def is_redelivery(self, machine: MachineRef, source: SourceRef) -> bool:
        return source.code == 0x11


def pings(notifier: FakeNotifier, start: float, end: float) -> int:
    return sum(1 for t, msg in notifier.sent if msg == "WATCHDOG=1" and start <= t < end)


async def test_watchdog_pings_only_while_events_reach_the_outbox(autojump_clock):
    health = PipelineHealth(stall_after_s=10.0)
    sink = StuckSink()
    watched = WatchedSink(sink, health)
    notifier = FakeNotifier(interval=5.0)
    gw = FakeGateway(health)
    event = MachineEvent("doorOpened", MachineRef("port1", 1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(report_status, gw, notifier)
        await trio.sleep(30)
        assert pings(notifier, 0, 30) == 6  # idle is healthy: every 5 s
        nursery.start_soon(watched.record, event)
        await trio.sleep(30)
        # Stuck for 10 s -> no more pings (systemd would restart us after WatchdogSec).
        assert pings(notifier, 40.5, 60) == 0
        assert any("outbox stalled" in msg for _, msg in notifier.sent)
        sink.release.set()
        await trio.sleep(11)
        assert pings(notifier, 60.5, 71) == 2  # resumed
        nursery.cancel_scope.cancel()
    assert health.describe(trio.current_time())["events_in_flight"] == 0
    watched.acknowledged(event)
    assert sink.acked == [event]
    assert watched.is_redelivery(event.machine, SourceRef("sas", 0x11))


async def test_without_watchdog_usec_only_status_lines(autojump_clock):
    notifier = FakeNotifier(interval=None)
    gw = FakeGateway(PipelineHealth(10.0))
    with trio.move_on_after(20):
        await report_status(gw, notifier)
    assert [msg for _, msg in notifier.sent] == ["STATUS=2/2 machines online, uplink up, 0 queued"]
    gw.line = "1/2 machines online, uplink down 4m, 3,211 queued"
    with trio.move_on_after(6):
        await report_status(gw, notifier)
    assert notifier.sent[-1][1] == "STATUS=1/2 machines online, uplink down 4m, 3,211 queued"


def test_durations_fit_a_status_line():
    assert format_duration(42) == "42s"
    assert format_duration(4 * 60 + 59) == "4m"
    assert format_duration(2 * 3600 + 5 * 60) == "2h05m"
    assert format_duration(3 * 86400 + 4 * 3600) == "3d04h"


def _write_config(base: Path, device: str, url: str, *, allowed: str, token_hash: str,
                  batch_max: int = 200) -> Path:
    path = base / "gateway.toml"
    path.write_text(
        f'[gateway]\nid = "reload-gw"\nkey_file = "gw.key"\nstate_dir = "state"\n'
        f'control_socket = "{short_dir(base) / "control.sock"}"\n'
        f'[uplink]\nurl = "{url}"\ntoken_file = "token"\nbatch_max = {batch_max}\n'
        f'[commands]\nallowed = [{allowed}]\n'
        f'[feed]\nport = 0\n[[feed.tokens]]\nname = "alice"\nsha256 = "{token_hash}"\n'
        f'role = "attendant"\n'
        f'[log]\nlevel = "warning"\n'
        f'[[ports]]\nname = "port1"\ndevice = "{device}"\npoll_interval_ms = 40\n')
    return path


async def test_sighup_reload_applies_tokens_and_allow_list(tmp_path: Path):
    write_signing_key(tmp_path / "gw.key")
    (tmp_path / "token").write_text("t\n")
    os.chmod(tmp_path / "token", 0o600)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            receiver = await nursery.start(serve_receiver, ReceiverSettings(
                host="127.0.0.1", port=0, db_path=tmp_path / "rx.db"))
            fleet = await nursery.start(partial(serve_fleet, 1, seed=2, events_per_second=1))
            device = fleet.device_paths[0]
            path = _write_config(tmp_path, device, receiver.url, allowed='"requestMeters"',
                                 token_hash=hash_token("old-token"))
            gw = await nursery.start(partial(daemon.run, load_config(path), config_path=path,
                                             handle_signals_=False))
            await wait_until(gw, lambda: all_online(gw))
            assert gw.feed is not None
            assert gw.feed.tokens.authenticate("old-token") is not None

            # Unchanged file: nothing applied, nothing to restart.
            assert reload_config(gw) == {"applied": [], "restart_needed": []}

            # A session logged in with the old token (issue 15: revoking a token on reload
            # closes its open sessions).
            url = f"ws://127.0.0.1:{gw.feed.port}/feed"
            async with open_websocket_url(url) as ws:
                await ws.send_message(json.dumps({"type": "auth", "token": "old-token"}))
                assert json.loads(await ws.get_message())["type"] == "welcome"
                _write_config(tmp_path, device, receiver.url,
                              allowed='"requestMeters", "disableMachine"',
                              token_hash=hash_token("new-token"), batch_max=100)
                result = reload_config(gw)
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await ws.get_message()
                assert (closed.value.reason.code, closed.value.reason.reason) == (
                    1008, "token revoked")
            assert result == {"applied": ["feed.tokens", "commands.allowed"],
                              "restart_needed": ["uplink.batch_max"]}
            assert gw.commands.settings.allowed == {"requestMeters", "disableMachine"}
            assert gw.feed.tokens.authenticate("new-token") is not None
            assert gw.feed.tokens.authenticate("old-token") is None
            # The running config now holds what was applied: a second SIGHUP only repeats
            # what still needs a restart.
            assert reload_config(gw) == {"applied": [], "restart_needed": ["uplink.batch_max"]}

            # A file that no longer validates changes nothing.
            path.write_text(path.read_text().replace('poll_interval_ms = 40',
                                                     'poll_interval_ms = 1'))
            assert reload_config(gw) == {"applied": [], "restart_needed": []}
            assert gw.commands.settings.allowed == {"requestMeters", "disableMachine"}
            nursery.cancel_scope.cancel()


class ReadyProbe(FakeNotifier):
    """At READY=1 the control socket must already accept connections and the outbox writer
    must have committed gatewayStarted."""

    def __init__(self, control: Path, outbox: Path) -> None:
        super().__init__(interval=None)
        self.control, self.outbox = control, outbox
        self.ready_checked = False

    def ready(self, status: str) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(self.control))  # a listening socket accepts into its backlog
        conn = open_readonly(self.outbox)
        try:
            assert conn.execute("SELECT type FROM events WHERE seq = 1").fetchone()[0] \
                == "gatewayStarted"
        finally:
            conn.close()
        self.ready_checked = True
        return True


async def test_ready_only_after_every_service_and_status_line(tmp_path: Path):
    probe = ReadyProbe(short_dir(tmp_path) / "control.sock", tmp_path / "state" / "outbox.db")
    with trio.fail_after(30):
        async with running_gateway(tmp_path, machines=2, receiver_up=False,
                                   notifier=probe) as run:
            assert probe.ready_checked
            await wait_until(run.gw, lambda: all_online(run.gw))
            line = run.gw.status_line()
    assert line.startswith("2/2 machines online, uplink down ")
    assert line.endswith(" queued")



async def test_a_full_disk_is_no_reason_for_a_restart(autojump_clock):
    """At its disk floor the outbox stops intake on purpose (machines hold their events): the
    watchdog keeps pinging, since a restart would not free a byte."""
    disk_full = True
    health = PipelineHealth(stall_after_s=10.0, paused=lambda: disk_full)
    watched = WatchedSink(StuckSink(), health)
    notifier = FakeNotifier(interval=5.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watched.record, MachineEvent("doorOpened", MachineRef("port1", 1)))
        nursery.start_soon(report_status, FakeGateway(health), notifier)
        await trio.sleep(30)
        assert pings(notifier, 15, 30) == 3
        disk_full = False  # still stuck, and no longer by design
        await trio.sleep(15)
        assert pings(notifier, 30.5, 45) == 0
        nursery.cancel_scope.cancel()


async def test_watchdog_pings_every_half_watchdogsec_not_every_5s(autojump_clock):
    # WatchdogSec=30 -> WATCHDOG_USEC/2 = 15 s: docs/operations.md promises a ping every 15 s
    # (it came every 5 s); STATUS= still follows a change within 5 s.
    notifier = FakeNotifier(interval=15.0)
    gw = FakeGateway(PipelineHealth(stall_after_s=15.0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(report_status, gw, notifier)
        await trio.sleep(61)
        gw.line = "1/2 machines online, uplink up, 0 queued"
        await trio.sleep(5)
        nursery.cancel_scope.cancel()
    times = [t for t, msg in notifier.sent if msg == "WATCHDOG=1"]
    assert times == [0.0, 15.0, 30.0, 45.0, 60.0]
    changed = [t for t, msg in notifier.sent if msg.startswith("STATUS=1/2")]
    assert len(changed) == 1 and 61 <= changed[0] <= 66


class FlakyDriver:
    """A port driver whose run follows a script: 'fail' raises at once, a number runs that
    many seconds and then fails (the device unplugged), 'up' runs until cancelled."""

    def __init__(self, script: list[object]) -> None:
        self.script = list(script)
        self.starts: list[float] = []

    async def run(self, sink: object, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        from drivers.link import LinkBrokenError

        self.starts.append(trio.current_time())
        step = self.script.pop(0)
        if step == "fail":
            raise LinkBrokenError("cannot open /dev/ttyUSB3: No such file or directory")
        task_status.started()
        if step == "up":
            await trio.sleep_forever()
        await trio.sleep(step)  # type: ignore[arg-type]
        raise LinkBrokenError("read failed: [Errno 5] Input/output error")


async def test_port_logs_the_real_retry_delay_and_its_recovery(autojump_clock):
    import structlog.testing

    driver = FlakyDriver(["fail", "fail", "fail", 100.0, "fail", "up"])

    class Gw:
        drivers = {"port1": driver}
        port_failures: dict[str, int] = {}
        port_errors: dict[str, str] = {}
        sink = None

    configure_logging("info", "json", stream=io.StringIO())  # whatever level a test left
    try:
        with structlog.testing.capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                # jitter 1.0: the top of each full-jitter range, so the delays are exact.
                await nursery.start(partial(ports.supervise_port, jitter=lambda: 1.0), Gw(),
                                    "port1")
                await trio.sleep(200)
                nursery.cancel_scope.cancel()
    finally:
        configure_logging("warning", "console", stream=sys.__stderr__)
    failed = [e for e in logs if e["event"] == "port failed; will retry"]
    # Each retry_in_s is the gap to the next attempt: the uplink's jittered backoff_delay from
    # 0.5 s (capped at 5 s). After 100 s of running, the backoff starts again at 0.5 s. One line
    # per error per minute: the 2nd and 3rd open failures are told by the next line's count.
    gaps = [b - a for a, b in zip(driver.starts, driver.starts[1:], strict=False)]
    assert [(e["retry_in_s"], e["repeated"]) for e in failed] == [(0.5, 0), (0.5, 0), (1.0, 2)]
    assert [e["error"] for e in failed] == [
        "cannot open /dev/ttyUSB3: No such file or directory",
        "read failed: [Errno 5] Input/output error",
        "cannot open /dev/ttyUSB3: No such file or directory"]
    assert gaps == [0.5, 1.0, 2.0, 100.0 + 0.5, 1.0]
    # Every outage ends with a recovery line saying how long and after how many attempts.
    recovered = [(e["port"], e["attempts"], e["down_for_s"]) for e in logs
                 if e["event"] == "port recovered"]
    assert recovered == [("port1", 3, 3.5), ("port1", 2, 1.5)]
    assert Gw.port_failures == {"port1": 5}
    assert Gw.port_errors == {}  # cleared by the recovery; diag shows it while the port is down


async def test_a_dead_port_logs_once_a_minute_not_every_retry(autojump_clock):
    """A port dead for 10 minutes retries every <= 5 s (about 120 attempts); the journal gets
    one `port failed` line a minute, each saying how many retries it stands for."""
    import structlog.testing

    driver = FlakyDriver(["fail"] * 1000)

    class Gw:
        drivers = {"port1": driver}
        port_failures: dict[str, int] = {}
        port_errors: dict[str, str] = {}
        sink = None

    configure_logging("info", "json", stream=io.StringIO())
    try:
        with structlog.testing.capture_logs() as logs:
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(ports.supervise_port, jitter=lambda: 1.0), Gw(),
                                    "port1")
                await trio.sleep(600)
                nursery.cancel_scope.cancel()
    finally:
        configure_logging("warning", "console", stream=sys.__stderr__)
    failed = [e for e in logs if e["event"] == "port failed; will retry"]
    attempts = len(driver.starts)
    assert attempts > 100
    assert 10 <= len(failed) <= 11
    # Every attempt is accounted for: the logged ones plus the counts they carry.
    told = len(failed) + sum(e["repeated"] for e in failed)
    assert attempts - told <= 12  # the ones since the last line are told by the next
