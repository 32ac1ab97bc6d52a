"""The `requestMeters` answer: SAS meters with their units, money exact (pure, no I/O).

A machine counts money meters in *credits*; a credit is worth the machine's denomination. The
platform gets money as {minor, currency} like everywhere else, and every other meter as a count
with its unit, so no number travels without saying what it counts:

    {"denomination": {"minor": 1, "currency": "USD"},
     "money":  {"coin_in": {"minor": 5000, "currency": "USD"}, ...},
     "counts": {"games_played": {"value": 42, "unit": "games"}, ...}}

Without a known denomination, money meters go to `counts` with unit "credits" (never guessed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["COUNT_UNITS", "CREDIT_METERS", "meters_result"]

# Meters kept in credits by the machine (SAS meters 00-04 0C 15-18 24; LP 0F 19 1A 1C).
CREDIT_METERS = frozenset({"coin_in", "coin_out", "drop", "jackpot", "cancelled_credits",
                           "current_credits", "handpaid_cancelled_credits", "ticket_in_credits",
                           "ticket_out_credits", "transfers_to_machine_credits",
                           "transfers_to_host_credits"})
# Meters in whole currency units (LP 20: total bills accepted, in dollars).
WHOLE_UNIT_METERS = {"bills_total_dollars": "bills_total"}
COUNT_UNITS = {
    "games_played": "games", "games_won": "games", "games_lost": "games",
    "games_since_power_up": "games", "games_since_door_closed": "games",
    "slot_door_opened_count": "openings", "power_resets": "resets",
    **{f"bills_{n}": "bills" for n in (1, 2, 5, 10, 20, 50, 100)},
    **{f"tickets_{way}_{kind}": "tickets" for way in ("in", "out")
       for kind in ("cashable", "restricted")},
}


def _money(minor: int, currency: str) -> dict[str, Any]:
    return {"minor": minor, "currency": currency}


def meters_result(meters: Mapping[str, int], denomination_cents: int | None,
                  currency: str) -> dict[str, Any]:
    """The `data` of a successful requestMeters answer (see the module docstring)."""
    money: dict[str, Any] = {}
    counts: dict[str, Any] = {}
    denomination = denomination_cents if isinstance(denomination_cents, int) \
        and not isinstance(denomination_cents, bool) and denomination_cents > 0 else None
    for name, value in sorted(meters.items()):
        if name in CREDIT_METERS and denomination is not None:
            money[name] = _money(value * denomination, currency)
        elif name in CREDIT_METERS:
            counts[name] = {"value": value, "unit": "credits"}
        elif name in WHOLE_UNIT_METERS:
            money[WHOLE_UNIT_METERS[name]] = _money(value * 100, currency)
        else:
            counts[name] = {"value": value, "unit": COUNT_UNITS.get(name, "count")}
    out: dict[str, Any] = {"money": money, "counts": counts}
    if denomination is not None:
        out["denomination"] = _money(denomination, currency)
    return out
