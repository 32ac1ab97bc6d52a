"""The witness flusher: the witness written in a thread of its own, beside the writer.

The witness must be durable before any seq it covers leaves the process: an appender's return
(a driver acknowledges its machine only then), the uplink, the feed. It is written only after
the group's database commit has returned, so it never runs ahead of the database and an outbox
found behind it has lost rows for certain (docs/outbox.md section 3). The writer does not wait
for the flush: it seals and commits the next group meanwhile, and the facade releases a group
once a flush covering it is done. Waiting marks of one epoch are coalesced (the newest covers
the older ones); marks of different epochs never are, so the file never goes back an epoch."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from gateway.outbox.witness import Mark, Witness

__all__ = ["WitnessFlusher"]


class WitnessFlusher:
    """Owns every write of one outbox's witness once `start`ed. `submit` returns a ticket;
    `on_flushed(ticket)` is called in the flusher thread once every mark up to that ticket is
    durable, `on_failed(err)` if a write fails (nothing after it is ever reported flushed)."""

    def __init__(self, witness: Witness, on_flushed: Callable[[int], None],
                 on_failed: Callable[[OSError], None]) -> None:
        self._witness = witness
        self._on_flushed = on_flushed
        self._on_failed = on_failed
        self._cond = threading.Condition()
        self._write_lock = threading.Lock()  # one write at a time, whichever thread
        self._waiting: deque[tuple[int, Mark]] = deque()
        self._issued = 0
        self.flushed = 0  # the highest ticket whose mark (or a newer one) is durable
        self.failed: OSError | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox-witness", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Flush what was submitted, then end the thread (idempotent). A mark submitted
        meanwhile waits for the stop and is then written by its caller."""
        with self._cond:
            if self._thread is None or self._stopping:
                return
            thread, self._stopping = self._thread, True
            self._cond.notify_all()
        thread.join()
        with self._cond:
            self._thread, self._stopping = None, False
            self._cond.notify_all()

    def submit(self, mark: Mark) -> int:
        """Queue `mark` for the next flush (any thread); its ticket. Without the thread (the
        outbox opened but its writer not running) the mark is written here and now."""
        with self._cond:
            while self._stopping:
                self._cond.wait()
            self._issued += 1
            ticket = self._issued
            if self._thread is not None:
                self._waiting.append((ticket, mark))
                self._cond.notify_all()
            else:  # under the (reentrant) lock: two direct writes never cross
                self._write(ticket, mark)
        return ticket

    def record(self, mark: Mark) -> None:
        """Submit `mark` and wait until it is durable (epoch changes, quarantine, open)."""
        ticket = self.submit(mark)
        with self._cond:
            while self.flushed < ticket and self.failed is None:
                self._cond.wait()
        if self.failed is not None:
            raise self.failed

    def _write(self, ticket: int, mark: Mark) -> None:
        try:
            with self._write_lock:
                self._witness.record(mark)
        except OSError as err:
            with self._cond:
                self.failed = err
                self._cond.notify_all()
            self._on_failed(err)
            raise
        with self._cond:
            self.flushed = max(self.flushed, ticket)
            self._cond.notify_all()
        self._on_flushed(ticket)

    def _next(self) -> tuple[int, Mark] | None:
        with self._cond:
            while not self._waiting and not self._stopping:
                self._cond.wait()
            if not self._waiting:
                return None
            ticket, mark = self._waiting.popleft()
            while self._waiting and self._waiting[0][1].epoch == mark.epoch:
                ticket, mark = self._waiting.popleft()
            return ticket, mark

    def _run(self) -> None:
        while (item := self._next()) is not None:
            try:
                self._write(*item)
            except OSError:
                return
