"""requestMeters data: money as {minor, currency}, every other meter a count with its unit."""

from __future__ import annotations

from gateway.meters import meters_result


def test_credit_meters_become_money_at_the_denomination() -> None:
    data = meters_result({"drop": 500, "coin_in": 1200, "games_played": 42, "power_resets": 3,
                          "bills_20": 4, "bills_total_dollars": 80}, 25, "EUR")
    assert data == {
        "denomination": {"minor": 25, "currency": "EUR"},
        "money": {"drop": {"minor": 12500, "currency": "EUR"},
                  "coin_in": {"minor": 30000, "currency": "EUR"},
                  "bills_total": {"minor": 8000, "currency": "EUR"}},
        "counts": {"games_played": {"value": 42, "unit": "games"},
                   "power_resets": {"value": 3, "unit": "resets"},
                   "bills_20": {"value": 4, "unit": "bills"}},
    }


def test_without_a_denomination_credits_are_never_guessed_into_money() -> None:
    for denomination in (None, 0, True):
        data = meters_result({"drop": 500, "odd_meter": 1}, denomination, "USD")
        assert data == {"money": {}, "counts": {"drop": {"value": 500, "unit": "credits"},
                                                "odd_meter": {"value": 1, "unit": "count"}}}
