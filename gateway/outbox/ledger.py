"""The per-machine ledger: what each machine sent last, and whether it was told it arrived.

The key to recognising a redelivered exception after a restart (the rules live in
drivers/redelivery.py; this module loads them from, and persists them to, the `machine_state`
table). Marks heard between commits wait here and ride along with the next group commit, in the
same transaction as the events: `take` hands them to a commit, `put_back` returns them when the
commit did not happen (disk full), `committed` wakes whoever waits for them to be durable."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field

import trio

from drivers.redelivery import RedeliveryBook, RedeliveryKey, Unacknowledged

__all__ = ["LedgerChanges", "MachineLedger", "MachineState"]

# machine -> (last seq, code, payload, poll counter) of its last recorded exception.
MachineState = tuple[int, int, bytes, int | None]


@dataclass(frozen=True, slots=True)
class LedgerChanges:
    """Marks to persist with one commit."""

    acked: Mapping[str, int] = field(default_factory=dict)  # machine -> seq it was told about
    # machine -> (poll counter, code, payload) of an exception it re-sent and is about to be told
    redelivered: Mapping[str, tuple[int, int, bytes]] = field(default_factory=dict)
    waiters: tuple[trio.Event, ...] = ()


class MachineLedger:
    def __init__(self, book: RedeliveryBook) -> None:
        self._book = book
        self._acked: dict[str, int] = {}
        self._redelivered: dict[str, tuple[int, int, bytes]] = {}
        self._waiters: list[trio.Event] = []

    @classmethod
    def load(cls, conn: sqlite3.Connection) -> MachineLedger:
        """What is still in question after the restart: each machine's last recorded exception
        it was not known to be told about."""
        rows = conn.execute("SELECT machine, last_seq, last_code, last_payload, acked_seq, "
                            "last_counter FROM machine_state").fetchall()
        return cls(RedeliveryBook({
            m: Unacknowledged(last, (code, payload or b""), counter)
            for m, last, code, payload, acked, counter in rows
            if code is not None and acked < last}))

    # -- the questions (drivers/redelivery.py) ---------------------------------------------------

    def pending(self) -> dict[str, Unacknowledged]:
        return self._book.pending()

    def check(self, machine: str, key: RedeliveryKey, *, priority: bool) -> int | None:
        return self._book.check(machine, key, priority=priority)

    def settle_restart(self, port: str, counter_at_open: int | None) -> list[tuple[str, int]]:
        """Questions a later frame on the line answered: (machine, seq) to mark acknowledged."""
        return self._book.settle_restart(port, counter_at_open)

    # -- marks waiting for the next commit -------------------------------------------------------

    def acknowledged(self, machine: str, seq: int) -> bool:
        """The machine was told about `seq`; True if that is news to persist."""
        if seq <= self._acked.get(machine, 0):
            return False
        self._acked[machine] = seq
        self._book.acknowledged(machine, seq)
        return True

    def expect_redelivery(self, machine: str, counter: int, code: int,
                          payload: bytes) -> trio.Event:
        """Mark `machine`'s last exception re-sent at poll `counter`; the event is set once
        that is durable."""
        self._redelivered[machine] = (counter, code, payload)
        done = trio.Event()
        self._waiters.append(done)
        return done

    def take(self) -> LedgerChanges:
        changes = LedgerChanges(self._acked, self._redelivered, tuple(self._waiters))
        self._acked, self._redelivered, self._waiters = {}, {}, []
        return changes

    def put_back(self, changes: LedgerChanges) -> None:
        """The commit did not happen: the marks go with the next one (newer marks win)."""
        for machine, seq in changes.acked.items():
            self._acked[machine] = max(seq, self._acked.get(machine, 0))
        self._redelivered = {**changes.redelivered, **self._redelivered}
        self._waiters[:0] = changes.waiters

    @staticmethod
    def committed(changes: LedgerChanges) -> None:
        for waiter in changes.waiters:
            waiter.set()


def persist(conn: sqlite3.Connection, recorded: Mapping[str, MachineState],
            changes: LedgerChanges) -> None:
    """Inside the commit's transaction: the exceptions just recorded, then the marks."""
    conn.executemany(
        "INSERT INTO machine_state (machine, last_seq, last_code, last_payload, last_counter) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT(machine) DO UPDATE SET last_seq=excluded.last_seq, "
        "last_code=excluded.last_code, last_payload=excluded.last_payload, "
        "last_counter=excluded.last_counter",
        [(machine, *state) for machine, state in recorded.items()])
    conn.executemany(
        "INSERT INTO machine_state (machine, last_seq, acked_seq) VALUES (?, 0, ?) "
        "ON CONFLICT(machine) DO UPDATE SET acked_seq=max(acked_seq, excluded.acked_seq)",
        list(changes.acked.items()))
    conn.executemany(
        "UPDATE machine_state SET last_counter = ?, last_code = ?, last_payload = ?, "
        "acked_seq = min(acked_seq, last_seq - 1) WHERE machine = ?",
        [(*state, machine) for machine, state in changes.redelivered.items()])


def forget_recorded_from(conn: sqlite3.Connection, seq: int) -> None:
    """Rows from `seq` on are gone (quarantined): a machine's last recorded exception may be
    among them, so forget it, and its redelivery is recorded again rather than recognised."""
    conn.execute("UPDATE machine_state SET last_code = NULL, last_payload = NULL "
                 "WHERE last_seq >= ?", (seq,))
