"""The simulator's ledger against what the gateway recorded: the verdict of a fault run.

Pure (no I/O): `judge(entries, recorded, loss_markers)` pairs each recorded exception with the
earliest unpaired ledger entry of the same code (one the machine kept before one it dropped),
and the same data unless it came bare (normal mode carries no data on the wire: then an entry
that went out bare, `LedgerEntry.sent_bare`, or has no data). What cannot be
paired is a duplicate (an equal entry was paired already) or an invention (none exists). An
entry the machine saw acknowledged and nobody recorded is missing; a `lossMarker` from the line
may account for one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from drivers.sim.ledger import LedgerEntry

__all__ = ["Verdict", "judge"]


@dataclass(frozen=True, slots=True)
class Verdict:
    raised: int
    recorded: int
    invented: int
    duplicates_with_data: int
    # Data-less exceptions recorded twice: the machine re-sent one after a power cycle cut off
    # its implied ACK, and a bare code cannot be told apart from a new one.
    duplicates_dataless: int
    missing: int          # acknowledged by the machine, never recorded
    lost_by_overflow: int
    loss_markers: int
    # The host's own "re-sent after a power cycle, not recorded again" calls for data-less
    # exceptions: a genuine identical one after a reset is missed that way (the other face of
    # duplicates_dataless), and is counted here, not as unexplained.
    resent_dataless: int = 0
    # The residual risk no host can remove: a lone well-formed junk byte before a gap stood in
    # for an answer (the ledger's count); it invents one event and loses the answer it hid.
    lone_bytes: int = 0

    @property
    def invented_unexplained(self) -> int:
        return max(0, self.invented - self.lone_bytes)

    @property
    def missing_unmarked(self) -> int:
        explained = self.loss_markers + self.resent_dataless + self.lone_bytes
        return max(0, self.missing - explained)

    @property
    def spurious_markers(self) -> int:
        return max(0, self.loss_markers - self.missing)

    @property
    def ok(self) -> bool:
        return (self.invented_unexplained == 0 and self.duplicates_with_data == 0
                and self.missing_unmarked == 0 and self.spurious_markers == 0)


def judge(entries: Sequence[LedgerEntry], recorded: Iterable[tuple[int, bytes]],
          loss_markers: int = 0, *, resent_dataless: int = 0, lone_bytes: int = 0) -> Verdict:
    """`recorded`: (code, payload) of each exception the gateway recorded, in order."""
    paired = [False] * len(entries)
    invented = dup_data = dup_bare = count = 0
    # Records with data first: a bare one (normal mode) fits any entry of its code, and must
    # not take the one entry a record with data can only be.
    ordered = sorted(recorded, key=lambda r: not r[1])
    for code, payload in ordered:
        count += 1
        # A bare record is the code alone: an entry that has no data, or one that went out as
        # the code alone (normal mode). Never one that only went out with its data (RTE): that
        # one lost on the line must not be hidden by a bare duplicate of another.
        same = [i for i, e in enumerate(entries) if e.code == code and (
            e.data == payload if payload else not e.data or e.sent_bare)]
        # An entry the machine dropped from its full FIFO may have gone out before: pair with
        # one it kept first, so that a dropped one never hides a kept one from the count.
        free = next((i for i in same if not paired[i] and not entries[i].lost),
                    next((i for i in same if not paired[i]), None))
        if free is not None:
            paired[free] = True
        elif not same:
            invented += 1
        elif payload:
            dup_data += 1
        else:
            dup_bare += 1
    missing = sum(1 for e, p in zip(entries, paired, strict=True)
                  if not p and e.acknowledged_at is not None and not e.lost)
    return Verdict(len(entries), count, invented, dup_data, dup_bare, missing,
                   sum(e.lost for e in entries), loss_markers, resent_dataless, lone_bytes)
