"""Budgets for data from outside: JSON text and decoded msgpack trees, checked before anyone uses
them. Pure (no I/O); every parser that takes bytes from a client, a technician or a platform goes
through here, so each has the same size, depth and type limits and one typed error.

The standard json module recurses once per nesting level: 1,200 levels of `[` raise
RecursionError (and a deep enough document can exhaust the C stack), and integers have no range,
so 2**70 reaches SQLite or msgpack and raises OverflowError there. `loads_json` refuses those up
front with `InputRejected`, a ValueError, so a caller that handles malformed JSON handles these too.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

__all__ = ["INT_MAX", "INT_MIN", "MAX_DEPTH", "InputRejected", "check_plain", "loads_json"]

MAX_DEPTH = 32
INT_MIN, INT_MAX = -(2**63), 2**63 - 1   # what SQLite and msgpack can hold
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class InputRejected(ValueError):
    """Outside input over a budget (size, depth, number range) or of the wrong type. Remote
    blame: count it, answer with an error, carry on."""


def _depth(text: str) -> int:
    """The deepest nesting of arrays and objects, brackets inside strings not counted."""
    depth = deepest = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def _integer(text: str) -> int:
    if len(text) > 20:
        raise InputRejected("a number is out of range")
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise InputRejected("a number is out of range")
    return value


def _real(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InputRejected("a number is out of range")
    return value


def _constant(name: str) -> Any:
    raise InputRejected(f"{name} is not JSON")


def loads_json(data: str | bytes, *, max_bytes: int, max_depth: int = MAX_DEPTH) -> Any:
    """Parse one JSON document within budget; raise InputRejected (a ValueError) otherwise,
    including for text that is not JSON at all."""
    if len(data) > max_bytes:
        raise InputRejected(f"more than {max_bytes} bytes")
    if isinstance(data, bytes | bytearray):
        try:
            data = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise InputRejected("not UTF-8") from None
    # Counting brackets is cheap; the exact depth is only worked out when there are many.
    if data.count("[") + data.count("{") > max_depth and _depth(data) > max_depth:
        raise InputRejected(f"nested more than {max_depth} deep")
    try:
        return json.loads(data, parse_int=_integer, parse_float=_real, parse_constant=_constant)
    except InputRejected:
        raise
    except (ValueError, RecursionError) as err:
        raise InputRejected(f"not JSON: {err}") from None


def check_plain(value: Any, *, max_depth: int = MAX_DEPTH, max_items: int = 10_000) -> None:
    """Raise InputRejected unless `value` is JSON-shaped: str keys, str / int (64-bit) / finite
    float / bool / None, lists and maps, at most `max_depth` deep and `max_items` values in all.
    For trees decoded from msgpack, whose maps may have bytes keys and whose ints may be 64-bit
    unsigned. Iterative, so a deep tree cannot exhaust the stack while being checked."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > max_items:
            raise InputRejected(f"more than {max_items} values")
        if item is None or isinstance(item, str | bool):
            continue
        if isinstance(item, int):
            if not INT_MIN <= item <= INT_MAX:
                raise InputRejected("a number is out of range")
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise InputRejected("a number is out of range")
            continue
        if depth >= max_depth:
            raise InputRejected(f"nested more than {max_depth} deep")
        if isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, dict):
            for key, v in item.items():
                if not isinstance(key, str):
                    raise InputRejected(f"a map key is {type(key).__name__}, not a string")
                stack.append((v, depth + 1))
        else:
            raise InputRejected(f"{type(item).__name__} is not a JSON value")
