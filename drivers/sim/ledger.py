"""Every exception a simulated machine raised, and what became of it: acknowledged by the host
(the machine saw an implied ACK for it), dropped by the machine's own FIFO overflow, or still
pending; how often it went out, and whether a power cycle cut off its acknowledgement.

It is the oracle: tests and bench/sas_faults.py compare it with what the gateway recorded to
prove that nothing was invented, lost or doubled.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Ledger", "LedgerEntry"]

_ids = itertools.count(1)


@dataclass(slots=True, eq=False)
class LedgerEntry:
    id: int
    code: int
    data: bytes
    raised_at: float
    acknowledged_at: float | None = None
    lost: bool = False
    sent: int = 0  # times it went out as an answer
    # Of those, times it went out as the code alone (a normal-mode GP answer): only then can a
    # record without data be this entry (drivers/sim/oracle.py).
    sent_bare: int = 0


class Ledger:
    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self.entries: list[LedgerEntry] = []
        # Answers whose first part on the line was one byte that was not the answer's, alone
        # before a gap: what no host can tell from a one-byte answer.
        self.lone_bytes = 0
        # Answers not sent because the simulator could not send them within the answer window
        # (SasEgm.answer_late): lost on the line, like the `silence` fault.
        self.late_answers = 0
        self._on_change = on_change

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def raised(self, code: int, data: bytes, now: float) -> LedgerEntry:
        entry = LedgerEntry(next(_ids), code, data, now)
        self.entries.append(entry)
        self._changed()
        return entry

    def acknowledge(self, entry: LedgerEntry, now: float) -> None:
        if entry.acknowledged_at is None:
            entry.acknowledged_at = now
            self._changed()

    def lose(self, entry: LedgerEntry) -> None:
        entry.lost = True
        self._changed()

    def pending(self) -> list[LedgerEntry]:
        return [e for e in self.entries if e.acknowledged_at is None and not e.lost]

    def summary(self) -> dict[str, Any]:
        return {
            "raised": len(self.entries),
            "acknowledged": sum(e.acknowledged_at is not None for e in self.entries),
            "pending": len(self.pending()),
            "lost_by_overflow": sum(e.lost for e in self.entries),
        }
