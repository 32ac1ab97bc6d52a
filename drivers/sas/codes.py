"""Wire codes: general-poll exception codes (reference section 3), long polls (section 6),
denomination codes (section 5)."""

from __future__ import annotations

import enum

__all__ = ["BILL_CODE_CENTS", "DENOMINATION_CENTS", "METER_CODES", "RTE_DATA_LENGTH", "Exc", "LongPoll"]


class Exc(enum.IntEnum):
    NO_ACTIVITY = 0x00
    SLOT_DOOR_OPENED = 0x11
    SLOT_DOOR_CLOSED = 0x12
    DROP_DOOR_OPENED = 0x13
    DROP_DOOR_CLOSED = 0x14
    CARD_CAGE_OPENED = 0x15
    CARD_CAGE_CLOSED = 0x16
    AC_POWER_APPLIED = 0x17
    AC_POWER_LOST = 0x18
    CASHBOX_DOOR_OPENED = 0x19
    CASHBOX_DOOR_CLOSED = 0x1A
    CASHBOX_REMOVED = 0x1B
    CASHBOX_INSTALLED = 0x1C
    BELLY_DOOR_OPENED = 0x1D
    BELLY_DOOR_CLOSED = 0x1E
    NO_ACTIVITY_WAITING_FOR_PLAYER = 0x1F
    GENERAL_TILT = 0x20
    COIN_IN_TILT = 0x21
    COIN_OUT_TILT = 0x22
    HOPPER_EMPTY = 0x23
    EXTRA_COIN_PAID = 0x24
    DIVERTER_MALFUNCTION = 0x25
    CASHBOX_FULL = 0x27
    BILL_JAM = 0x28
    BILL_ACCEPTOR_FAILURE = 0x29
    REVERSE_BILL = 0x2A
    BILL_REJECTED = 0x2B
    COUNTERFEIT_BILL = 0x2C
    REVERSE_COIN_IN = 0x2D
    CASHBOX_NEAR_FULL = 0x2E
    BILL_ACCEPTOR_VERSION_CHANGED = 0x2F
    NVRAM_ERROR_DATA_RECOVERED = 0x31
    NVRAM_ERROR_NO_DATA_RECOVERED = 0x32
    NVRAM_ERROR_BAD_DEVICE = 0x33
    EEPROM_DATA_ERROR = 0x34
    EEPROM_BAD_DEVICE = 0x35
    EPROM_VERSION_CHANGED = 0x36
    EPROM_BAD_CHECKSUM = 0x37
    PARTITIONED_EPROM_VERSION_CHANGED = 0x38
    PARTITIONED_EPROM_BAD_CHECKSUM = 0x39
    MEMORY_ERROR_RESET = 0x3A
    LOW_BACKUP_BATTERY = 0x3B
    OPERATOR_CHANGED_OPTIONS = 0x3C
    CASHOUT_TICKET_PRINTED = 0x3D
    HANDPAY_VALIDATED = 0x3E
    VALIDATION_ID_NOT_CONFIGURED = 0x3F
    REEL_TILT = 0x40
    REEL_1_TILT = 0x41
    REEL_2_TILT = 0x42
    REEL_3_TILT = 0x43
    REEL_4_TILT = 0x44
    REEL_5_TILT = 0x45
    REEL_DISCONNECTED = 0x46
    BILL_1 = 0x47
    BILL_5 = 0x48
    BILL_10 = 0x49
    BILL_20 = 0x4A
    BILL_50 = 0x4B
    BILL_100 = 0x4C
    BILL_2 = 0x4D
    BILL_500 = 0x4E
    BILL_ACCEPTED = 0x4F
    BILL_200 = 0x50
    HANDPAY_PENDING = 0x51
    HANDPAY_RESET = 0x52
    NO_PROGRESSIVE_INFO = 0x53
    PROGRESSIVE_WIN = 0x54
    HANDPAY_CANCELLED_BY_PLAYER = 0x55
    SAS_PROGRESSIVE_LEVEL_HIT = 0x56
    SYSTEM_VALIDATION_REQUEST = 0x57
    # 59 / 5A / 5F: Aristocrat only, 6.03 or vendor [unsure] (reference section 3).
    NON_SAS_PROGRESSIVE_LEVEL_HIT = 0x59
    JACKPOT_KEYED_OFF_TO_MACHINE_PAY = 0x5A
    TIP_AWARDED = 0x5F
    PRINTER_COMM_ERROR = 0x60
    PRINTER_PAPER_OUT = 0x61
    CASHOUT_BUTTON_PRESSED = 0x66
    TICKET_INSERTED = 0x67
    TICKET_TRANSFER_COMPLETE = 0x68
    AFT_TRANSFER_COMPLETE = 0x69
    AFT_REQUEST_HOST_CASHOUT = 0x6A
    AFT_REQUEST_HOST_CASHOUT_WIN = 0x6B
    AFT_REQUEST_REGISTER = 0x6C
    AFT_REGISTRATION_ACKNOWLEDGED = 0x6D
    AFT_REGISTRATION_CANCELLED = 0x6E
    GAME_LOCKED = 0x6F
    BUFFER_OVERFLOW = 0x70
    CHANGE_LAMP_ON = 0x71
    CHANGE_LAMP_OFF = 0x72
    PRINTER_PAPER_LOW = 0x74
    PRINTER_POWER_OFF = 0x75
    PRINTER_POWER_ON = 0x76
    REPLACE_PRINTER_RIBBON = 0x77
    PRINTER_CARRIAGE_JAMMED = 0x78
    COIN_IN_LOCKOUT_MALFUNCTION = 0x79
    SOFT_METERS_RESET = 0x7A
    BILL_TOTALS_RESET = 0x7B
    LEGACY_BONUS_AWARDED = 0x7C
    GAME_STARTED = 0x7E
    GAME_ENDED = 0x7F
    HOPPER_FULL = 0x80
    HOPPER_LEVEL_LOW = 0x81
    DISPLAY_METERS_ENTERED = 0x82
    DISPLAY_METERS_EXITED = 0x83
    SELF_TEST_ENTERED = 0x84
    SELF_TEST_EXITED = 0x85
    OUT_OF_SERVICE = 0x86
    PLAYER_REQUESTED_DRAW = 0x87
    REEL_STOPPED = 0x88
    CREDIT_WAGERED = 0x89
    GAME_RECALL_DISPLAYED = 0x8A
    CARD_HELD = 0x8B
    GAME_SELECTED = 0x8C
    COMPONENT_LIST_CHANGED = 0x8E
    AUTHENTICATION_COMPLETE = 0x8F
    POWER_OFF_CARD_CAGE_ACCESS = 0x98
    POWER_OFF_SLOT_DOOR_ACCESS = 0x99
    POWER_OFF_CASHBOX_DOOR_ACCESS = 0x9A
    POWER_OFF_DROP_DOOR_ACCESS = 0x9B
    # 9E / 9F Aristocrat only; A0-A2 6.03-era [unsure] (reference section 3).
    SESSION_START = 0x9E
    SESSION_END = 0x9F
    METER_CHANGE_PENDING = 0xA0
    METER_CHANGE_CANCELLED = 0xA1
    ENABLED_GAMES_DENOMS_CHANGED = 0xA2
    # The RTE event frame marker (`addr FF code data crc`), not an exception.
    RTE_EVENT = 0xFF


class LongPoll(enum.IntEnum):
    """Long polls of reference section 6 (shapes in messages.POLL_SPECS)."""

    SHUTDOWN = 0x01
    STARTUP = 0x02
    ENABLE_BILL_ACCEPTOR = 0x06
    DISABLE_BILL_ACCEPTOR = 0x07
    RTE_MODE = 0x0E
    METERS_0F = 0x0F
    CANCELLED_CREDITS = 0x10
    COIN_IN = 0x11
    COIN_OUT = 0x12
    DROP = 0x13
    JACKPOT = 0x14
    GAMES_PLAYED = 0x15
    GAMES_WON = 0x16
    GAMES_LOST = 0x17
    GAMES_SINCE = 0x18
    METERS_19 = 0x19
    CURRENT_CREDITS = 0x1A
    HANDPAY_INFO = 0x1B
    METERS_1C = 0x1C
    BILL_COUNTS = 0x1E
    GAME_CONFIGURATION = 0x1F
    BILL_DOLLARS = 0x20
    ROM_SIGNATURE = 0x21
    SELECTED_METERS = 0x2F
    CASHOUT_TICKET = 0x3D
    LAST_BILL = 0x48
    SET_VALIDATION_ID = 0x4C
    ENHANCED_VALIDATION = 0x4D
    GAME_COUNT = 0x51
    GAME_N_CONFIGURATION = 0x53
    VERSION_AND_SERIAL = 0x54
    SELECTED_GAME = 0x55
    ENABLED_GAMES = 0x56
    PENDING_CASHOUT = 0x57
    VALIDATION_NUMBER = 0x58
    EXTENDED_METERS = 0x6F
    EXTENDED_METERS_ALT = 0xAF
    AFT_STATUS = 0x74  # AFT game lock and status; interrogate-only reads the asset number
    READ_CLOCK = 0x7E
    SET_CLOCK = 0x7F
    REMOTE_HANDPAY_RESET = 0x94
    ENABLED_FEATURES = 0xA0
    MULTI_DENOM = 0xB0


# Data bytes after the code in an RTE event frame (reference section 4); absent = no data.
RTE_DATA_LENGTH: dict[int, int] = {
    0x7E: 8, 0x7F: 4, 0x4F: 6, 0x88: 2, 0x8A: 4, 0x8B: 1, 0x8C: 2, 0x7C: 10,
}

# Accounting denomination codes (LP 1F) -> cents per credit (reference section 5).
DENOMINATION_CENTS: dict[int, int] = {
    0x01: 1, 0x02: 5, 0x03: 10, 0x04: 25, 0x05: 50, 0x06: 100, 0x07: 500, 0x08: 1000,
    0x09: 2000, 0x0A: 10000, 0x0B: 20, 0x0C: 200, 0x0D: 250, 0x0E: 2500, 0x0F: 5000,
    0x10: 20000, 0x11: 25000, 0x12: 50000, 0x13: 100000, 0x14: 200000, 0x15: 250000,
    0x16: 500000, 0x17: 2, 0x18: 3, 0x19: 15, 0x1A: 40,
}

# Non-RTE bill exceptions carry their value in the code (reference section 3).
BILL_CODE_CENTS: dict[int, int] = {
    0x47: 100, 0x48: 500, 0x49: 1000, 0x4A: 2000, 0x4B: 5000, 0x4C: 10000, 0x4D: 200,
    0x4E: 50000, 0x50: 20000,
}

# RTE 4F bill denomination codes (LP 48 table) -> cents. [unsure] not in our reference; the
# SAS bill-code table as commonly implemented (00 = $1, 01 = $2, 02 = $5, ...).
BILL_DENOMINATION_CENTS: dict[int, int] = {
    0x00: 100, 0x01: 200, 0x02: 500, 0x03: 1000, 0x04: 2000, 0x05: 2500, 0x06: 5000,
    0x07: 10000, 0x08: 20000, 0x09: 25000, 10: 50000, 11: 100000,
}


# Exceptions a machine sends ahead of its FIFO (the P flag of reference section 3; "Q/P" ones too,
# as machines re-issue them until the host follows up).
PRIORITY_EXCEPTIONS = frozenset({0x3D, 0x3E, 0x3F, 0x51, 0x52, 0x55, 0x56, 0x57, 0x67, 0x68,
                                 0x69, 0x6A, 0x6B, 0x6C, 0x6D, 0x6F, 0x70, 0x8F})

# SAS meter codes (reference section 5, Table C-7) the host reads with LP 2F / 6F / AF, by the
# names LP 0F/1C use (messages.METER_NAMES). All in credits except the counts.
METER_CODES: dict[int, str] = {
    0x00: "coin_in", 0x01: "coin_out", 0x02: "jackpot", 0x04: "cancelled_credits",
    0x05: "games_played", 0x06: "games_won", 0x07: "games_lost", 0x0C: "current_credits",
    0x24: "drop", 0x03: "handpaid_cancelled_credits", 0x11: "tickets_in_cashable",
    0x12: "tickets_out_cashable", 0x13: "tickets_in_restricted", 0x14: "tickets_out_restricted",
    0x15: "ticket_in_credits", 0x16: "ticket_out_credits", 0x17: "transfers_to_machine_credits",
    0x18: "transfers_to_host_credits",
}
