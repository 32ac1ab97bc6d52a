"""The daemon's life as systemd sees it, in real processes (issue 7, "Done when").

`casino-gateway receiver run` (TLS) and `casino-gateway simulate` (machines on pseudo-terminals)
run as separate processes; `casino-gateway run` starts with NOTIFY_SOCKET pointing at a real
AF_UNIX datagram socket bound here, standing in for systemd. Checked: READY=1 only once every
service is up (the control socket answers, the outbox holds gatewayStarted), WATCHDOG=1 pings
follow when WATCHDOG_USEC is set, SIGHUP keeps it running, SIGTERM sends STOPPING=1 and exits 0
within 5 s, SIGKILL + restart loses no acknowledged exception, and a bad configuration exits 78
naming the field before READY. Waits are on the child's datagrams and output lines, each with a
deadline; nothing sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))

from crash_loop import CLI, _read_line, _receiver_rows, _setup, _verify_outbox

from gateway.outbox import iter_envelopes, open_readonly

MACHINES = 2


class FakeSystemd:
    """The notify socket systemd would pass in NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.exists():
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def next(self, deadline: float) -> str:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no notification from the gateway in time")
        self.sock.settimeout(remaining)
        try:
            message = self.sock.recv(4096).decode()
        except TimeoutError:
            raise TimeoutError("no notification from the gateway in time") from None
        self.messages.append(message)
        return message

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(deadline)
            if predicate(message):
                return message

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)

    def drain(self) -> list[str]:
        self.sock.setblocking(False)
        out = []
        with contextlib.suppress(BlockingIOError):
            while True:
                out.append(self.sock.recv(4096).decode())
        self.sock.setblocking(True)
        self.messages += out
        return out


@pytest.fixture(scope="module")
def plant(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("life")
    with contextlib.ExitStack() as logs:
        procs = _setup(base, MACHINES, 10.0, 11, logs)
        config = procs["config"]
        control = base / "control.sock"
        config.write_text(config.read_text().replace(
            "[gateway]\n", f'[gateway]\ncontrol_socket = "{control}"\n', 1))
        procs.update(base=base, control=control)
        try:
            yield procs
        finally:
            for proc in (procs["sim"], procs["receiver"]):
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=30)
                proc.stdout.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock")
    yield fake
    fake.close()


def start_gateway(plant: dict[str, Any], systemd: FakeSystemd, *,
                  config: Path | None = None, watchdog_usec: int | None = 1_000_000,
                  log_name: str = "gateway.log") -> subprocess.Popen:
    env = dict(os.environ, NOTIFY_SOCKET=str(systemd.path))
    env.pop("WATCHDOG_PID", None)
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    else:
        env.pop("WATCHDOG_USEC", None)
    log = open(plant["base"] / log_name, "a")
    try:
        return subprocess.Popen([*CLI, "run", "--config", str(config or plant["config"])],
                                env=env, stderr=log, stdout=subprocess.DEVNULL)
    finally:
        log.close()


def control_status(path: Path) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(b'{"cmd": "status"}\n')
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, "control socket closed"
            buf += chunk
    reply = json.loads(buf)
    assert reply["ok"], reply
    status: dict[str, Any] = reply["status"]
    return status


def stop(proc: subprocess.Popen, systemd: FakeSystemd) -> tuple[int, float]:
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    systemd.wait_for(lambda m: m.startswith("STOPPING=1"), timeout=5)
    code = proc.wait(timeout=10)
    return code, time.monotonic() - started


def test_ready_watchdog_reload_and_sigterm(plant: dict[str, Any], systemd: FakeSystemd):
    gw = start_gateway(plant, systemd)
    try:
        first = systemd.next(time.monotonic() + 30)
        # READY is the first word, and only after every service is up: at this moment the
        # control socket already answers and the outbox writer has committed gatewayStarted.
        assert first.startswith("READY=1\nSTATUS="), first
        status = control_status(plant["control"])
        assert status["outbox"]["last_seq"] >= 1
        assert set(status["ports"]) == {f"port{i + 1}" for i in range(MACHINES)}
        assert stat_mode(plant["control"]) == 0o660

        # WATCHDOG_USEC=1 s: pings every 0.5 s while the pipeline is alive.
        for _ in range(3):
            systemd.wait_for(lambda m: m == "WATCHDOG=1", timeout=5)
        systemd.wait_for(lambda m: m.startswith("STATUS=") and "machines online" in m
                         and "uplink up" in m, timeout=20)

        # diag, as a technician runs it, against the real daemon.
        diag = subprocess.run([*CLI, "diag", "--config", str(plant["config"])],
                              capture_output=True, text=True, timeout=30)
        assert diag.returncode == 0, diag.stderr
        assert "port1" in diag.stdout and "outbox" in diag.stdout

        gw.send_signal(signal.SIGHUP)  # unchanged file: logged, nothing restarts
        systemd.wait_for(lambda m: m == "WATCHDOG=1", timeout=5)
        assert control_status(plant["control"])["gateway"]["pid"] == gw.pid

        code, took = stop(gw, systemd)
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait()
    assert code == 0
    assert took < 5
    assert not plant["control"].exists()  # removed on the way out
    log = (plant["base"] / "gateway.log").read_text()
    assert "SIGHUP: configuration unchanged" in log


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_second_gateway_on_the_same_device_exits_and_the_first_runs_on(
        plant: dict[str, Any], systemd: FakeSystemd, tmp_path: Path):
    # Issue 13 finding 9: another configuration (its own outbox, its own control socket) that
    # names the same serial devices. The device lock makes it exit 78 before it opens anything.
    # (Placed before the SIGKILL test, which ends the plant's simulator.)
    gw = start_gateway(plant, systemd)
    try:
        systemd.wait_for(lambda m: m.startswith("READY=1"), timeout=30)
        # Both ports open (so their devices locked): checked at each watchdog ping.
        for _ in range(40):
            ports = control_status(plant["control"])["ports"].values()
            if all(p["state"] == "running" for p in ports):
                break
            systemd.wait_for(lambda m: m == "WATCHDOG=1", timeout=5)
        other = plant["base"] / "second.toml"  # relative paths resolve beside the first
        other.write_text(plant["config"].read_text().replace(
            'state_dir = "state"', f'state_dir = "{tmp_path / "state2"}"').replace(
            str(plant["control"]), str(tmp_path / "control2.sock")))
        second = subprocess.run([*CLI, "run", "--config", str(other)], capture_output=True,
                                text=True, timeout=30, cwd=plant["base"],
                                env=dict(os.environ, NOTIFY_SOCKET=str(systemd.path)))
        assert second.returncode == 78
        lines = [line for line in second.stderr.splitlines() if "configuration error" in line]
        assert len(lines) == 1, second.stderr
        assert "ports[0].device" in lines[0] and f"in use by process {gw.pid}" in lines[0]
        assert not (tmp_path / "state2" / "outbox.db").exists()  # it touched nothing
        # The first keeps polling: its pings go on and its status shows it answering.
        systemd.wait_for(lambda m: m == "WATCHDOG=1", timeout=5)
        status = control_status(plant["control"])
        assert status["gateway"]["pid"] == gw.pid
        assert all(p["state"] == "running" for p in status["ports"].values())
        code, _ = stop(gw, systemd)
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait()
    assert code == 0


def test_sigkill_and_restart_loses_nothing(plant: dict[str, Any], systemd: FakeSystemd):
    gw = start_gateway(plant, systemd)
    try:
        systemd.wait_for(lambda m: m.startswith("READY=1"), timeout=30)
        for _ in range(4):  # two seconds of play at 10 exceptions/s per machine
            systemd.wait_for(lambda m: m == "WATCHDOG=1", timeout=5)
        gw.send_signal(signal.SIGKILL)
        assert gw.wait(timeout=10) == -signal.SIGKILL
        report = _verify_outbox(plant["outbox"], plant["base"] / "gw.pub")
        assert report.ok, report.reason

        gw = start_gateway(plant, systemd)  # a killed gateway leaves a stale control socket
        systemd.wait_for(lambda m: m.startswith("READY=1"), timeout=30)
        plant["sim"].send_signal(signal.SIGUSR1)  # stop play; wait for every ACK
        assert _read_line(plant["sim"], time.monotonic() + 60) == "all-acknowledged"
        # Drained: each WATCHDOG ping is a wake-up to ask the daemon again, up to a deadline.
        deadline = time.monotonic() + 60
        while True:
            status = control_status(plant["control"])
            if status["outbox"]["depth"] == 0 and status["uplink"]["connected"]:
                break
            systemd.wait_for(lambda m: m == "WATCHDOG=1", timeout=deadline - time.monotonic())
        code, took = stop(gw, systemd)
        assert code == 0 and took < 5
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait()
    plant["sim"].send_signal(signal.SIGINT)
    ledger = json.loads(_read_line(plant["sim"], time.monotonic() + 60))  # before the wait:
    plant["sim"].wait(timeout=30)  # a ledger larger than the pipe holds blocks the exit

    assert _verify_outbox(plant["outbox"], plant["base"] / "gw.pub").ok
    conn = open_readonly(plant["outbox"])
    try:
        outbox_rows = dict(iter_envelopes(conn))
        for i, machine in enumerate(ledger["machines"]):
            recorded = Counter(code for (code,) in conn.execute(
                "SELECT source_code FROM events WHERE machine = ? AND source_code IS NOT NULL",
                (f"port{i + 1}/1",)))
            acked = Counter(machine["acknowledged_codes"])
            assert not acked - recorded, f"port{i + 1}: acknowledged but not recorded"
            # A machine whose queue overflowed while the gateway was down says so (70).
            if machine["lost_by_overflow"]:
                assert recorded[0x70], f"port{i + 1}: unexplained loss"
    finally:
        conn.close()
    assert ledger["pending"] == 0 and ledger["acknowledged"] > 0
    assert ledger["raised"] == ledger["acknowledged"] + ledger["lost_by_overflow"]
    assert _receiver_rows(plant["base"] / "rx.db") == outbox_rows


@pytest.mark.parametrize(("edit", "field"), [
    (("poll_interval_ms = 40", "poll_interval_ms = 7"), "ports[0].poll_interval_ms"),
    (("[gateway]\n", "[gateway]\nwatchdog = true\n"), "gateway.watchdog"),
])
def test_bad_config_exits_78_naming_the_field(plant: dict[str, Any], systemd: FakeSystemd,
                                              edit: tuple[str, str], field: str):
    bad = plant["base"] / f"bad-{field.replace('[', '').replace(']', '')}.toml"
    bad.write_text(plant["config"].read_text().replace(*edit, 1))
    proc = subprocess.run([*CLI, "run", "--config", str(bad)], capture_output=True, text=True,
                          timeout=30, env=dict(os.environ, NOTIFY_SOCKET=str(systemd.path)))
    assert proc.returncode == 78
    assert f"configuration error: {field}:" in proc.stderr
    assert systemd.drain() == []  # never READY

