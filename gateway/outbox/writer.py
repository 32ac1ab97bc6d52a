"""The commit path: one group sealed and written in one `synchronous=FULL` transaction.

Runs in the writer thread. Order inside the transaction: the events, the machines' ledger rows
(what each recorded, the marks heard since the last commit), the delivered mark, then a bounded
slice of retention. Any SQLite error rolls all of it back and no seq is used."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from gateway.errors import StoreError
from gateway.outbox import ledger, retention
from gateway.outbox.ledger import LedgerChanges, MachineState
from gateway.outbox.pending import Pending
from gateway.outbox.schema import insert_events, machine_key
from gateway.outbox.sealing import ChainHead, Sealed, Signing, seal_group
from gateway.outbox.settings import OutboxSettings

__all__ = ["CommitResult", "GroupCommit", "commit_group"]


@dataclass(frozen=True, slots=True)
class GroupCommit:
    """What one commit is asked to do, besides its events."""

    changes: LedgerChanges
    delivered: int  # the platform's cumulative ack, persisted if it moved
    delivered_persisted: int
    low_space: bool  # under the disk floor: retention ignores age
    retention_cap: int  # bytes of database pages delivered events may fill (0: no cap)


@dataclass(frozen=True, slots=True)
class CommitResult:
    envelopes: list[dict[str, Any]]
    head: ChainHead
    retired: list[str]
    pruned: retention.Pruned


def _rows(sealed: list[Sealed], now: float
          ) -> tuple[list[tuple[Any, ...]], dict[str, MachineState]]:
    """The events rows, and each machine's last recorded exception among them."""
    rows, recorded = [], {}
    for item in sealed:
        draft = item.pending.draft
        key = machine_key(draft.machine)
        seq = item.envelope["seq"]
        code = draft.source[0] if draft.source else None
        rows.append((seq, draft.type, draft.channel, key, now, code, item.digest, item.body))
        if key is not None and draft.source is not None:
            recorded[key] = (seq, *draft.source)
    return rows, recorded


def _write(conn: sqlite3.Connection, settings: OutboxSettings, rows: list[tuple[Any, ...]],
           recorded: dict[str, MachineState], job: GroupCommit, prunable: int
           ) -> retention.Pruned:
    conn.execute("BEGIN")
    insert_events(conn, rows)
    ledger.persist(conn, recorded, job.changes)
    if job.delivered != job.delivered_persisted:
        write_delivered(conn, job.delivered)
    pruned = retention.prune(conn, settings, prunable, job.low_space, job.retention_cap)
    conn.execute("COMMIT")
    return pruned


def write_delivered(conn: sqlite3.Connection, delivered: int) -> None:
    conn.execute("UPDATE meta SET value=? WHERE key='delivered_seq'", (str(delivered),))


def commit_group(conn: sqlite3.Connection, settings: OutboxSettings, epoch: str,
                 signing: Signing, head: ChainHead, batch: list[Pending],
                 job: GroupCommit) -> CommitResult:
    """Seal `batch` after `head` and commit it with `job`'s bookkeeping. On success each
    pending holds its seq and sealed envelope (its appender is woken by the caller)."""
    sealed, new_head, retired = seal_group(signing, settings, epoch, head, batch)
    rows, recorded = _rows(sealed, time.time())
    try:
        # The newest row is never pruned: the chain continues from it.
        pruned = _write(conn, settings, rows, recorded, job, min(job.delivered, head.seq - 1))
    except sqlite3.Error as err:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        for pending in batch:
            pending.not_committed()
        raise StoreError(f"outbox commit failed: {err}") from err
    for item in sealed:
        item.pending.seq, item.pending.envelope = item.envelope["seq"], item.envelope
    return CommitResult([item.envelope for item in sealed], new_head, retired, pruned)
