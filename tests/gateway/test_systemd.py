"""sd_notify against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import socket
from pathlib import Path

from gateway.systemd import Notifier


def fake_systemd(tmp_path: Path) -> tuple[socket.socket, str]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    return sock, path


def test_ready_status_watchdog_stopping(tmp_path: Path):
    sock, path = fake_systemd(tmp_path)
    notifier = Notifier(path)
    assert notifier.ready("3/3 machines online")
    assert sock.recv(4096) == b"READY=1\nSTATUS=3/3 machines online"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"


def test_no_socket_is_a_no_op(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert notifier.ready("x") is False


def test_vanished_systemd_does_not_raise(tmp_path: Path):
    sock, path = fake_systemd(tmp_path)
    sock.close()
    Path(path).unlink()
    assert Notifier(path).status("still running") is False


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert Notifier("").watchdog_interval() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", "1")  # meant for another process
    assert Notifier("").watchdog_interval() is None
