"""The event model: catalogue of event types, channels, and the envelope every event travels in.

A driver reports a `MachineEvent`; `draft_from_machine` turns it into a `Draft` (channel, time,
trace id, money made exact). The outbox writer gives each draft its place in the chain (epoch,
seq, prev_hash) and seals it (gateway/signing.py) into the envelope stored and streamed upstream.
Performs no I/O.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from drivers.model import MachineEvent, MachineRef, RedeliveryKey

__all__ = [
    "CATALOGUE",
    "CHANNELS",
    "Draft",
    "EventSpec",
    "draft_from_machine",
    "rfc3339",
    "system_draft",
]

CHANNELS = ("game", "cash", "alerts", "system", "player")


# JSON Schema fragments for `data` fields.
MONEY = {"type": "object", "required": ["minor", "currency"], "additionalProperties": False,
         "properties": {"minor": {"type": "integer"},
                        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"}}}
INT = {"type": "integer"}
STR = {"type": "string"}
NUM = {"type": "number"}
BOOL = {"type": "boolean"}
DOOR = {"enum": ["main", "drop", "card_cage", "cashbox", "belly"]}
# Player cards: a keyed hash of the card number, never the number (docs/cardreader.md).
CARD_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
KEY_ID = {"type": "string", "pattern": "^[0-9a-f]{8}$"}
MEDIUM = {"enum": ["magstripe", "rfid"]}
ANY = {}


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One catalogue entry: its channel, schema version, what it means, its SAS source, and the
    JSON Schema of its `data` (`fields`, of which `required` must be present)."""

    type: str
    channel: str
    version: str
    summary: str
    sas: str = ""
    droppable: bool = False
    fields: dict[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()


CATALOGUE: dict[str, EventSpec] = {s.type: s for s in [
    # system
    EventSpec("gatewayStarted", "system", "1.1.0",
              "The gateway process started. clock_synchronised: whether the system clock was "
              "synchronised (absent: unknown); when false, timestamps may be off.",
              fields={"version": STR, "ports": {"type": "array"}, "clock_synchronised": BOOL},
              required=("version",)),
    EventSpec("gatewayStopping", "system", "1.0.0",
              "The gateway is stopping cleanly (reason: the signal, e.g. SIGTERM); the last event "
              "before a clean stop. A gatewayStarted without one before it follows a crash.",
              fields={"reason": STR}),
    EventSpec("deviceOnline", "system", "1.0.0", "A machine answered after silence or at start.",
              "first valid answer"),
    EventSpec("deviceOffline", "system", "1.1.0",
              "A machine stopped answering: it missed the configured number of polls, or its "
              "port broke or would not open (reason says which).",
              "missed polls, port I/O error", fields={"reason": STR}),
    EventSpec("machineReplaced", "system", "1.0.0",
              "Discovery found another machine at this port and address: its serial, asset "
              "number or game differs from the one confirmed before (changed lists which). "
              "`machine` is the new identity, as on every later event.",
              "LP 54, LP 74, LP 1F after a reconnect or offline",
              fields={"changed": {"type": "array", "items": {"enum": ["serial", "asset", "game"]}},
                      "previous_serial": {"type": ["string", "null"]},
                      "previous_asset": {"type": ["string", "null"]},
                      "previous_game": {"type": ["string", "null"]},
                      "game": {"type": ["string", "null"]}}, required=("changed",)),
    EventSpec("powerLost", "system", "1.0.0", "The machine reported AC power lost.", "exc 18"),
    EventSpec("powerApplied", "system", "1.0.0", "The machine reported AC power applied.", "exc 17"),
    EventSpec("uplinkDown", "system", "1.0.0", "The platform connection was lost.",
              fields={"reason": STR}, required=("reason",)),
    EventSpec("uplinkUp", "system", "1.1.0",
              "The platform connection is (re-)established; down_for_s: seconds since the "
              "previous connection was lost (since start-up for the first), 3 decimals; "
              "clock_synchronised as in gatewayStarted, at this moment.",
              fields={"down_for_s": {"type": "number", "minimum": 0},
                      "clock_synchronised": BOOL}, required=("down_for_s",)),
    EventSpec("lossMarker", "system", "1.1.0",
              "Events were lost or shed; says what and why (reason: shed, quarantine, "
              "database-corrupt, rollback, database-lost, undecodedAnswer: a machine's answer "
              "could not be decoded and the next poll acknowledged it; detail names the poll). "
              "For quarantine, first_seq..last_seq are the seqs moved aside (this epoch; "
              "resume_hash is the prev_hash of the event after them). For rollback, "
              "database-lost and database-corrupt (seq 1 of a new epoch), first_seq..last_seq "
              "are seqs of previous_epoch the outbox no longer has, and salvaged counts the "
              "previous epoch's undelivered events re-sealed after this one as seqs 2, 3, ... "
              "(salvaged_first_seq..salvaged_last_seq, old seqs). count: for quarantine "
              "last_seq - first_seq + 1; for a new epoch the seqs of first_seq..last_seq no "
              "salvaged event carries (delivered ones included); for shed and undecodedAnswer "
              "the events that never got a seq (those markers name no seqs and close no hole). "
              "(A machine's own queue overflow, exception 70, is the bufferOverflow event.)",
              "shedding, quarantine, unreadable or rolled-back outbox, SAS line",
              fields={"reason": STR, "count": INT, "detail": STR, "first_seq": INT,
                      "last_seq": INT, "previous_epoch": STR, "resume_hash": STR,
                      "salvaged": INT, "salvaged_first_seq": INT, "salvaged_last_seq": INT},
              required=("reason",)),
    EventSpec("epochStarted", "system", "1.0.0",
              "Seq 1 of a new epoch (prev_hash 32 zero bytes) the outbox started with nothing "
              "missing (reason as in lossMarker; in practice database-corrupt): every seq of "
              "previous_epoch the outbox no longer has and had not marked delivered is "
              "re-sealed after this event as seqs 2, 3, ... (salvaged counts them; "
              "salvaged_first_seq..salvaged_last_seq, old seqs). When something is missing, "
              "seq 1 is a lossMarker instead.",
              "unreadable or rolled-back outbox, nothing lost",
              fields={"reason": STR, "detail": STR, "previous_epoch": STR, "salvaged": INT,
                      "salvaged_first_seq": INT, "salvaged_last_seq": INT},
              required=("reason", "previous_epoch", "salvaged")),
    EventSpec("keyRotated", "system", "1.0.1",
              "The signing key changed; signed by the old key, every later event by the new one. "
              "new_public_key: the new raw 32-byte Ed25519 public key as 64 lowercase hex "
              "digits, from which new_kid derives (always sent; 1.0.1 makes it required).",
              fields={"new_kid": STR, "new_public_key": STR},
              required=("new_kid", "new_public_key")),
    EventSpec("commandExecuted", "system", "1.0.0",
              "Audit of a command: who asked, what, the result.",
              fields={"command_id": STR, "name": STR, "requested_by": STR, "target": ANY,
                      "args": {"type": "object"}, "result": {"enum": ["ok", "rejected", "failed"]},
                      "reason": STR}, required=("command_id", "name", "requested_by", "result")),
    EventSpec("machineException", "system", "1.0.0",
              "A SAS exception with no dedicated event type (kept, never dropped).", "exc *",
              fields={"code": INT, "name": STR, "bad_data": BOOL}, required=("code",)),
    # alerts
    EventSpec("doorOpened", "alerts", "1.0.0", "A door opened (slot, drop, card cage, ...).",
              "exc 11 13 15 19 1D", fields={"door": DOOR}, required=("door",)),
    EventSpec("doorClosed", "alerts", "1.0.0", "A door closed.", "exc 12 14 16 1A 1E",
              fields={"door": DOOR}, required=("door",)),
    EventSpec("tilt", "alerts", "1.0.0", "A tilt or fault condition, with its kind.",
              "exc 20-2C, 31-3B, 40-46, 60, 61", fields={"kind": STR}, required=("kind",)),
    EventSpec("handpayPending", "alerts", "1.0.0", "A handpay is waiting for an attendant.",
              "exc 51 (+LP 1B)", fields={"amount": MONEY, "level": INT, "partial_pay": MONEY,
                                         "reset_id": INT}),
    EventSpec("handpayReset", "alerts", "1.0.0", "A handpay was reset.", "exc 52"),
    EventSpec("bufferOverflow", "alerts", "1.0.0", "The machine's exception queue overflowed.",
              "exc 70", fields={"detail": STR}),
    EventSpec("alertAcknowledged", "alerts", "1.0.0", "A staff member acknowledged an alert.",
              fields={"alert_seq": INT, "by": STR, "role": STR, "note": STR},
              required=("alert_seq", "by")),
    EventSpec("diskFull", "alerts", "1.0.0",
              "Free space under the configured floor: intake stopped (machines keep their "
              "exceptions unacknowledged) until space returns.",
              fields={"free_mb": NUM, "floor_mb": NUM, "path": STR},
              required=("free_mb", "floor_mb")),
    EventSpec("platformAhead", "alerts", "1.0.0",
              "The platform's welcome claims seqs of this epoch beyond any the gateway ever "
              "committed (its witness says so): a platform error, not a rollback. The gateway "
              "refused the session (close 4002) and retries after the rejected backoff.",
              fields={"high_water": INT, "last_seq": INT},
              required=("high_water", "last_seq")),
    EventSpec("diskSpaceRestored", "alerts", "1.0.0",
              "Free space is back above the floor; intake resumed.",
              fields={"free_mb": NUM, "floor_mb": NUM, "blocked_s": NUM, "shed": INT},
              required=("free_mb", "floor_mb")),
    # game
    EventSpec("betPlaced", "game", "1.0.0", "A game started, with its wager.", "exc 7E / RTE 7E",
              fields={"wager_credits": INT, "wager": MONEY}),
    EventSpec("gameEnded", "game", "1.0.0", "A game ended, with its win.", "exc 7F / RTE 7F",
              fields={"win_credits": INT, "win": MONEY}),
    EventSpec("gameSelected", "game", "1.0.0", "The player selected a game.", "exc 8C",
              fields={"game_number": INT}),
    # cash
    EventSpec("billAccepted", "cash", "1.0.0", "A bill was stacked.", "exc 47-50 / RTE 4F",
              fields={"amount": MONEY, "denomination_code": INT, "country_code": INT}),
    EventSpec("ticketPrinted", "cash", "1.0.0", "A cash-out ticket was printed.", "exc 3D",
              fields={"amount": MONEY, "validation_number": STR}),
    EventSpec("ticketInserted", "cash", "1.0.0", "A ticket was inserted.", "exc 67",
              fields={"amount": MONEY, "validation_number": STR}),
    EventSpec("meterSnapshot", "cash", "1.1.0",
              "A read of the machine's meters (periodic, and after exception 70, power-up and "
              "a machine replacement): coin_in, coin_out, drop, jackpot, cancelled_credits, "
              "current_credits and every meter named *_credits count credits (times "
              "denomination.minor gives minor units); every other meter is a count (games, "
              "bills_<dollars>, tickets_in_cashable, ...). digits: how many "
              "decimal digits each meter holds before it rolls over; straddle: how many of the "
              "machine's exceptions recorded just before this event were answered after the "
              "meters were read (docs/reconciliation.md). Never shed: the reconciliation "
              "rests on it.",
              "LP 0F, 1C, 1E, 6F/AF",
              fields={"meters": {"type": "object", "additionalProperties": INT},
                      "denomination": MONEY,
                      "digits": {"type": "object", "additionalProperties": INT},
                      "straddle": {"type": "integer", "minimum": 0}}, required=("meters",)),
    EventSpec("meterReconciled", "cash", "1.0.0",
              "A window between two meter reads of a machine added up: every meter with a rule "
              "moved as the events recorded in the window say (docs/reconciliation.md). "
              "from_seq/to_seq: the seqs of the window's opening and closing meterSnapshot "
              "(no epoch: see docs/reconciliation.md; null if that read got no seq); events: "
              "event type -> how many of the window's events came from the machine's "
              "exception queue; deltas: each meter's movement; unreported: meters with a "
              "rule this machine did not report; rolled_over: meters that wrapped.",
              "meterSnapshot", fields={
                  "from_seq": {"type": ["integer", "null"]}, "to_seq": {"type": ["integer", "null"]},
                  "events": {"type": "object", "additionalProperties": INT},
                  "deltas": {"type": "object", "additionalProperties": INT},
                  "straddle": INT, "unreported": {"type": "array", "items": STR},
                  "rolled_over": {"type": "array", "items": STR}},
              required=("from_seq", "to_seq", "deltas")),
    EventSpec("meterDiscrepancy", "alerts", "1.0.0",
              "A meter did not add up over a window (one event per meter): it moved by seen, "
              "the events say expected_min..expected_max (expected_min is always a number; "
              "expected_max null: no upper bound); difference is "
              "seen minus the nearest bound. cause: eventsMissing, eventsExtra, "
              "meterResetAtPowerUp, meterReset, rollover, bufferOverflow, lossMarker, "
              "identityChange; evidence: the seqs that show it (docs/reconciliation.md).",
              "meterSnapshot", fields={
                  "meter": STR, "expected_min": INT, "expected_max": {"type": ["integer", "null"]},
                  "seen": INT, "previous": INT, "difference": INT,
                  "cause": {"enum": ["eventsMissing", "eventsExtra", "meterResetAtPowerUp",
                                     "meterReset", "rollover", "bufferOverflow", "lossMarker",
                                     "identityChange"]},
                  "evidence": {"type": "array", "items": INT}, "rule": STR,
                  "from_seq": {"type": ["integer", "null"]}, "to_seq": {"type": ["integer", "null"]},
                  "events": {"type": "object", "additionalProperties": INT}},
              required=("meter", "expected_min", "expected_max", "seen", "difference", "cause",
                        "evidence")),
    EventSpec("gamingDayClosed", "cash", "1.0.0",
              "A machine's gaming day is over (its first meter read of the next day): windows "
              "read, how many reconciled and how many had a discrepancy (windows, not "
              "meterDiscrepancy events: one window may have several), each meter's total "
              "movement over the day's windows, those with a discrepancy included and a meter "
              "that went backwards excluded for that window (totals), and its value at the "
              "close (meters).",
              "meterSnapshot", fields={
                  "gaming_day": STR, "windows": INT, "reconciled": INT, "discrepancies": INT,
                  "totals": {"type": "object", "additionalProperties": INT},
                  "meters": {"type": "object", "additionalProperties": INT}},
              required=("gaming_day", "windows", "reconciled", "discrepancies", "totals")),
    EventSpec("cardReaderOffline", "system", "1.0.0",
              "The player-card reader beside this machine went away: its line broke or would "
              "not open (reason: the link error, never card data). Players at this machine "
              "cannot be rated until cardReaderOnline. Sent once per outage; reader is the "
              "reader's port (docs/cardreader.md).", "card reader: link lost or not opened",
              fields={"reader": STR, "reason": STR}, required=("reader", "reason")),
    EventSpec("cardReaderOnline", "system", "1.0.0",
              "The player-card reader beside this machine is there (its line open): at start, "
              "and after a cardReaderOffline. reader is the reader's port.",
              "card reader: link opened", fields={"reader": STR}, required=("reader",)),
    # player (card readers beside machines: drivers/cardreader, docs/cardreader.md)
    EventSpec("cardInserted", "player", "1.0.0",
              "A player card was seated in the reader beside this machine (insert readers). "
              "card_id is a keyed hash of the card number with the venue secret named by "
              "key_id, never the number.", "card reader: IN + tracks",
              fields={"card_id": CARD_ID, "key_id": KEY_ID, "medium": MEDIUM},
              required=("card_id", "key_id", "medium")),
    EventSpec("cardRemoved", "player", "1.0.0",
              "The seated card came out (reason removed), another was seated without it "
              "coming out (replaced), or the reader went away with it in (reader_offline: "
              "presence unknown from then on); inserted_for_s: how long it was in.",
              "card reader: OUT, link lost",
              fields={"card_id": CARD_ID, "key_id": KEY_ID, "medium": MEDIUM,
                      "inserted_for_s": {"type": "number", "minimum": 0},
                      "reason": {"enum": ["removed", "replaced", "reader_offline"]}},
              required=("card_id", "key_id", "reason")),
    EventSpec("cardRead", "player", "1.0.0",
              "A player card was swiped or presented (swipe and RFID readers, which cannot tell "
              "when the player leaves); card_id and key_id as in cardInserted.",
              "card reader: tracks or UID line",
              fields={"card_id": CARD_ID, "key_id": KEY_ID, "medium": MEDIUM},
              required=("card_id", "key_id", "medium")),
    EventSpec("cardBadRead", "player", "1.0.0",
              "A card could not be read (reason says why, never what was read); held_back: "
              "bad reads not sent since the last one (at most one a second per reader).",
              "card reader: %E? / ;E?, LRC, bad or truncated track",
              fields={"medium": MEDIUM, "reason": STR, "held_back": INT},
              required=("medium", "reason")),
]}


_second_prefix: tuple[int, str] = (-1, "")  # the last second formatted: most calls reuse it


def rfc3339(epoch_seconds: float) -> str:
    """UTC, millisecond precision, 'Z' suffix: 2026-11-21T05:56:12.123Z. (Formatting a datetime
    costs more than the rest of a draft; the seconds part is cached.)"""
    global _second_prefix
    second, micro = divmod(round(epoch_seconds * 1_000_000), 1_000_000)
    cached, prefix = _second_prefix
    if second != cached:
        prefix = dt.datetime.fromtimestamp(second, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _second_prefix = (second, prefix)
    return f"{prefix}{micro // 1000:03d}Z"


def new_trace_id() -> str:
    return os.urandom(8).hex()


class StoredSource(NamedTuple):
    """What the outbox keeps of an event's `SourceRef` for redelivery, driver-neutral: the event
    code (columns source_code, last_code), the driver's opaque redelivery key (last_payload; the
    gateway compares `(code, key)` for equality only, drivers/redelivery.py) and the restart
    journal's counter of the request that elicited it (last_counter)."""

    code: int
    key: RedeliveryKey
    counter: int | None


@dataclass(frozen=True, slots=True)
class Draft:
    """An event before the outbox gives it (epoch, seq) and a place in the hash chain."""

    type: str
    channel: str
    schema_version: str
    timestamp: str
    trace_id: str
    data: dict[str, Any]
    machine: dict[str, Any] | None = None
    monotonic: float = 0.0  # trio clock at capture, for latency figures; not part of the envelope
    source: StoredSource | None = field(default=None)


def _exact_money(data: dict[str, Any], currency: str) -> dict[str, Any]:
    """`x_cents: 2000` becomes `x: {"minor": 2000, "currency": "USD"}`; other keys pass through."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key.endswith("_cents") and value is not None:
            if not isinstance(value, int):
                raise TypeError(f"{key} must be an integer number of cents, not {value!r}")
            out[key[: -len("_cents")]] = {"minor": value, "currency": currency}
        else:
            out[key] = value
    return out


def spec_for(event_type: str) -> EventSpec:
    try:
        return CATALOGUE[event_type]
    except KeyError:
        raise ValueError(f"unknown event type {event_type!r}: add it to gateway.events.CATALOGUE")


def draft_from_machine(event: MachineEvent, *, currency: str, now: float) -> Draft:
    spec = spec_for(event.type)
    source = (StoredSource(event.source.code, event.source.redelivery_key,
                           event.source.poll_counter) if event.source else None)
    return Draft(
        type=spec.type, channel=spec.channel, schema_version=spec.version,
        timestamp=rfc3339(event.observed_at or now), trace_id=new_trace_id(),
        data=_exact_money(dict(event.data), currency), machine=event.machine.as_dict(),
        monotonic=event.monotonic, source=source,
    )


def system_draft(event_type: str, data: dict[str, Any] | None = None, *, now: float,
                 machine: MachineRef | None = None, monotonic: float = 0.0,
                 currency: str = "USD") -> Draft:
    spec = spec_for(event_type)
    return Draft(
        type=spec.type, channel=spec.channel, schema_version=spec.version,
        timestamp=rfc3339(now), trace_id=new_trace_id(),
        data=_exact_money(dict(data or {}), currency),
        machine=machine.as_dict() if machine else None, monotonic=monotonic,
    )
