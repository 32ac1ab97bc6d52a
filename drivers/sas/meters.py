"""SAS meters the host reads for reconciliation: code, driver-neutral name, BCD width, unit.

The gateway's reconciler (gateway/reconcile/) never sees a SAS meter code: the host reports each
meter under the name given here, with how many decimal digits it holds before it rolls over
(`digits`), so rollover is computed from the machine's own width, not guessed. Codes and units
are Table C-7 (sas-reference.md section 5); widths are its "minimum size" (4 BCD bytes = 8
digits for credits and counts, 5 bytes for cents) -- [unsure] for individual codes, as the
reference says; a machine that reports a wider meter (LP 6F size byte) shows values above the
width, and the reconciler widens it (gateway/reconcile/core.py).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BILL_METER_CODES", "LEGACY_DIGITS", "METERS", "READ_CHUNKS", "TRANSFER_METER_CODES",
           "SasMeter", "digits_of"]


@dataclass(frozen=True, slots=True)
class SasMeter:
    code: int
    name: str
    unit: str  # "credits" (of the accounting denomination), "count" or "cents"
    digits: int = 8


# Bills accepted per denomination: codes 40-57 run $1 ... $1 000 000 (Table C-7, Aristocrat
# SASMeterId.cs); the host reads the ones a US floor stacks. Others are not reconciled
# (docs/reconciliation.md, "What each machine can reconcile").
BILL_METER_CODES: dict[int, int] = {0x40: 1, 0x41: 2, 0x42: 5, 0x43: 10, 0x44: 20, 0x46: 50,
                                    0x47: 100}

# Electronic transfers (AFT, and legacy EFT) to and from the machine, credits: a machine without
# AFT need not keep them (the simulator's leaves them out of its LP 6F answers).
TRANSFER_METER_CODES: dict[int, str] = {0x17: "transfers_to_machine_credits",
                                        0x18: "transfers_to_host_credits"}

METERS: dict[int, SasMeter] = {m.code: m for m in (
    SasMeter(0x00, "coin_in", "credits"),
    SasMeter(0x01, "coin_out", "credits"),
    SasMeter(0x02, "jackpot", "credits"),
    SasMeter(0x04, "cancelled_credits", "credits"),
    SasMeter(0x05, "games_played", "count"),
    SasMeter(0x06, "games_won", "count"),
    SasMeter(0x07, "games_lost", "count"),
    SasMeter(0x0C, "current_credits", "credits"),
    SasMeter(0x24, "drop", "credits"),
    *(SasMeter(code, f"bills_{dollars}", "count") for code, dollars in BILL_METER_CODES.items()),
    # Handpays, tickets and transfers (Table C-7 03, 11-18): read after the ones above, so a
    # machine's first two polls of a read stay what they were.
    SasMeter(0x03, "handpaid_cancelled_credits", "credits"),
    SasMeter(0x11, "tickets_in_cashable", "count"),
    SasMeter(0x12, "tickets_out_cashable", "count"),
    SasMeter(0x13, "tickets_in_restricted", "count"),
    SasMeter(0x14, "tickets_out_restricted", "count"),
    SasMeter(0x15, "ticket_in_credits", "credits"),
    SasMeter(0x16, "ticket_out_credits", "credits"),
    *(SasMeter(code, name, "credits") for code, name in TRANSFER_METER_CODES.items()),
)}

# LP 6F/AF take at most 10 codes a poll (reference 6): a read is these polls, in this order.
_CODES = tuple(METERS)
READ_CHUNKS: tuple[tuple[int, ...], ...] = tuple(_CODES[i:i + 10] for i in range(0, len(_CODES), 10))

# LP 0F, 1C and 1E answer 4 BCD bytes a meter; LP 18's two counts are 2 bytes (reference 6).
LEGACY_DIGITS: dict[str, int] = {"games_since_power_up": 4, "games_since_door_closed": 4}


def digits_of(name: str) -> int:
    """Decimal digits of the meter `name` as the host reads it (8 unless known otherwise)."""
    for meter in METERS.values():
        if meter.name == name:
            return meter.digits
    return LEGACY_DIGITS.get(name, 8)
