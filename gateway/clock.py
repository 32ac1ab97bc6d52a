"""Is the system clock synchronised? Event timestamps are the gateway's wall clock, so the
platform is told (in gatewayStarted and uplinkUp) when they may be off (docs/uplink-protocol.md
section 11). Linux only: the kernel's clock state from adjtimex(2) with no modes set (a read)."""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["clock_synchronised"]

TIME_ERROR = 5  # adjtimex: "clock not synchronised"
_TIMEX_SIZE = 512  # struct timex is 208 bytes on x86-64; zeroed room to spare means modes = 0


def clock_synchronised() -> bool | None:
    """True or False from the kernel; None where that cannot be asked."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        state = libc.adjtimex(ctypes.create_string_buffer(_TIMEX_SIZE))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != TIME_ERROR
