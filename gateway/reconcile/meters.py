"""Driver-neutral meter names and what each recorded event moves them by.

The names are the ones `meterSnapshot` carries (docs/events.md): a driver maps its protocol's
meters onto them (SAS: drivers/sas/meters.py). Each rule is tied to the meter's definition in
Table C-7 (sas-reference.md section 5) -- the SAS meter code is named in the rule's `source` for
the reader, never used here. An event moves a meter by an interval [lo, hi] (hi None: no upper
bound), because some events do not carry the amount: a bare exception 7E out of RTE mode says a
game started, not what it cost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from drivers.model import MeterName

__all__ = ["BILL_DOLLARS", "NEUTRAL", "RULES", "Interval", "Rule", "contributions"]

Interval = tuple[int, int | None]
UNBOUNDED: Interval = (0, None)

# Bill meters the reconciler knows: bills_<dollars> counts, by their Table C-7 code (40-57 run
# $1 ... $1 000 000; $25 sits between $20 and $50).
_BILL_CODES = {1: 0x40, 2: 0x41, 5: 0x42, 10: 0x43, 20: 0x44, 50: 0x46, 100: 0x47}
BILL_DOLLARS = tuple(_BILL_CODES)


@dataclass(frozen=True, slots=True)
class Rule:
    """`exact`: the meter must move by what the events say (within their intervals); otherwise
    only a lower bound is checked (the meter also counts things no event reports)."""

    meter: str
    source: str
    exact: bool = True


RULES: dict[str, Rule] = {r.meter: r for r in (
    Rule("games_played", "meter 05 games played <-> game started (exc 7E)"),
    Rule("games_won", "meter 06 games won <-> game ended (exc 7F) with a win > 0 (RTE)"),
    Rule("games_lost", "meter 07 games lost <-> game ended (exc 7F) with no win (RTE)"),
    Rule("coin_in", "meter 00 coin in (credits) <-> sum of wagers of RTE 7E; >= 1 a game "
                    "without RTE"),
    Rule("coin_out", "meter 01 coin out (credits) <-> sum of wins of RTE 7F plus machine-paid "
                     "bonus (exc 7C)"),
    Rule("jackpot", "meter 02 jackpot (attendant-paid) <-> moves only with a handpay (exc 51)"),
    Rule("cancelled_credits", "meter 04 cancelled credits <-> moves only with a handpay "
                              "(exc 51) or a ticket printed (exc 3D)"),
    Rule("drop", "meter 24 total drop (credits) >= bills stacked (exc 47-50 / RTE 4F); coins "
                 "and transfers count too", exact=False),
    *(Rule(f"bills_{d}", f"meter {code:02X} ${d} bills accepted <-> bill accepted "
                         f"(exc 47-50 / RTE 4F) of ${d}")
      for d, code in _BILL_CODES.items()),
    Rule("handpaid_cancelled_credits", "meter 03 hand-paid cancelled credits <-> moves only "
                                       "with a handpay (exc 51)"),
    *(Rule(f"tickets_out_{kind}", f"meter {code} SAS {kind} tickets out (count) <-> at most "
                                  "one a ticket printed (exc 3D) or handpay receipt (exc 3E)")
      for kind, code in (("cashable", "12"), ("restricted", "14"))),
    Rule("ticket_out_credits", "meter 16 total ticket out (credits) <-> moves only with a "
                               "ticket printed (exc 3D) or handpay receipt (exc 3E)"),
    *(Rule(f"tickets_in_{kind}", f"meter {code} SAS {kind} tickets in (count) <-> at most one "
                                 "a ticket inserted (exc 67)")
      for kind, code in (("cashable", "11"), ("restricted", "13"))),
    Rule("ticket_in_credits", "meter 15 total ticket in (credits) <-> moves only with a "
                              "ticket inserted (exc 67)"),
    Rule("transfers_to_machine_credits", "meter 17 electronic transfers to the machine "
                                         "(credits) <-> moves only with an AFT transfer "
                                         "complete (exc 69)"),
    Rule("transfers_to_host_credits", "meter 18 electronic transfers to the host (credits) "
                                      "<-> moves only with an AFT transfer complete (exc 69)"),
)}


# The same meters under the driver contract's names (drivers/model.py MeterName, what
# `read_meters` answers). Bills by denomination have no MeterName yet: `meterSnapshot` carries
# them as bills_<dollars>.
NEUTRAL: dict[str, MeterName] = {
    "coin_in": MeterName.COIN_IN_CREDITS, "coin_out": MeterName.COIN_OUT_CREDITS,
    "jackpot": MeterName.JACKPOT_CREDITS, "cancelled_credits": MeterName.CANCELLED_CREDITS,
    "drop": MeterName.DROP_CREDITS, "games_played": MeterName.GAMES_PLAYED,
    "games_won": MeterName.GAMES_WON, "games_lost": MeterName.GAMES_LOST,
    **{m: MeterName(m) for m in (
        "handpaid_cancelled_credits", "tickets_in_cashable", "tickets_in_restricted",
        "tickets_out_cashable", "tickets_out_restricted", "ticket_in_credits",
        "ticket_out_credits", "transfers_to_machine_credits", "transfers_to_host_credits")},
}


def _bill(data: Mapping[str, Any], denom_cents: int) -> dict[str, Interval]:
    amount = data.get("amount_cents")
    if amount is None:  # denomination not reported: any bill meter may have moved by one
        return {**{f"bills_{d}": (0, 1) for d in BILL_DOLLARS}, "drop": UNBOUNDED}
    out: dict[str, Interval] = {"drop": (amount // denom_cents, None)}
    if amount % 100 == 0 and amount // 100 in BILL_DOLLARS:
        out[f"bills_{amount // 100}"] = (1, 1)
    return out


def contributions(event_type: str, data: Mapping[str, Any],
                  denom_cents: int) -> dict[str, Interval]:
    """How `event_type` moves each meter. Amounts in credits: a driver reports money in
    `*_cents` and meters in credits of the accounting denomination (`denom_cents`)."""
    match event_type:
        case "betPlaced":
            wager = data.get("wager_credits")
            return {"games_played": (1, 1), "coin_in": (wager, wager) if wager is not None
                    else (1, None)}
        case "gameEnded":
            win = data.get("win_credits")
            if win is None:
                return {"coin_out": UNBOUNDED, "games_won": (0, 1), "games_lost": (0, 1)}
            return {"coin_out": (win, win), "games_won": (int(win > 0),) * 2,
                    "games_lost": (int(win == 0),) * 2}
        case "billAccepted":
            return _bill(data, denom_cents)
        case "handpayPending":
            return {"jackpot": UNBOUNDED, "cancelled_credits": UNBOUNDED,
                    "handpaid_cancelled_credits": UNBOUNDED}
        case "ticketPrinted":
            return {"cancelled_credits": UNBOUNDED, **_TICKET_OUT}
        case "ticketInserted":
            return {"ticket_in_credits": UNBOUNDED, "tickets_in_cashable": (0, 1),
                    "tickets_in_restricted": (0, 1)}
        case "machineException" if data.get("code") == 0x7C:  # legacy bonus, machine-paid
            return {"coin_out": UNBOUNDED}
        case "machineException" if data.get("code") == 0x3E:  # handpay validated: a receipt
            return dict(_TICKET_OUT)
        case "machineException" if data.get("code") == 0x69:  # AFT transfer complete
            return {"transfers_to_machine_credits": UNBOUNDED,
                    "transfers_to_host_credits": UNBOUNDED, "cancelled_credits": UNBOUNDED}
    return {}


# A ticket printed is one ticket out, cashable or restricted (the exception does not say which:
# each count may move by one), of an amount the exception does not carry.
_TICKET_OUT: dict[str, Interval] = {"ticket_out_credits": UNBOUNDED,
                                    "tickets_out_cashable": (0, 1),
                                    "tickets_out_restricted": (0, 1)}
