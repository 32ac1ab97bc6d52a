"""The card reader core: frames in, player events out (sans-I/O: no trio, no clock, no files).

Feed it bytes with `receive(data, now)`, call `handle_timer(now)` at `get_timer()`, take events
with `next_event()`. What it decides (docs/cardreader.md, "Events"):

* A swipe is the tracks up to a line end (or `swipe_gap_s` of silence). One track with a card
  number is enough (readers often miss the other); two that disagree, or none, is a bad read.
* A swipe reader or an RFID reader gives `cardRead`; the same card again within `debounce_s`
  is a bounce (a reader repeating itself, an RFID card held at the reader), counted, not sent.
* An insert reader gives `cardInserted` when the tracks of a seated card arrive and
  `cardRemoved` on `OUT`, held `debounce_s`: the same card back within it was a bounce (a card
  badly seated), and nothing is sent for either.
* Bad reads (`%E?`, LRC mismatch, a character outside the track's alphabet, a truncated
  track) give `cardBadRead`, at most one per `bad_read_hold_s` (a reader at the wrong speed
  reads nothing but garbage); the next one says how many were held back.
* Noise between frames is counted, never an event.
* The reader itself: `cardReaderOnline` when its line opens, `cardReaderOffline` (with the link
  error) when it breaks or will not open, each only on a change (the board's "card reader
  offline" alert: players at that machine cannot be rated).

The card number exists here only between the framer and `VenueSecret.card_id`: events, figures
and reasons carry the keyed hash, never the number (nor the name on track 1).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from drivers.cardreader.cardid import VenueSecret
from drivers.cardreader.framing import (
    KINDS,
    BadTrack,
    EndOfLine,
    Frame,
    Framer,
    Noise,
    Status,
    Track,
    Uid,
)

__all__ = ["CardReaderCore", "PlayerEvent", "ReaderSettings", "card_number"]

_PAN_DIGITS = range(8, 20)  # ISO/IEC 7812: a primary account number is 8-19 digits


@dataclass(frozen=True, slots=True)
class ReaderSettings:
    """`kind`: swipe, insert or rfid; `lrc`: the reader sends an LRC after each track."""

    kind: str = "swipe"
    lrc: bool = False
    swipe_gap_s: float = 0.25
    debounce_s: float = 2.0
    bad_read_hold_s: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if not 0.01 <= self.swipe_gap_s <= 5:
            raise ValueError("swipe_gap_s must be between 0.01 and 5 seconds")
        if not 0 <= self.debounce_s <= 60 or not 0 <= self.bad_read_hold_s <= 60:
            raise ValueError("debounce_s and bad_read_hold_s must be between 0 and 60 seconds")


@dataclass(frozen=True, slots=True)
class PlayerEvent:
    """A catalogue event of the `player` channel; `at` is the core's clock when decided."""

    type: str
    data: Mapping[str, Any] = field(default_factory=dict)
    at: float = 0.0


def card_number(track: Track) -> str | None:
    """The primary account number on a track, or None (track 1 format B: `B<pan>^name^...`;
    track 2: `<pan>=...`)."""
    if track.number == 1:
        if not track.content.startswith("B") or "^" not in track.content:
            return None
        pan = track.content[1:].split("^", 1)[0]
    else:
        pan = track.content.split("=", 1)[0]
    return pan if pan.isdigit() and pan.isascii() and len(pan) in _PAN_DIGITS else None


@dataclass(frozen=True, slots=True)
class _Inserted:
    card_id: str
    since: float


class CardReaderCore:
    def __init__(self, settings: ReaderSettings, secret: VenueSecret) -> None:
        self.settings = settings
        self._secret = secret
        self._key_id = secret.key_id
        self._framer = Framer(settings.kind, lrc=settings.lrc)
        self._medium = "rfid" if settings.kind == "rfid" else "magstripe"
        self._tracks: list[Track | BadTrack] = []
        self._gap_deadline: float | None = None
        self._last_read: tuple[str, float] | None = None   # (card_id, last seen)
        self._inserted: _Inserted | None = None
        self._removal_due: float | None = None              # OUT seen, held for debounce_s
        self._bad_read_at: float | None = None
        self._bad_held = 0
        self._events: deque[PlayerEvent] = deque()
        self.online = False
        self.offline_reason: str | None = None   # the link error (names the device, not a card)
        self._said: bool | None = None               # online/offline last reported (None: neither)
        self.counts = {"reads": 0, "bad_reads": 0, "bad_reads_held": 0, "bounces": 0,
                       "noise_bytes": 0}

    # -- inputs ----------------------------------------------------------------------------------

    def link_up(self, now: float) -> None:
        """The reader's line is open: `cardReaderOnline` unless that was the last thing said
        (so at start too: a board rebuilt from the outbox closes an outage from before)."""
        self.online = True
        self.offline_reason = None
        if self._said is not True:
            self._said = True
            self._emit("cardReaderOnline", now)

    def receive(self, data: bytes, now: float) -> None:
        for frame in self._framer.feed(data):
            self._frame(frame, now)
        self._gap_deadline = now + self.settings.swipe_gap_s if (
            self._tracks or self._framer.busy) else None

    def get_timer(self) -> float | None:
        due = [t for t in (self._gap_deadline, self._removal_due) if t is not None]
        return min(due, default=None)

    def handle_timer(self, now: float) -> None:
        if self._gap_deadline is not None and now >= self._gap_deadline:
            self._gap_deadline = None
            for frame in self._framer.flush():
                self._frame(frame, now)
            self._end_of_swipe(now)
        if self._removal_due is not None and now >= self._removal_due:
            self._removal_due = None
            self._removed(now, "removed")

    def link_down(self, now: float, reason: str) -> None:
        """The reader is gone (or would not open): a half-read frame is dropped (not a player's
        bad read), a seated card is reported removed with reason reader_offline (nobody can tell
        any more), then `cardReaderOffline` with the link error, once per outage."""
        self.online = False
        self.offline_reason = reason
        self._framer = Framer(self.settings.kind, lrc=self.settings.lrc)
        self._tracks.clear()
        self._gap_deadline = self._removal_due = None
        if self._inserted is not None:
            self._removed(now, "reader_offline")
        if self._said is not False:  # once per outage, however often reopening fails
            self._said = False
            self._emit("cardReaderOffline", now, reason=reason)

    def next_event(self) -> PlayerEvent | None:
        return self._events.popleft() if self._events else None

    def statistics(self) -> dict[str, Any]:
        # `online` as for a machine, counted apart from machines (diag, /health, metrics).
        return {"kind": self.settings.kind, "online": self.online,
                "offline_reason": self.offline_reason,
                "card_present": self._inserted is not None, **self.counts}

    # -- decisions -------------------------------------------------------------------------------

    def _frame(self, frame: Frame, now: float) -> None:
        match frame:
            case Track() | BadTrack():
                self._tracks.append(frame)
            case EndOfLine():
                self._end_of_swipe(now)
            case Uid(uid):
                self._card(self._secret.card_id("rfid", uid), now)
            case Status("IN"):
                pass  # the tracks of the seated card follow; they decide
            case Status(_):
                if self._inserted is not None and self._removal_due is None:
                    self._removal_due = now + self.settings.debounce_s
                    if self.settings.debounce_s == 0:
                        self.handle_timer(now)
            case Noise(count):
                self.counts["noise_bytes"] += count

    def _end_of_swipe(self, now: float) -> None:
        tracks, self._tracks = self._tracks, []
        if not tracks:
            return
        numbers = {n for t in tracks if isinstance(t, Track) and (n := card_number(t))}
        if len(numbers) == 1:
            self._card(self._secret.card_id("magstripe", numbers.pop()), now)
            return
        if len(numbers) > 1:
            reason = "tracks 1 and 2 carry different card numbers"
        elif any(isinstance(t, Track) and t.error for t in tracks):
            reason = "the reader reported a read error"
        elif bad := [t for t in tracks if isinstance(t, BadTrack)]:
            reason = f"track {bad[0].number}: {bad[0].reason}"
        else:
            reason = "no card number on the stripe"
        self._bad_read(reason, now)

    def _card(self, card_id: str, now: float) -> None:
        if self.settings.kind == "insert":
            self._seated(card_id, now)
            return
        last = self._last_read
        self._last_read = (card_id, now)
        if last is not None and last[0] == card_id and now - last[1] < self.settings.debounce_s:
            self.counts["bounces"] += 1
            return
        self.counts["reads"] += 1
        self._emit("cardRead", now, card_id=card_id, key_id=self._key_id, medium=self._medium)

    def _seated(self, card_id: str, now: float) -> None:
        current = self._inserted
        if current is not None and current.card_id == card_id:
            self._removal_due = None  # out and back in within debounce_s, or a repeated read
            self.counts["bounces"] += 1
            return
        if current is not None:
            pulled, self._removal_due = self._removal_due is not None, None
            self._removed(now, "removed" if pulled else "replaced")
        self._inserted = _Inserted(card_id, now)
        self.counts["reads"] += 1
        self._emit("cardInserted", now, card_id=card_id, key_id=self._key_id,
                   medium=self._medium)

    def _removed(self, now: float, reason: str) -> None:
        current, self._inserted = self._inserted, None
        if current is None:
            return
        self._emit("cardRemoved", now, card_id=current.card_id, key_id=self._key_id,
                   medium=self._medium, inserted_for_s=round(max(0.0, now - current.since), 3),
                   reason=reason)

    def _bad_read(self, reason: str, now: float) -> None:
        self.counts["bad_reads"] += 1
        hold = self.settings.bad_read_hold_s
        if self._bad_read_at is not None and now - self._bad_read_at < hold:
            self._bad_held += 1
            self.counts["bad_reads_held"] += 1
            return
        self._bad_read_at = now
        data: dict[str, Any] = {"medium": self._medium, "reason": reason}
        if self._bad_held:
            data["held_back"], self._bad_held = self._bad_held, 0
        self._emit("cardBadRead", now, **data)

    def _emit(self, kind: str, now: float, **data: Any) -> None:
        self._events.append(PlayerEvent(kind, data, now))
