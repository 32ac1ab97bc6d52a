"""The gateway's side of the driver contract: machine events in, durable events out.

`OutboxSink` is the `drivers.base.EventSink` every driver gets. `record` turns a `MachineEvent`
into a draft and returns only once the outbox has committed it -- the driver acknowledges the
machine after that (docs/outbox.md, "Durability"). It also asks the redelivery question
(rule 3) of the outbox's machine ledger, whose rules live in drivers/redelivery.py.

Driver-neutral: a machine is `MachineRef.key`, and what identifies a re-sent exception is the
pair (`SourceRef.code`, `SourceRef.redelivery_key`) -- the driver's opaque key, stored in the
outbox's (last_code, last_payload) and compared for equality only, never looked inside.
With a `Reconciler`, every recorded event is shown to it once durable, and the verdicts it
draws at a meter read (docs/reconciliation.md) are recorded right after that read.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

import structlog

from drivers.base import MachineEvent, MachineRef, RedeliveryKey, SourceRef
from gateway.events import draft_from_machine, system_draft
from gateway.outbox import Outbox
from gateway.reconcile import Observation, Reconciler

__all__ = ["OutboxSink"]

log = structlog.get_logger("gateway.capture")


def _identity(source: SourceRef) -> tuple[int, RedeliveryKey]:
    """What the outbox stores of a recorded exception to recognise its re-send."""
    return source.code, source.redelivery_key


class OutboxSink:
    def __init__(self, outbox: Outbox, *, currency: str,
                 on_event: Callable[[MachineEvent], None] | None = None,
                 reconciler: Reconciler | None = None) -> None:
        self._outbox = outbox
        self.reconciler = reconciler
        self._currency = currency
        self._on_event = on_event
        self._last_seq: dict[str, tuple[str, int]] = {}  # machine -> (epoch, seq) recorded
        self.counts: Counter[str] = Counter()
        self.redeliveries = 0

    async def record(self, event: MachineEvent) -> None:
        draft = draft_from_machine(event, currency=self._currency, now=time.time())
        epoch, seq = await self._outbox.append_in_epoch(draft)
        if event.source is not None:
            self._last_seq[event.machine.key] = (epoch, seq)
        self.counts[event.type] += 1
        if self._on_event is not None:
            self._on_event(event)
        if self.reconciler is not None:
            await self._reconcile(event, seq)

    async def _reconcile(self, event: MachineEvent, seq: int) -> None:
        obs = Observation(event.machine.key, event.type, event.data,
                          exception=event.source is not None, seq=seq or None,
                          at=event.observed_at or time.time(), machine=event.machine)
        assert self.reconciler is not None
        for verdict in self.reconciler.observe(obs):
            machine = verdict.machine if isinstance(verdict.machine, MachineRef) else None
            await self._outbox.append(system_draft(
                verdict.type, verdict.data, now=time.time(), machine=machine,
                currency=self._currency))
            self.counts[verdict.type] += 1
            if verdict.type == "meterDiscrepancy":
                log.warning("meter discrepancy", machine=verdict.key, meter=verdict.data["meter"],
                            cause=verdict.data["cause"], difference=verdict.data["difference"])

    def acknowledged(self, event: MachineEvent) -> None:
        key = event.machine.key
        last = self._last_seq.get(key)
        if last is not None:
            self._outbox.note_acknowledged(key, last[1], last[0])

    def settle_restart(self, port: str, counter_at_open: int | None) -> int:
        """Before `port`'s driver starts: drop the redelivery question for each of its machines
        whose last recorded exception was followed by another frame on the line (the rule:
        drivers/redelivery.py), and mark those acknowledged. Returns how many were settled."""
        settled = self._outbox.settle_restart(port, counter_at_open)
        for key, seq in settled:
            log.info("exception acknowledged before the restart (later frames on the line); "
                     "no redelivery expected", machine=key, seq=seq,
                     journal_counter=counter_at_open)
        return len(settled)

    async def redelivered(self, event: MachineEvent) -> None:
        """The machine re-sent its last recorded exception in answer to a new poll (after a
        restart probe it met with silence, the sync GP and a GP; or after a reset of the
        machine cut off the ACK the gateway had already marked): that poll's counter is now the
        one a further restart must compare with, and the exception is unacknowledged again. Both
        must be durable before the ACK goes out, or a kill in between would take the exception
        for acknowledged (docs/sas.md, "Restart safety" and "Machine resets")."""
        source = event.source
        if source is None or source.poll_counter is None:
            return
        if not await self._outbox.expect_redelivery(event.machine.key, source.poll_counter,
                                                    *_identity(source)):
            # The outbox started a new epoch (a damaged file) before the mark was durable: the
            # re-sent exception is recorded again there (docs/outbox.md, "starts over").
            log.warning("new outbox epoch before a redelivery was marked; recorded again",
                        machine=event.machine.key, code=f"{source.code:02X}")
            await self.record(event)

    def is_redelivery(self, machine: MachineRef, source: SourceRef) -> bool:
        key = machine.key
        seq = self._outbox.redelivered_seq(key, _identity(source), priority=source.priority)
        if seq is None:
            return False
        # The acknowledgement about to go out is for the event already recorded: mark that seq
        # (or a second crash would ask the question again about an exception long gone).
        self._last_seq[key] = (self._outbox.epoch, seq)
        self.redeliveries += 1
        log.info("redelivered exception recognised; acknowledged without recording again",
                 machine=key, code=f"{source.code:02X}")
        return True
