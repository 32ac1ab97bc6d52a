"""The SQLite outbox: where every event becomes durable, gets its seq and its place in the chain.

One job per module: `settings`; `schema` (tables, connections, the one-writer lock); `opening`
(open, tail check in `tail`, quarantine); `writer` (the commit path) with `sealing` (seq, hash
chain, signatures, the signing child process), `ledger` (per-machine redelivery and ack marks)
and `retention`; `witness` with `flusher` and `release` (the highest seq ever committed,
durable before any of it leaves); `disk` (free-space floor, shedding); `facade` (`Outbox`, the
async API and its writer task); `readers` (the one read API every other module uses: no SQL
about the outbox lives outside this package). docs/outbox.md has the whole story.
"""

from gateway.outbox.facade import Outbox
from gateway.outbox.readers import (
    describe,
    iter_envelopes,
    iter_time_range,
    open_db,
    open_readonly,
    outbox_figures,
)
from gateway.outbox.schema import SCHEMA
from gateway.outbox.sealing import SIGN_PROCESS_MIN, envelope_for
from gateway.outbox.settings import MB, OutboxSettings, statvfs_free
from gateway.outbox.tail import TAIL_CHECK_ROWS, TailCheck, check_tail

__all__ = ["MB", "SCHEMA", "SIGN_PROCESS_MIN", "TAIL_CHECK_ROWS", "Outbox", "OutboxSettings",
           "TailCheck", "check_tail", "describe", "envelope_for", "iter_envelopes",
           "iter_time_range", "open_db", "open_readonly", "outbox_figures", "statvfs_free"]
