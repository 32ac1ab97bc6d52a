"""Text from outside (machines, the platform, the daemon's own errors) made safe to print on a
technician's terminal: `diag` runs every string of a report through `scrub`."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["sanitize", "scrub"]

# C0 and C1 controls, DEL, and the Unicode format characters that reorder text (bidi overrides).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def sanitize(text: str) -> str:
    """Text from machines, the platform or the daemon made safe for a terminal: every control
    character shown as an escape (\\x1b, \\n), so a serial number or an error message can neither
    send escape sequences to the technician's terminal nor forge a line of the report."""
    return _UNSAFE.sub(lambda m: "\\" + _ESCAPES.get(m.group(), f"x{ord(m.group()):02x}")
                       if ord(m.group()) < 0x100 else f"\\u{ord(m.group()):04x}", text)


_ESCAPES = {"\n": "n", "\r": "r", "\t": "t"}


def scrub(value: Any) -> Any:
    """`sanitize` applied to every string in a snapshot or report, keys included."""
    if isinstance(value, str):
        return sanitize(value)
    if isinstance(value, dict):
        return {scrub(k): scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value
