"""The SAS host's public types: its configuration and what it reports (drivers/sas/host.py,
"Theory of operation", says what each one means on the line). Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from drivers.model import MachineEvent
from drivers.sas.errors import SasLocalProtocolError

__all__ = ["Acknowledged", "CommandFinished", "HostConfig", "HostEvent", "Identity",
           "IdentityConfirmed", "LinkNote", "Report"]


@dataclass(frozen=True, slots=True)
class HostConfig:
    poll_interval_s: float = 0.2
    response_timeout_s: float = 0.1
    # Silence that ends an answer (reference 2.1: at most 5 ms between bytes); it completes a lone
    # ACK or busy, and cuts short the wait for the rest of a broken frame.
    inter_byte_gap_s: float = 0.01
    offline_after_misses: int = 5
    rte: bool = True
    credits_every_s: float = 5.0
    # Silent transmissions of one poll in a row before it is given up, to a machine that was
    # offline when the poll went out (nothing of it can be in doubt)...
    max_attempts: int = 3
    # ...and to an online one. A silence may be a lost answer: the machine re-sends on the
    # repeat, and its final identical poll is silent and keeps the exception queued (reference
    # 2.3), so the run ends on a final silence unless every answer in it was lost. A lost busy
    # answer (the machine took no poll) shifts the chain, hence three chains, not one.
    give_up_after_silences: int = 9
    # A machine silent this long (not one byte) may have been reset: see "Machine resets". On a
    # noisy line shorter silences happen while it is up, and taking one for a reset would turn
    # its next genuine data-less exception into a "re-send" (a loss).
    reset_silence_s: float = 1.5
    sync_address: int | None = None
    # While the machine keeps answering (garbled, ambiguous) it has not taken our last attempt as
    # the final one, and a different poll would ACK an answer we never decoded: keep repeating
    # until it falls silent or answers cleanly, up to this many transmissions; giving up then
    # records a lossMarker (see "Undecoded answers" in the module docstring).
    max_attempts_answering: int = 60
    # In RTE mode silence after a GP means "no activity" -- or a lost event answer. Repeating the
    # GP (implied NACK) makes the machine resend a lost event, and on the final identical poll it
    # keeps the event queued (reference 2.3), so 2 closes the gap; 0 trusts the first silence.
    rte_silence_retries: int = 2
    # Spacing of those repeats (None: the poll interval). The line is held from the first to the
    # last (a poll to another address would ACK an event answer that may have been lost), so
    # on a line shared by idle RTE machines this is what limits their poll rate (docs/sas.md,
    # "Line scheduling"). RTE needs fast polling, 40 ms (reference 2.1), the floor; set it only
    # for machines that answer within the reference's 20 ms: an answer later than the spacing
    # arrives after the series and may be acknowledged unseen or recorded twice.
    rte_repeat_spacing_s: float | None = None
    meters_every_s: float = 60.0
    clock_every_s: float = 600.0
    # "6F": LP 6F/AF alternating with the codes of codes.METER_CODES; "1C": LP 1C then LP 0F.
    meter_polls: str = "6F"
    min_poll_interval_s: float = 0.04
    # A poll due within this much is sent now, and get_timer() asks to be woken this early: the
    # event loop's timers are about 1 ms coarse (epoll), and waking late on every poll would cost
    # 2-3 % of the poll rate at 40 ms. Two polls to one machine may be this much closer.
    timer_slack_s: float = 0.001
    # How long to wait for the first byte of an answer (see "Line scheduling"): the poll's wire
    # time + the machine's answer window (reference 2.1: 20 ms) + the port's measured latency,
    # never more than response_timeout_s.
    answer_window_s: float = 0.020
    # An offline address is polled once per round, then at doubling intervals up to this.
    offline_backoff_max_s: float = 5.0
    # An offline address that has sent no byte for this long (or never did) gets one attempt a
    # turn; one heard more recently (back from a power cut, say) gets the full series.
    dead_after_silence_s: float = 30.0

    def __post_init__(self) -> None:
        if self.meter_polls not in ("6F", "1C"):
            raise SasLocalProtocolError(f"meter_polls must be 6F or 1C, not {self.meter_polls}")
        if self.poll_interval_s > 5.0:
            raise SasLocalProtocolError("poll interval above 5 s (reference 2.1)")
        if self.rte_repeat_spacing_s is not None and not (
                self.min_poll_interval_s <= self.rte_repeat_spacing_s <= 5.0):
            raise SasLocalProtocolError("rte_repeat_spacing_s outside 40 ms .. 5 s (reference 2.1)")

    @property
    def interval_s(self) -> float:
        """The poll interval actually used: the configured one, floored (reference 2.1)."""
        return max(self.poll_interval_s, self.min_poll_interval_s)


@dataclass(frozen=True, slots=True)
class Report:
    """An event for the sink. With a `token` the machine waits: call `SasHost.durable(token)`.
    `resent`: the machine re-sent the exception it last reported, whose implied ACK a reset of
    the machine cut off (see "Machine resets" in the module docstring). It was recorded
    already: acknowledge it without recording it again."""

    event: MachineEvent
    token: int | None = None
    resent: bool = False


@dataclass(frozen=True, slots=True)
class Acknowledged:
    """The implied ACK for `event` was among the frames just handed out; `token` is the one it
    was reported with, so the driver can find its own copy of the event without an id() map."""

    event: MachineEvent
    token: int = 0


@dataclass(frozen=True, slots=True)
class CommandFinished:
    ticket: int
    ok: bool
    reason: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LinkNote:
    """Something on the line worth a log line, not an event: `kind` "chirp"."""

    address: int
    kind: str
    at: float


# (serial, asset, game) as discovery read them; None: the machine did not report that part.
Identity = tuple[str | None, str | None, str | None]


@dataclass(frozen=True, slots=True)
class IdentityConfirmed:
    """Discovery confirmed `identity` for the machine at `address` (after any `machineReplaced`
    it caused). The driver keeps it across restarts (journal.PollJournal.record_identity) and
    passes it back as `SasHost(identities=...)`: a machine swapped while the gateway was stopped
    is reported at the first discovery after start."""

    address: int
    identity: Identity


HostEvent = Report | Acknowledged | CommandFinished | LinkNote | IdentityConfirmed
