"""The outbox's figures for /health, diag and /metrics, in one place (gateway/statistics.py
types what leaves the process)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gateway.outbox.disk import DiskBudget
from gateway.outbox.settings import MB

if TYPE_CHECKING:
    from gateway.outbox.facade import Outbox

__all__ = ["OutboxFigures", "outbox_statistics"]


def _pct(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] * 1000, 3)


def outbox_statistics(box: Outbox, disk: DiskBudget) -> dict[str, Any]:
    lat = sorted(box.durable_latencies)
    return {
        "epoch": box.epoch, "last_seq": box.last_seq, "delivered_seq": box.delivered_seq,
        "depth": box.depth(), "commits": box.commits,
        "durable_p50_ms": _pct(lat, 0.50), "durable_p99_ms": _pct(lat, 0.99),
        "oldest_undelivered_s": box.oldest_undelivered_s(),
        "intake_stopped": disk.low_space, "held": len(disk.held),
        "free_mb": None if disk.free_bytes is None else round(disk.free_bytes / MB, 1),
        "shed": disk.shed_total, "pruned": box.pruned_total,
        "full_disk_commits": disk.full_disk_commits,
        "retention_cap_mb": round(box.retention_cap / MB, 1),
        "quarantined_at_open": box.quarantined, "kid": box.signer.kid,
        "witness": "absent at open" if box.witnessed_at_open is None else "present",
        "epoch_changes": box.epoch_changes,
        "epoch_change": None if box.epoch_change is None else {
            "reason": box.epoch_change.reason,
            "previous_epoch": box.epoch_change.previous_epoch,
            "first_missing": box.epoch_change.first_missing,
            "last_missing": box.epoch_change.last_missing},
    }


class OutboxFigures:
    """The figures part of `Outbox` (a base class, so that the facade stays readable)."""

    _disk: DiskBudget
    _oldest_undelivered_at: float | None
    delivered_seq: int
    last_seq: int  # a property of the facade

    @property
    def intake_stopped(self) -> bool:
        """True while free space is under the floor (appends of non-droppable events wait)."""
        return self._disk.low_space

    @property
    def free_bytes(self) -> int | None:
        return self._disk.free_bytes

    @property
    def shed_total(self) -> int:
        return self._disk.shed_total

    @property
    def full_disk_commits(self) -> int:
        return self._disk.full_disk_commits

    def depth(self) -> int:
        return self.last_seq - self.delivered_seq

    def oldest_undelivered_s(self) -> float:
        """Age of the oldest event the platform has not acknowledged (0 when none), as of the
        last commit (acks are persisted with the next group, so this lags by one commit)."""
        if self._oldest_undelivered_at is None or self.depth() <= 0:
            return 0.0
        return round(max(0.0, time.time() - self._oldest_undelivered_at), 3)

    def statistics(self) -> dict[str, Any]:
        return outbox_statistics(self, self._disk)  # type: ignore[arg-type]
