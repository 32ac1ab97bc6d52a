"""The redelivery rules, in one place: after a restart, is this exception one we already have?

Sans-I/O, driver-neutral (no trio, no SQL). A machine that was never told its exception arrived
(no implied ACK, or an ACK a reset cut off) sends it again; the gateway must acknowledge that
re-send without a second record (design rule 3 of section 4, docs/architecture.md). The
question is asked per machine about its *last recorded* exception only, and it is answered by
comparing the driver contract's redelivery key -- `RedeliveryKey`, what `SourceRef` carries
(code and `redelivery_key`): the gateway compares it for equality and stores it, never looks inside.

`RedeliveryBook` holds, per machine, the last recorded exception that was not known to be
acknowledged when the gateway started (`Unacknowledged`: its seq, its key, and the line counter
of the poll that elicited it, see drivers/sas/journal.py) and decides:
  * `settle_restart(port, counter_at_open)`: if the line's journal moved past the eliciting
    poll's counter, a later frame was the implied ACK, the machine will not re-send, and the
    question is dropped (returned so the caller persists the ack mark);
  * `check(machine, key, priority)`: the first queued exception after the restart settles it --
    equal key: a redelivery (returns the seq it duplicates), other key: a new exception, and
    the question is dropped; a priority exception (sent ahead of the queue) settles nothing;
  * `acknowledged(machine, seq)`: the machine was told about seq: nothing left to ask.
The outbox loads and persists it (gateway/outbox/ledger.py, table machine_state); gateway/capture.py
asks it.

`ResetWatch` is the other half, decided while the gateway runs: the machine reset between its
exception's ACK and its next answer, and re-sends the exception. The SAS host feeds it what the
line shows (drivers/sas/host.py "Machine resets") and the driver reports a re-send as a
redelivery.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from drivers import model

__all__ = ["RedeliveryBook", "RedeliveryKey", "ResetWatch", "Unacknowledged"]

# (code, redelivery_key) of drivers.model.SourceRef: opaque to the gateway, compared for equality.
RedeliveryKey = tuple[int, model.RedeliveryKey]


@dataclass(frozen=True, slots=True)
class Unacknowledged:
    seq: int
    key: RedeliveryKey
    counter: int | None  # poll counter of the eliciting poll; None: no journal (stays armed)


class RedeliveryBook:
    def __init__(self, pending: Mapping[str, Unacknowledged] | None = None) -> None:
        self._pending: dict[str, Unacknowledged] = dict(pending or {})

    def pending(self) -> dict[str, Unacknowledged]:
        """machine -> what is still in question (a copy)."""
        return dict(self._pending)

    def settle_restart(self, port: str, counter_at_open: int | None) -> list[tuple[str, int]]:
        """Drop the question for each machine of `port` whose exception was followed by another
        frame on the line; returns (machine, seq) of each, to be marked acknowledged. Without
        a journal (`counter_at_open` None) or a stored counter the question stays."""
        if counter_at_open is None:
            return []
        settled = [(m, u.seq) for m, u in self._pending.items()
                   if m.startswith(f"{port}/") and u.counter is not None
                   and u.counter != counter_at_open]
        for machine, _ in settled:
            del self._pending[machine]
        return settled

    def check(self, machine: str, key: RedeliveryKey, *, priority: bool) -> int | None:
        """The seq `key` re-sends if it is the machine's unacknowledged exception, else None.
        Either answer settles the question, unless a priority exception came first."""
        last = self._pending.get(machine)
        if last is None:
            return None
        if last.key != key:
            if not priority:
                del self._pending[machine]
            return None
        del self._pending[machine]
        return last.seq

    def acknowledged(self, machine: str, seq: int) -> None:
        last = self._pending.get(machine)
        if last is not None and seq >= last.seq:
            del self._pending[machine]


class ResetWatch:
    """The machine-reset rule, for one machine on a line whose protocol acknowledges by the
    next frame (SAS: the implied ACK). Sans-I/O: the line's host feeds it what it sees.

    A machine deletes an exception only on its ACK; powered off before the ACK reached it, it
    reports the same exception again after power-up. So the last acknowledged exception stays
    `unconfirmed` until the machine shows it heard the ACK: any bytes from it with no frame to
    another address in between (a machine that reset ignores its own address until such a
    frame resynchronises it). If instead it fell silent long enough to have reset and was
    resynchronised, the first exception it queues settles the question (`is_resend`): the same
    key (the same code, and the same data unless it came bare) is the re-send, anything else
    is new. docs/sas.md, "Machine resets"."""

    __slots__ = ("_ack_frame", "_foreign", "_silent", "unconfirmed")

    def __init__(self) -> None:
        self.unconfirmed: RedeliveryKey | None = None
        self._ack_frame = 0
        self._foreign = False  # a frame to another address since the ACK
        self._silent = False   # a silence long enough for a reset since the ACK

    def acknowledging(self, key: RedeliveryKey, ack_frame: int) -> None:
        """Frame number `ack_frame` (the line's next) is the ACK of the exception `key`."""
        self.unconfirmed, self._ack_frame = key, ack_frame
        self._foreign = self._silent = False

    def frame_sent(self, frame_no: int, *, to_this_machine: bool) -> None:
        if self.unconfirmed is not None and frame_no > self._ack_frame and not to_this_machine:
            self._foreign = True

    def heard(self) -> None:
        """Bytes from the machine: with no frame to another address since the ACK it was not
        resynchronised, so it was up and heard the ACK."""
        if not self._foreign:
            self.unconfirmed = None

    def fell_silent(self) -> None:
        """Not one byte from the machine for as long as a reset takes."""
        self._silent = True

    def is_resend(self, key: RedeliveryKey, *, priority: bool) -> bool:
        """Whether the exception `key`, the first the machine queued since the ACK, re-sends
        the unconfirmed one. Either answer settles the question, unless a priority exception
        (sent ahead of the queue) that is not the re-send came first."""
        unconfirmed, self.unconfirmed = self.unconfirmed, None
        if unconfirmed is None or not (self._foreign and self._silent):
            return False  # nothing in question, or the machine was up all along
        code, payload = key
        if code == unconfirmed[0] and (not payload or payload == unconfirmed[1]):
            return True
        if priority:
            self.unconfirmed = unconfirmed
        return False
