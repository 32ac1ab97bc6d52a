"""What a probe says about a serial device: its USB adapter, and why it would not open.

Protocol-neutral (any serial protocol's `diag probe` uses it): facts from pyserial's port list
and /dev/serial/by-id, the FTDI latency timer, and plain-words advice for open failures.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from drivers.link import tty

__all__ = ["LATENCY_TIMER_WARN_MS", "adapter_facts", "open_advice"]

# An FTDI latency timer above this holds a short answer back for most of the 20 ms answer
# window (reference 2.1): the default 16 ms makes timeouts out of slow-ish machines.
LATENCY_TIMER_WARN_MS = 4


def adapter_facts(report: dict[str, Any], device: str) -> None:
    """USB adapter facts for the report: description, stable names, latency timer."""
    real = os.path.realpath(device)
    try:
        from serial.tools import list_ports

        port = next((p for p in list_ports.comports() if os.path.realpath(p.device) == real),
                    None)
    except (ImportError, OSError):
        port = None
    if port is not None and port.vid is not None:
        report["adapter"] = {"description": port.description, "hwid": port.hwid,
                             "serial_number": port.serial_number}
    by_id = Path("/dev/serial/by-id")
    stable = sorted(str(p) for p in by_id.glob("*") if os.path.realpath(p) == real) \
        if by_id.is_dir() else []
    if stable:
        report["stable_names"] = stable
    timer = tty.adapter_latency_timer_ms(device)
    if timer is not None:
        report["latency_timer_ms"] = timer
        if timer > LATENCY_TIMER_WARN_MS:
            name = os.path.basename(real)
            report["advice"].append(
                f"the USB adapter's latency timer is {timer} ms: it holds answers back for "
                "most of the machine's 20 ms answer window (timeouts, slow polling); set it to "
                f"1 ms: echo 1 > /sys/bus/usb-serial/devices/{name}/latency_timer (a udev rule "
                "makes it permanent)")


def open_advice(cause: BaseException | None, device: str) -> str:
    if isinstance(cause, PermissionError):
        return (f"permission denied on {device}: add the service user (or yourself) to the "
                "dialout group: sudo usermod -aG dialout casino-gateway (log in again after)")
    if isinstance(cause, FileNotFoundError):
        return (f"{device} does not exist: check the name (ls -l /dev/ttyS* /dev/ttyUSB* "
                "/dev/serial/by-id/) and that the adapter is plugged in (dmesg | tail)")
    if isinstance(cause, OSError) and cause.errno == errno.ENOTTY:
        return f"{device} is not a serial port"
    if isinstance(cause, OSError) and cause.errno == errno.EBUSY:
        return f"{device} is in use by another program (is the gateway running? lsof {device})"
    return f"cannot open {device}: {cause}"
