"""Simulated player-card readers (sans-I/O): players swipe, insert, pull or present cards, and
the reader misbehaves the ways real ones do (docs/cardreader.md, "Simulator").

`SimReader.take(now)` returns the bytes the reader writes at `now`; `next_due()` says when it
next has something to write. Faults, each with `probability` per player action:
  * `misread`: the reader fails a swipe (`%E?;E?`), or a character or LRC of it is corrupted;
  * `bounce`: a swipe reader sends the swipe twice, an insert reader reports the card out and
    back in within a fraction of a second, an RFID card is held at the reader (UID repeated);
  * `garbage`: noise bytes on the line before the next frame (sentinels and line ends included);
  * `unplug`: the reader is pulled and plugged back (`unplug_requested`, for the runner:
    drivers/sim/readers.py closes its pseudo-terminal).
`ledger` counts what was done, so a test or the demo can check what the gateway reported.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import Counter
from dataclasses import dataclass, field

from drivers.cardreader.framing import KINDS, lrc_char

__all__ = ["READER_FAULTS", "SimCard", "SimReader", "rfid_line", "swipe_bytes"]

READER_FAULTS = ("misread", "bounce", "garbage", "unplug")


@dataclass(frozen=True, slots=True)
class SimCard:
    """A player's card: `number` is the PAN on the stripe, `uid` the RFID UID (hex)."""

    number: str
    name: str
    uid: str


def swipe_bytes(card: SimCard, *, lrc: bool = False, track1: bool = True,
                track2: bool = True) -> bytes:
    """Tracks 1 and 2 of `card` as a reader prints them, ended by CR LF."""
    out = b""
    for number, content, start in ((1, f"B{card.number}^{card.name}^2812101000000", "%"),
                                   (2, f"{card.number}=28121010000000", ";")):
        if (number == 1 and not track1) or (number == 2 and not track2):
            continue
        out += f"{start}{content}?".encode()
        if lrc:
            out += bytes([lrc_char(number, content)])
    return out + b"\r\n"


def rfid_line(card: SimCard) -> bytes:
    return card.uid.encode() + b"\r\n"


@dataclass(slots=True)
class SimReader:
    kind: str = "swipe"
    seed: int = 0
    rate: float = 0.2                 # player actions per second
    lrc: bool = False
    faults: frozenset[str] = frozenset()
    probability: float = 0.1
    cards: int = 40
    start: float = 0.0
    ledger: Counter[str] = field(default_factory=Counter)
    unplug_requested: bool = False
    _rng: random.Random = field(init=False)
    pool: list[SimCard] = field(init=False)   # the venue's cards this reader sees
    _queue: list[tuple[float, int, bytes]] = field(init=False, default_factory=list)
    _order: itertools.count = field(init=False, default_factory=itertools.count)
    _next_action: float = field(init=False)
    _stopped: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        unknown = set(self.faults) - set(READER_FAULTS)
        if unknown:
            raise ValueError(f"unknown reader faults: {', '.join(sorted(unknown))}")
        self._rng = random.Random(self.seed)
        self.pool = [SimCard(f"6{self._rng.randrange(10**15):015d}",
                              f"PLAYER/{n:03d}", self._rng.randbytes(7).hex().upper())
                      for n in range(self.cards)]
        self._next_action = self.start + self._gap()

    def stop(self) -> None:
        """No new player actions (a seated card is still pulled in time)."""
        self._stopped = True

    def play(self, now: float, *, first_in_s: float = 0.2) -> None:
        """(Re)start player actions, the first one `first_in_s` from `now`."""
        self._stopped = False
        self._next_action = now + first_in_s

    def next_due(self) -> float:
        due = [self._queue[0][0]] if self._queue else []
        if not self._stopped:
            due.append(self._next_action)
        return min(due, default=float("inf"))

    def take(self, now: float) -> bytes:
        """Everything due by `now`, in order."""
        if not self._stopped and now >= self._next_action:
            self._next_action = now + self._gap()
            self._act(now)
        out = b""
        while self._queue and self._queue[0][0] <= now:
            out += heapq.heappop(self._queue)[2]
        return out

    # -- players --------------------------------------------------------------------------------

    def _gap(self) -> float:
        return self._rng.expovariate(self.rate) if self.rate > 0 else float("inf")

    def _roll(self, fault: str) -> bool:
        if fault in self.faults and self._rng.random() < self.probability:
            self.ledger[fault] += 1
            return True
        return False

    def _at(self, when: float, data: bytes) -> None:
        heapq.heappush(self._queue, (when, next(self._order), data))

    def _act(self, now: float) -> None:
        if self._roll("unplug"):
            self.unplug_requested = True
            return
        if self._roll("garbage"):
            noise = bytes(self._rng.choice(b"%;?=^\r\n\x00\xffE0123456789ABC")
                          for _ in range(self._rng.randrange(1, 24)))
            self._at(now, noise)
        card = self._rng.choice(self.pool)
        if self.kind == "rfid":
            self.ledger["presented"] += 1
            self._at(now, rfid_line(card))
            if self._roll("bounce"):
                for n in range(1, self._rng.randrange(2, 6)):
                    self._at(now + 0.2 * n, rfid_line(card))
            return
        swipe = self._misread(card) if self._roll("misread") else swipe_bytes(card, lrc=self.lrc)
        if self.kind == "swipe":
            self.ledger["swiped"] += 1
            self._at(now, swipe)
            if self._roll("bounce"):
                self._at(now + 0.05, swipe)
            return
        self.ledger["inserted"] += 1
        self._at(now, b"IN\r\n" + swipe)
        if swipe != swipe_bytes(card, lrc=self.lrc):
            self._at(now + 0.5, b"OUT\r\n")  # the player pulls the card that was not read
            self._next_action = max(self._next_action, now + 0.5 + self._gap())
            return
        if self._roll("bounce"):
            self._at(now + 0.1, b"OUT\r\n")
            self._at(now + 0.3, b"IN\r\n" + swipe)
        dwell = self._rng.uniform(1.0, 4.0 / max(self.rate, 0.01))
        self._at(now + dwell, b"OUT\r\n")
        self.ledger["removed"] += 1
        # The next player sits down only after this one left.
        self._next_action = max(self._next_action, now + dwell + self._gap())

    def _misread(self, card: SimCard) -> bytes:
        self.ledger["misread_swipes"] += 1
        good = swipe_bytes(card, lrc=self.lrc)
        how = self._rng.randrange(3)
        if how == 0:
            return b"%E?;E?\r\n"
        if how == 1:  # track 1 not read at all, a character of track 2 damaged
            only2 = swipe_bytes(card, lrc=self.lrc, track1=False)
            return only2[:4] + b"\x7f" + only2[5:]
        return good[: good.index(b"?")] + b"\r\n"  # track 1 cut off, track 2 lost
