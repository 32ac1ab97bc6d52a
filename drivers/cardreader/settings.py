"""A card reader port's own settings: the protocol-specific keys of its `[[ports]]` table
(`protocol = "cardreader"`), parsed and checked by gateway/config.py with the rest of the file
(one line naming `ports[N].field`, exit 78), and `check_port` (drivers/cardreader/spec.py), which
reads the venue secret file at config check: a file too open, too short or missing is refused
there, not at the first card.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.cardreader.framing import KINDS
from drivers.cardreader.link import BAUD_RATES
from drivers.cardreader.reader import ReaderSettings
from drivers.model import MachineRef

__all__ = ["CardReaderPortSettings"]

_MACHINE = re.compile(r"^([^/\s]+)/([0-9]{1,3})$")


def _check(ok: Callable[[Any], bool], message: str) -> Callable[[Any], str | None]:
    return lambda v: None if ok(v) else message


@dataclass(frozen=True, slots=True)
class CardReaderPortSettings:
    # The slot machine the reader sits beside, "port/address" as everywhere on this gateway.
    machine: str = field(default="", metadata={"check": _check(
        lambda v: bool(_MACHINE.match(v)), "the machine beside the reader, as 'port/address'")})
    secret_file: Path = field(default=Path(), metadata={"check": _check(
        lambda v: v.is_absolute(), "the venue secret file, an absolute path (mode 0600)")})
    kind: str = field(default="insert", metadata={"check": _check(
        lambda v: v in KINDS, "one of " + ", ".join(KINDS))})
    lrc: bool = False
    baud: int = field(default=9600, metadata={"check": _check(
        lambda v: v in BAUD_RATES, "one of " + ", ".join(map(str, BAUD_RATES)))})
    debounce_ms: int = field(default=2000, metadata={"check": _check(
        lambda v: 0 <= v <= 60_000, "between 0 and 60000")})
    swipe_gap_ms: int = field(default=250, metadata={"check": _check(
        lambda v: 10 <= v <= 5000, "between 10 and 5000")})

    def machine_ref(self) -> MachineRef:
        port, address = self.machine.rsplit("/", 1)
        return MachineRef(port, int(address))

    def reader_settings(self) -> ReaderSettings:
        return ReaderSettings(kind=self.kind, lrc=self.lrc, swipe_gap_s=self.swipe_gap_ms / 1000,
                              debounce_s=self.debounce_ms / 1000)
