"""The outbox's figures for /health, diag and /metrics, in one place (gateway/statistics.py
types what leaves the process)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.outbox.disk import DiskBudget
from gateway.outbox.settings import MB

if TYPE_CHECKING:
    from gateway.outbox.facade import Outbox

__all__ = ["outbox_statistics"]


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
