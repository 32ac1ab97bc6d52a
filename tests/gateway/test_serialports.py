"""Port discovery and stable names with pyserial (issue 14), without hardware: udev's
/dev/serial/by-id and by-path directories are stand-ins under tmp_path, the devices a pty and
pyserial's own ListPortInfo records."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from serial.tools.list_ports_common import ListPortInfo

from gateway import serialports
from gateway.check import check_config
from gateway.config import load_config
from gateway.serialports import discover, render_ports, stable_names

from .test_check import Plant, cli, logs_back  # noqa: F401 - logs_back: autouse, main() logs


@pytest.fixture
def udev(tmp_path, monkeypatch):
    """Empty by-id and by-path directories in place of /dev/serial's."""
    by_id, by_path = tmp_path / "by-id", tmp_path / "by-path"
    by_id.mkdir()
    by_path.mkdir()
    monkeypatch.setattr(serialports, "BY_ID", by_id)
    monkeypatch.setattr(serialports, "BY_PATH", by_path)
    return by_id, by_path


def _usb(device: Path, serial: str) -> ListPortInfo:
    info = ListPortInfo(str(device), skip_link_detection=True)
    info.vid, info.pid, info.serial_number = 0x0403, 0x6001, serial
    info.description = "FT232R USB UART"
    return info


def test_discovery_names_each_port_stably_with_its_usb_serial(tmp_path, udev):
    by_id, by_path = udev
    usb, uart = tmp_path / "ttyUSB0", tmp_path / "ttyS0"
    usb.touch()
    uart.touch()
    (by_id / "usb-FTDI_FT232R_USB_UART_A1B2C3-if00-port0").symlink_to(usb)
    (by_path / "pci-0000:00:14.0-usb-0:2:1.0-port0").symlink_to(usb)
    ports = discover(lambda: [_usb(usb, "A1B2C3"), ListPortInfo(str(uart), True)])
    assert [p.device for p in ports] == [str(uart), str(usb)]
    built_in, adapter = ports
    assert (built_in.by_id, built_in.by_path, built_in.serial_number) == (None, None, None)
    assert adapter.by_id == str(by_id / "usb-FTDI_FT232R_USB_UART_A1B2C3-if00-port0")
    assert adapter.by_path == str(by_path / "pci-0000:00:14.0-usb-0:2:1.0-port0")
    assert (adapter.serial_number, adapter.usb_id) == ("A1B2C3", "0403:6001")
    assert stable_names(adapter.by_id) == (adapter.by_id, adapter.by_path)  # a link resolves

    text = render_ports(ports, configured={str(usb): "port1"}, as_json=False)
    assert f"{usb}  [port1]  FT232R USB UART, USB 0403:6001, serial number A1B2C3" in text
    assert f"    {adapter.by_id}" in text
    rows = json.loads(render_ports(ports, configured={str(usb): "port1"}, as_json=True))
    assert [r["configured_as"] for r in rows] == [None, "port1"]


def test_discovery_without_udev_names_lists_kernel_names(tmp_path, monkeypatch):
    monkeypatch.setattr(serialports, "BY_ID", tmp_path / "absent")
    monkeypatch.setattr(serialports, "BY_PATH", tmp_path / "absent")
    ports = discover(lambda: [ListPortInfo("/dev/ttyS0", True)])
    assert [(p.device, p.by_id, p.by_path) for p in ports] == [("/dev/ttyS0", None, None)]
    assert render_ports([], configured={}, as_json=False) == "no serial ports found"


def test_the_check_suggests_the_stable_name_of_a_kernel_name(tmp_path, udev):
    by_id, _ = udev
    plant = Plant(tmp_path / "plant")
    try:
        stable = by_id / "usb-FTDI_FT232R_USB_UART_A1B2C3-if00-port0"
        stable.symlink_to(plant.device)
        problems = check_config(load_config(plant.write()))
        hint = [p for p in problems if p.field == "ports[0].device"]
        assert len(hint) == 1 and hint[0].warning
        assert f"use its stable name {stable}" in hint[0].message
        # Configured by its stable name: nothing to suggest.
        plant.ports[0]["device"] = str(stable)
        assert "stable name" not in str(check_config(load_config(plant.write())))
    finally:
        plant.close()


def test_diag_ports_marks_the_configured_port(tmp_path, udev, monkeypatch, capsys):
    plant = Plant(tmp_path / "plant")
    try:
        config = plant.write()
        monkeypatch.setattr(serialports, "discover",
                            lambda: discover(lambda: [_usb(Path(plant.device), "Z9")]))
        assert cli("diag", "ports", "--json", "--config", str(config)) == 0
        rows = json.loads(capsys.readouterr().out)
        assert rows == [{"device": plant.device, "by_id": None, "by_path": None,
                         "description": "FT232R USB UART", "serial_number": "Z9",
                         "usb_id": "0403:6001", "configured_as": "port1"}]
    finally:
        plant.close()


def test_discovery_runs_on_this_machine():
    """Whatever this host has (often nothing, in a container): no error, each a device path."""
    assert all(os.path.isabs(p.device) for p in discover())
