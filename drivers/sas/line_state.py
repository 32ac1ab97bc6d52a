"""The SAS host's state: per machine, the poll in flight, the queued requests; the shared
attributes of the host's parts (`HostCore`); the host's constants. Pure: no I/O."""

from __future__ import annotations

import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from drivers.model import MachineEvent, MachineRef, TxFrame
from drivers.redelivery import ResetWatch
from drivers.sas import framing, messages
from drivers.sas.codes import BILL_CODE_CENTS, DENOMINATION_CENTS, Exc, LongPoll
from drivers.sas.errors import SasLocalProtocolError
from drivers.sas.host_api import HostConfig, HostEvent

LATENCY_WINDOW = 1000
# 11 bits per byte at 19,200 baud (reference 1).
BYTE_TIME_S = 11 / 19200
# First-byte delays kept to estimate the port's latency (adapter, pty, event loop).
DELAY_WINDOW = 64
# Busy answers in a row to one poll before it is treated like a missed poll.
MAX_BUSY = 10


BILL_EXCEPTIONS = frozenset(BILL_CODE_CENTS) | {Exc.BILL_ACCEPTED}
LEGACY_METERS = (LongPoll.METERS_1C, LongPoll.METERS_0F, LongPoll.BILL_COUNTS)
# Long polls many machines do not support (LP 74 needs AFT): silence to them is no missed poll.
OPTIONAL_POLLS = frozenset({LongPoll.AFT_STATUS})


def expectation(poll: messages.Poll, rte: bool) -> framing.Expectation:
    """What may answer `poll` (reference section 6 via messages.POLL_SPECS)."""
    if poll.command is None:
        return framing.Expectation(poll.address, None, rte)
    spec = messages.POLL_SPECS.get(poll.command)
    answer = spec.answer if spec is not None else "ack"
    return framing.Expectation(poll.address, poll.command, rte,
                               length=answer if isinstance(answer, int) else None,
                               length_byte=answer == "length")


@dataclass(slots=True)
class MeterRead:
    """One meter read of one or more polls, reported together when the last one is done."""

    remaining: int
    ticket: int | None = None
    meters: dict[str, int] = field(default_factory=dict)
    started: bool = False  # a first answer came: count exceptions from here (`straddle`)


@dataclass(slots=True)
class Request:
    poll: messages.Poll
    ticket: int | None = None
    read: MeterRead | None = None
    # The LP 1A after an RTE-mode exception: any answer, an event included, serves it.
    confirm: bool = False


@dataclass(slots=True)
class Stats:
    polls: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    ambiguous: int = 0
    loss_markers: int = 0
    nacks: int = 0
    busy: int = 0
    retries: int = 0
    exceptions: int = 0
    resent_after_reset: int = 0
    chirps: int = 0
    meter_reads: int = 0
    last_response_at: float | None = None
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))


@dataclass(slots=True)
class Machine:
    address: int
    ref: MachineRef
    queue: deque[Request] = field(default_factory=deque)
    online: bool = False
    misses: int = 0
    rte_on: bool = False
    denom_code: int | None = None
    credits: int | None = None
    sas_version: str | None = None
    next_due: float = 0.0
    credits_at: float = 0.0
    meters_due: float = math.inf
    clock_due: float = math.inf
    meter_mode: str = "6F"
    alternate: bool = False
    last_was_gp: bool = False
    game_count: int | None = None
    games: tuple[int, ...] = ()
    features: str | None = None
    clock: str | None = None
    clock_read_at: float | None = None
    last_meters: dict[str, int] | None = None
    last_handpay: dict[str, Any] | None = None
    last_bill: dict[str, Any] | None = None
    probe: bool = True  # the first poll after a (re)start: see "Restart" in the module docstring
    # Line scheduling: the current wait between polls to an offline address (0: not backing
    # off), and why the machine is offline (None while online or never seen).
    backoff_s: float = 0.0
    offline_reason: str | None = None
    # Identity (serial, asset, game) as last confirmed by a finished discovery; a new one that
    # differs is a replacement (see "Port lifecycle").
    identity: tuple[str | None, str | None, str | None] | None = None
    game: str | None = None
    # RTE mode: the last poll to it was a GP met with silence on every attempt; the next GP may
    # repeat it as is (see "RTE silence" in the module docstring).
    idle_gp: bool = False
    bytes_at: float = -math.inf  # when it last sent any byte in answer to a poll
    # RTE mode: GPs met with silence since its last byte, across polls (a poll's repeats
    # included): two in a row show an empty queue ("Periodic long polls" in host.py).
    silent_gps: int = 0
    # Did the machine hear the ACK of its last exception? (drivers/redelivery.py ResetWatch,
    # "Machine resets" in the module docstring.)
    reset: ResetWatch = field(default_factory=ResetWatch)
    stats: Stats = field(default_factory=Stats)
    # Exceptions recorded since the current meter read's first answer (None: no read open), a
    # finished read's snapshot waiting for an empty queue, and whether its meter answer came
    # while the host believed the machine in RTE mode, its next exception answer to show
    # whether it still was ("Periodic long polls" in host.py).
    straddle: int | None = None
    held: dict[str, Any] | None = None
    read_in_rte: bool = False

    @property
    def denom_cents(self) -> int:
        return DENOMINATION_CENTS.get(self.denom_code or 0x01, 1)


@dataclass(slots=True)
class InFlight:
    machine: Machine
    poll: messages.Poll
    request: Request | None
    expect: framing.Expectation
    sent_at: float
    deadline: float
    attempts: int = 1
    received: bool = False
    ever_received: bool = False
    silent_run: int = 0      # transmissions in a row met with silence
    was_online: bool = False
    doubt: bool = False      # an attempt drew bytes that decoded to no answer
    saw_event: bool = False  # `addr FF` among them: an event frame, whatever mode we assumed
    failed_silent: bool = False  # the last failed attempt drew no byte before it timed out
    last_byte: int = -1
    busy: int = 0
    resend_at: float | None = None
    probe: bool = False
    wire_s: float = 0.0  # time the frames of this attempt take on the wire


def poll_from_wire(address: int, wire: bytes) -> messages.Poll | None:
    """The poll whose wire form is `wire`, if it is a well-formed poll to `address`."""
    try:
        if len(wire) == 1:
            poll = messages.general_poll(address)
        elif len(wire) == 2:
            poll = messages.long_poll(address, wire[1])
        elif len(wire) >= 4:
            poll = messages.long_poll(address, wire[1], wire[2:-2])
        else:
            return None
    except SasLocalProtocolError:
        return None
    return poll if poll.wire() == wire else None


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class HostCore:
    """What the host's parts (answer_contract, answer_facts, scheduling; SasHost combines them)
    share: the attributes SasHost.__init__ sets. Each part calls the others' methods by name."""

    port: str
    config: HostConfig
    _machines: dict[int, Machine]
    _sync_poll: bytes
    _replay: bytes | None
    _probes: dict[int, messages.Poll]
    _last_to: dict[int, bytes]
    _delays: deque[float]
    _framer: framing.Framer
    _inflight: InFlight | None
    _given_up: InFlight | None  # a poll given up on a silence, no frame since ("Late answers")
    _frames: list[TxFrame]
    _events: deque[HostEvent]
    _held: dict[int, MachineEvent]
    _to_ack: list[tuple[MachineEvent, int]]
    _tokens: itertools.count[int]
    _tickets: itertools.count[int]
    _need_sync: bool
    _last_wire: bytes | None
    _frame_no: int
