"""The disk budget: a free-space floor that stops intake, shedding of droppable events, and
the diskFull / diskSpaceRestored alerts. Owned by the collector task (trio thread).

Under the floor appends of non-droppable events wait in `held`, in order (their machines keep
the exceptions unacknowledged); droppable ones are shed and counted in a lossMarker. Intake
resumes by itself above `min_free_mb * 1.1`. The outbox's own events go in `internal` and are
committed even under the floor."""

from __future__ import annotations

import math
import sqlite3
import time
from collections import deque
from typing import Any

import structlog
import trio

from gateway.errors import StoreError
from gateway.events import system_draft
from gateway.outbox.pending import Pending
from gateway.outbox.settings import MB, OutboxSettings

__all__ = ["SHED_REPORT_INTERVAL_S", "DiskBudget", "is_disk_full"]

log = structlog.get_logger("gateway.outbox")

SHED_REPORT_INTERVAL_S = 60.0  # while under the floor, shed counts are written at most this often


def is_disk_full(err: StoreError) -> bool:
    cause = err.__cause__
    return isinstance(cause, sqlite3.OperationalError) and (
        getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        or "disk is full" in str(cause))


class DiskBudget:
    def __init__(self, settings: OutboxSettings) -> None:
        self.settings = settings
        self.internal: list[Pending] = []  # the outbox's own events: committed even when low
        self.held: deque[Pending] = deque()  # appends waiting for disk space, in order
        self.low_space = False
        self._low_since = 0.0
        self._next_check = -math.inf
        self._shed_unreported = 0
        self._shed_reported_at = 0.0
        self.shed_total = 0
        self.full_disk_commits = 0
        self.db_free_bytes = 0  # free pages inside the database, as of the last commit
        self.free_bytes: int | None = None

    def hold(self, batch: list[Pending]) -> None:
        """Under the floor: shed droppable drafts (their appenders get 0), hold the rest."""
        for pending in batch:
            if pending.draft.type in self.settings.droppable_types:
                pending.shed = True
                pending.done.set()
                self._shed_unreported += 1
                self.shed_total += 1
            else:
                self.held.append(pending)
        batch.clear()

    def check(self) -> None:
        """At most every `disk_check_interval_s`: compare free space with the floor; flip the
        intake state with one log line and one alert event each way."""
        s = self.settings
        now = trio.current_time()
        if (s.min_free_mb <= 0 and not self.low_space) or now < self._next_check:
            return
        self._next_check = now + s.disk_check_interval_s
        try:
            fs_free = s.free_space(s.path.parent)
        except OSError as err:
            log.error("outbox free-space check failed", path=str(s.path.parent), error=str(err))
            return
        free = fs_free + self.db_free_bytes
        self.free_bytes = free
        floor = max(s.min_free_mb, 0.0)
        if not self.low_space and free < floor * MB:
            self._stop_intake(now, round(free / MB, 1), floor)
        elif self.low_space and free >= floor * MB * 1.1:
            self._resume_intake(now, round(free / MB, 1), floor)
        elif self.low_space and now - self._shed_reported_at >= SHED_REPORT_INTERVAL_S:
            self._shed_reported_at = now
            self._report_shed()

    def _stop_intake(self, now: float, free_mb: float, floor: float) -> None:
        s = self.settings
        self.low_space, self._low_since, self._shed_reported_at = True, now, now
        log.warning("outbox disk space under the floor: intake stopped until space returns; "
                    "machines keep their exceptions unacknowledged",
                    path=str(s.path), free_mb=free_mb, floor_mb=floor)
        self._queue("diskFull", {"free_mb": free_mb, "floor_mb": floor, "path": str(s.path.parent)})

    def _resume_intake(self, now: float, free_mb: float, floor: float) -> None:
        self.low_space = False
        blocked = round(now - self._low_since, 3)
        log.warning("outbox disk space restored: intake resumed", path=str(self.settings.path),
                    free_mb=free_mb, floor_mb=floor, blocked_s=blocked,
                    held=len(self.held), shed=self.shed_total)
        # A diskFull alert held back by a failed commit goes before the restore.
        if any(p.alert for p in self.held):
            self.internal[:0] = [p for p in self.held if p.alert]
            self.held = deque(p for p in self.held if not p.alert)
        self._report_shed()
        self._queue("diskSpaceRestored", {"free_mb": free_mb, "floor_mb": floor,
                                          "blocked_s": blocked, "shed": self.shed_total})

    def commit_hit_full_disk(self, batch: list[Pending], err: StoreError) -> None:
        """SQLITE_FULL despite the floor (another process filled the disk between two checks,
        or a quota): nothing was written and no seq was used, so the group waits at the head
        of the held events and intake stops as under the floor; it is retried after the next
        disk check finds room (at most once per `disk_check_interval_s`)."""
        for pending in batch:
            pending.not_committed()
        # A diskSpaceRestored that did not make it is stale; a diskFull waits with the group
        # (and goes first when space returns), so there is never more than one.
        retry = [p for p in batch if not (p.alert and p.draft.type == "diskSpaceRestored")]
        self.held.extendleft(reversed(retry))
        self.full_disk_commits += 1
        now = trio.current_time()
        self._next_check = now + self.settings.disk_check_interval_s
        alert_waiting = any(p.alert for p in self.held)
        if not self.low_space or not alert_waiting:
            if not self.low_space:
                self.low_space, self._low_since, self._shed_reported_at = True, now, now
            log.warning("outbox commit failed: disk full; intake stopped until space returns",
                        path=str(self.settings.path), error=str(err.__cause__ or err))
        if not alert_waiting:
            self._queue("diskFull", {
                "free_mb": round((self.free_bytes or 0) / MB, 1),
                "floor_mb": self.settings.min_free_mb, "path": str(self.settings.path.parent)})

    def _report_shed(self) -> None:
        if self._shed_unreported:
            s = self.settings
            self._queue("lossMarker", {
                "reason": "shed", "count": self._shed_unreported,
                "detail": f"droppable events ({', '.join(s.droppable_types)}) "
                          f"shed while free space was under {s.min_free_mb} MB"})
            self._shed_unreported = 0

    def _queue(self, event_type: str, data: dict[str, Any]) -> None:
        self.internal.append(Pending(
            system_draft(event_type, data, now=time.time(), monotonic=trio.current_time()),
            alert=event_type in ("diskFull", "diskSpaceRestored")))
