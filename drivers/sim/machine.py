"""A seeded play model: what a player and the floor do to a machine, as SAS exceptions.

Sans-I/O: `advance(now)` returns the exceptions that became due; `due()` says when the next one
will. Data is always the full RTE payload (reference section 4); the machine sends only the code
byte when RTE is off.
"""

from __future__ import annotations

import random

from drivers.sas import bcd
from drivers.sas.codes import Exc

__all__ = ["FLOOR_RATES_PER_HOUR", "PROFILES", "PlayModel"]

PROFILES = ("storm", "floor")
# The "floor" profile: what one machine raises per hour of operation, drawn as Poisson processes
# of their own (independent of the play rate). These are ASSUMPTIONS, order-of-magnitude figures
# from slot-floor operating practice, not measurements: a door is opened for a drop, a fill or a
# service call a few times a day; bill jams and printer/reel/battery faults are each roughly one
# per machine per day or two of play; a handpay (a jackpot over the tax-reporting threshold, or a
# cancelled credit) about one in ten hours on a busy machine. A venue's own event history (the
# outbox) is the source to replace them with. The "storm" profile (the default, for load tests)
# makes doors 12 % of events, tilts 4 % and handpays 3 %: ~290 tilts an hour at 2 events/s.
FLOOR_RATES_PER_HOUR = {"door": 0.2, "bill_jam": 0.04, "tilt": 0.04, "handpay": 0.1}

_DOORS = (0x11, 0x13, 0x15, 0x19, 0x1D)
_TILTS = (0x20, 0x28, 0x2B, 0x60, 0x61, 0x3B)
_NON_RTE_BILLS = {100: 0x47, 500: 0x48, 1000: 0x49, 2000: 0x4A}
_BILL_CODE = {100: 0x00, 500: 0x02, 1000: 0x03, 2000: 0x04}
_BILL_CENTS_BY_CODE = {code: cents for cents, code in _NON_RTE_BILLS.items()}
_BILL_CENTS_BY_DENOM = {code: cents for cents, code in _BILL_CODE.items()}


class PlayModel:
    """Games with wager and win, bills, doors, and the occasional handpay or tilt."""

    def __init__(self, seed: int, events_per_second: float, *, denom_cents: int = 1,
                 start: float = 0.0, profile: str = "storm",
                 cashout_credits: int | None = None) -> None:
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {', '.join(PROFILES)}, not {profile!r}")
        self.profile = profile
        self._rng = random.Random(seed)
        self.rate = events_per_second
        self.denom_cents = denom_cents
        self.credits = 0
        self.coin_in = 0
        self.coin_out = 0
        self.games_played = 0
        self.games_won = 0
        self.games_lost = 0
        self.drop_credits = 0
        self.jackpot = 0
        # Ticket out (exception 3D): the player cashes out once the credit meter reaches
        # `cashout_credits` (None: never). Decided without the random stream, so a seeded run
        # without it plays as before.
        self.cashout_credits = cashout_credits
        self.cancelled_credits = 0
        self.ticket_out_credits = 0
        self.tickets_out = 0
        self.bill_counts: dict[int, int] = {}
        # (bill code of the LP 48 table, lifetime count) of the last bill, for LP 48.
        self.last_bill: tuple[int, int] | None = None
        # Amount of the handpay pending (LP 1B), cents; 0 when none.
        self.handpay_cents = 0
        self.playing = events_per_second > 0
        self._next = start + self._gap() if self.playing else None

    def _gap(self) -> float:
        return self._rng.expovariate(self.rate)

    def stop(self) -> None:
        self.playing = False
        self._next = None

    def due(self) -> float | None:
        return self._next

    def advance(self, now: float, *, rte: bool) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        while self._next is not None and self._next <= now:
            out += self._one(rte)
            if self.cashout_credits is not None and self.credits >= self.cashout_credits:
                out.append(self._cashout())
            self._next += self._gap()
        return out

    def _cashout(self) -> tuple[int, bytes]:
        """A cash-out ticket for the whole credit meter: meters 04 (cancelled credits), 12
        (cashable tickets out) and 16 (ticket out, credits) move with exception 3D."""
        self.cancelled_credits += self.credits
        self.ticket_out_credits += self.credits
        self.tickets_out += 1
        self.credits = 0
        return Exc.CASHOUT_TICKET_PRINTED, b""

    def _one(self, rte: bool) -> list[tuple[int, bytes]]:
        roll = self._rng.random()
        if self.profile == "floor":
            return self._floor(roll, rte)
        if roll < 0.55:
            return self._game()
        if roll < 0.75 or self.credits < 5:
            return [self._bill(rte)]
        if roll < 0.87:
            door = self._rng.choice(_DOORS)
            return [(door, b""), (door + 1, b"")]
        if roll < 0.93:
            return [(Exc.GAME_SELECTED, bcd.encode(self._rng.randint(1, 20), 2))]
        if roll < 0.97:
            return [(self._rng.choice(_TILTS), b"")]
        return self._handpay()

    def _handpay(self) -> list[tuple[int, bytes]]:
        """A jackpot paid by an attendant: meter 02 (jackpot, credits) moves with exception 51."""
        self.handpay_cents = 120_000
        self.jackpot += self.handpay_cents // self.denom_cents
        return [(Exc.HANDPAY_PENDING, b""), (Exc.HANDPAY_RESET, b"")]

    def _floor(self, roll: float, rte: bool) -> list[tuple[int, bytes]]:
        """Play (games, bills, game selection) at the play rate, and each kind of alert with
        its chance per event set so that it comes FLOOR_RATES_PER_HOUR times an hour."""
        for kind, per_hour in FLOOR_RATES_PER_HOUR.items():
            chance = per_hour / 3600 / self.rate
            if roll < chance:
                if kind == "door":
                    door = self._rng.choice(_DOORS)
                    return [(door, b""), (door + 1, b"")]
                if kind == "bill_jam":
                    return [(Exc.BILL_JAM, b"")]
                if kind == "tilt":
                    return [(self._rng.choice(_TILTS), b"")]
                return self._handpay()
            roll -= chance
        if roll < 0.6 or (self.credits >= 5 and roll < 0.8):
            return self._game()
        if roll < 0.95 or self.credits < 5:
            return [self._bill(rte)]
        return [(Exc.GAME_SELECTED, bcd.encode(self._rng.randint(1, 20), 2))]

    def meters(self) -> dict[str, int]:
        """Lifetime meters by the names of messages.METER_NAMES (credits / counts)."""
        wrap = 10**8
        return {"coin_in": self.coin_in, "coin_out": self.coin_out % wrap,
                "games_played": self.games_played % wrap, "games_won": self.games_won % wrap,
                "games_lost": self.games_lost % wrap,
                "drop": self.drop_credits % wrap, "jackpot": self.jackpot % wrap,
                "cancelled_credits": self.cancelled_credits % wrap,
                "ticket_out_credits": self.ticket_out_credits % wrap,
                "tickets_out_cashable": self.tickets_out % wrap,
                "current_credits": self.credits % wrap,
                **{f"bills_{c // 100}": n % wrap for c, n in self.bill_counts.items()}}

    def _game(self) -> list[tuple[int, bytes]]:
        wager = min(self.credits, self._rng.choice((1, 2, 3, 5)))
        if wager <= 0:
            return []
        self.credits -= wager
        self.coin_in = (self.coin_in + wager) % 10**8
        win = self._rng.choice((0, 0, 0, wager, 2 * wager, 10 * wager))
        self.credits += win
        self.coin_out += win
        self.games_played += 1
        self.games_won += win > 0
        self.games_lost += win == 0
        started = bcd.encode(wager, 2) + bcd.encode(self.coin_in, 4) + b"\x00\x00"
        return [(Exc.GAME_STARTED, started), (Exc.GAME_ENDED, bcd.encode(win, 4))]

    def repeat(self, code: int, data: bytes) -> None:
        """The machine reports exception `code` once more (a genuine repeat, the `duplicate`
        fault): its meters count it again, as a real machine's would."""
        if code == Exc.GAME_STARTED:
            wager = bcd.decode(data[0:2])
            # The credits may have gone out on a ticket since: the credit meter never goes
            # below zero (the accounting meters count the game all the same).
            self.credits = max(0, self.credits - wager)
            self.coin_in = (self.coin_in + wager) % 10**8
            self.games_played += 1
        elif code == Exc.GAME_ENDED:
            win = bcd.decode(data)
            self.credits += win
            self.coin_out += win
            self.games_won += win > 0
            self.games_lost += win == 0
        elif code == Exc.HANDPAY_PENDING:
            self.jackpot += self.handpay_cents // self.denom_cents
        elif code == Exc.CASHOUT_TICKET_PRINTED:
            self.tickets_out += 1  # a second ticket, for the credits left: none
        elif cents := _BILL_CENTS_BY_CODE.get(code) or (
                code == Exc.BILL_ACCEPTED and _BILL_CENTS_BY_DENOM.get(data[1])):
            self.credits += cents // self.denom_cents
            self.bill_counts[cents] = self.bill_counts.get(cents, 0) + 1
            self.drop_credits += cents // self.denom_cents

    def _bill(self, rte: bool) -> tuple[int, bytes]:
        cents = self._rng.choice(tuple(_BILL_CODE))
        self.credits += cents // self.denom_cents
        count = self.bill_counts[cents] = self.bill_counts.get(cents, 0) + 1
        self.drop_credits += cents // self.denom_cents
        self.last_bill = (_BILL_CODE[cents], count)
        if not rte:
            return _NON_RTE_BILLS[cents], b""
        return Exc.BILL_ACCEPTED, bcd.encode(1, 1) + bcd.encode(_BILL_CODE[cents], 1) + bcd.encode(
            count % 10**8, 4)
