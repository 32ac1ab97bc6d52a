"""Committed groups wait here until a witness flush covers them, then are released in order.

Released means handed to anything outside the outbox: the appenders woken (a driver ACKs its
machine only then), `last_seq` moved, the readers and the commit listeners told. The flusher
thread (gateway/outbox/flusher.py) reports each durable ticket; the trio thread releases every
group whose ticket it covers (docs/outbox.md section 3, "The witness and the release order")."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from gateway.errors import StoreError
from gateway.outbox.ledger import LedgerChanges
from gateway.outbox.pending import Pending

__all__ = ["Held", "Releases"]


@dataclass(frozen=True, slots=True)
class Held:
    """A committed group waiting for the witness flush that covers it (its `ticket`)."""

    ticket: int
    epoch: str
    seq: int  # the chain head after the group
    batch: list[Pending]
    envelopes: list[dict[str, Any]]
    changes: LedgerChanges


class Releases:
    """The held groups of one outbox; `release` is called with each one, in commit order."""

    def __init__(self, release: Callable[[Held], None]) -> None:
        self._release = release
        self._held: deque[Held] = deque()
        self._flushed = 0
        self._changed = trio.Event()  # set (and replaced) at each release or failure
        self._token: trio.lowlevel.TrioToken | None = None
        self.error: OSError | None = None

    def start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()

    def stop(self, flushed: int) -> list[LedgerChanges]:
        """The writer stopped and the flusher has flushed up to `flushed`: release what that
        covers. What is left (its witness write failed) is never handed on: its appenders
        learn it was not committed; its ledger marks are returned, to go with a later commit."""
        self.flushed(flushed)
        left, self._held = list(self._held), deque()
        self._token = None
        for held in left:
            for pending in held.batch:
                pending.not_committed()
                pending.done.set()
        return [held.changes for held in left]

    # -- from the flusher thread -----------------------------------------------------------------

    def on_flushed(self, ticket: int) -> None:
        token = self._token
        if token is not None:
            try:
                token.run_sync_soon(self.flushed, ticket)
            except trio.RunFinishedError:
                pass

    def on_failed(self, err: OSError) -> None:
        self.error = err
        self.on_flushed(0)  # wakes `watch`

    # -- the trio thread -------------------------------------------------------------------------

    def hold(self, held: Held) -> None:
        self._held.append(held)
        self.flushed(0)  # its flush may be done already

    def flushed(self, ticket: int) -> None:
        self._flushed = max(self._flushed, ticket)
        while self._held and self._held[0].ticket <= self._flushed:
            self._release(self._held.popleft())
        self._changed.set()
        self._changed = trio.Event()

    async def drained(self) -> None:
        """Until every held group is released (before an epoch changes)."""
        while self._held and self.error is None:
            await self._changed.wait()
        self._raise()

    async def watch(self) -> None:
        """Raises StoreError once a witness write fails (the writer stops with it)."""
        while self.error is None:
            await self._changed.wait()
        self._raise()

    def _raise(self) -> None:
        if self.error is not None:
            raise StoreError(f"outbox witness write failed: {self.error}") from self.error
