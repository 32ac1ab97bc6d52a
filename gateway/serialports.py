"""Serial ports on this machine and their stable names, from pyserial's `list_ports`.

A USB adapter's /dev/ttyUSB<n> depends on the order adapters enumerate at boot: a re-plugged or
added adapter can swap two lines, and the gateway would poll the wrong machines under the right
names. udev's /dev/serial/by-id (the adapter's vendor, model and serial number) and by-path (the
USB socket it is in) names do not move; `diag ports` lists them and the config check suggests one
for a configured /dev/ttyUSB<n>. Never opens a device.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import serial.tools.list_ports
from serial.tools.list_ports_common import ListPortInfo

__all__ = ["BY_ID", "BY_PATH", "SerialPort", "discover", "render_ports", "stable_names"]

BY_ID = Path("/dev/serial/by-id")
BY_PATH = Path("/dev/serial/by-path")


@dataclass(frozen=True, slots=True)
class SerialPort:
    """One serial device: its kernel name, its stable names (None: udev made none, as for a
    built-in UART), and what the adapter says about itself."""

    device: str
    by_id: str | None
    by_path: str | None
    description: str | None
    serial_number: str | None
    usb_id: str | None  # "0403:6001" (vendor:product)


def _links(directory: Path) -> dict[str, str]:
    """realpath of the target -> the link, for every symlink in `directory` (first by name)."""
    try:
        names = sorted(directory.iterdir())
    except OSError:
        return {}
    out: dict[str, str] = {}
    for link in names:
        if link.is_symlink():
            out.setdefault(os.path.realpath(link), str(link))
    return out


def stable_names(device: str | Path) -> tuple[str | None, str | None]:
    """(by-id, by-path) names of `device` (either may be None); `device` may itself be a link."""
    real = os.path.realpath(device)
    return _links(BY_ID).get(real), _links(BY_PATH).get(real)


def discover(comports: Callable[[], Iterable[ListPortInfo]] = serial.tools.list_ports.comports
             ) -> list[SerialPort]:
    """Every serial port pyserial finds, with its stable names, sorted by device."""
    ids, paths = _links(BY_ID), _links(BY_PATH)
    found = []
    for info in comports():
        real = os.path.realpath(info.device)
        usb = f"{info.vid:04x}:{info.pid:04x}" if info.vid is not None and info.pid is not None \
            else None
        found.append(SerialPort(
            device=info.device, by_id=ids.get(real), by_path=paths.get(real),
            description=None if info.description in (None, "n/a") else info.description,
            serial_number=info.serial_number, usb_id=usb))
    return sorted(found, key=lambda p: p.device)


def render_ports(ports: list[SerialPort], *, configured: dict[str, str], as_json: bool) -> str:
    """`diag ports`: one line per port; `configured` maps a device's realpath to its port name."""
    if as_json:
        return json.dumps([{**asdict(p), "configured_as": configured.get(
            os.path.realpath(p.device))} for p in ports], indent=2)
    if not ports:
        return "no serial ports found"
    lines = []
    for p in ports:
        used = configured.get(os.path.realpath(p.device))
        facts = [f for f in (p.description, p.usb_id and f"USB {p.usb_id}",
                             p.serial_number and f"serial number {p.serial_number}") if f]
        lines.append(f"{p.device}" + (f"  [{used}]" if used else "")
                     + (f"  {', '.join(facts)}" if facts else ""))
        lines += [f"    {name}" for name in (p.by_id, p.by_path) if name]
    return "\n".join(lines)
