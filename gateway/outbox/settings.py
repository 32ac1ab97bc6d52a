"""The outbox's settings: where it lives, how it groups commits, its disk budget and retention."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["MB", "RETENTION_DISK_SHARE", "OutboxSettings", "statvfs_free", "statvfs_size"]

MB = 1024 * 1024
# Without `retention_max_mb`, delivered events are kept within this share of the filesystem that
# holds the outbox (docs/operations.md, "Disk sizing").
RETENTION_DISK_SHARE = 0.5


def statvfs_free(path: Path) -> int:
    """Bytes available to this (unprivileged) process on the filesystem holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def statvfs_size(path: Path) -> int:
    """Size in bytes of the filesystem holding `path`."""
    st = os.statvfs(path)
    return st.f_blocks * st.f_frsize


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    path: Path
    gateway_id: str
    venue: str = ""
    region: str = ""
    commit_interval_s: float = 0.002
    batch_max: int = 500
    queue_max: int = 10_000
    # Disk budget. Under `min_free_mb` (filesystem free space plus free pages inside the database)
    # intake stops until free space is back above `min_free_mb * 1.1`; 0 disables the floor.
    min_free_mb: float = 64.0
    disk_check_interval_s: float = 1.0
    free_space: Callable[[Path], int] = statvfs_free  # injectable: tests simulate a full disk
    droppable_types: tuple[str, ...] = ("meterSnapshot",)
    # Retention of *delivered* events: older than `retention_days`, or the oldest beyond
    # `retention_max_mb` of used database pages (0 disables either; None: RETENTION_DISK_SHARE of
    # the filesystem), pruned `prune_batch` rows per commit. Under the disk floor delivered
    # events are pruned regardless of age.
    retention_days: float = 30.0
    retention_max_mb: float | None = None
    filesystem_size: Callable[[Path], int] = statvfs_size  # injectable, as free_space
    prune_batch: int = 500
    maintenance_interval_s: float = 60.0
    # Ed25519 signing in a child process (another core) while the writer hashes and inserts.
    signing_process: bool = True
