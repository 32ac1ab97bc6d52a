"""Card numbers never leave the reader driver in clear: a keyed hash with the venue secret.

`card_id` is BLAKE2b keyed with the venue secret (digest 16 bytes, personalised so the same
secret used elsewhere cannot give the same values): the same card at any reader of the venue
gives the same id, so a platform can link a player's visits, but without the secret nobody can
test a guessed card number against it (an unkeyed hash of a 16-digit number is reversed by
enumeration in hours). `key_id` names the secret (a keyed hash of nothing): when the secret is
rotated, every card's id changes and the events say so by a new key_id (docs/cardreader.md,
"Rotating the venue secret").

Pure (no file, no clock): the secret file is read by drivers/cardreader/secret_file.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from drivers.cardreader.errors import VenueSecretError

__all__ = ["MAX_SECRET_BYTES", "MIN_SECRET_BYTES", "VenueSecret"]

MIN_SECRET_BYTES = 32
MAX_SECRET_BYTES = 64  # BLAKE2b's key size
_PERSON_CARD = b"player-card-v1"
_PERSON_KEY_ID = b"venue-key-id-v1"


@dataclass(frozen=True, slots=True)
class VenueSecret:
    """The key; `repr` never shows it."""

    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not MIN_SECRET_BYTES <= len(self.key) <= MAX_SECRET_BYTES:
            raise VenueSecretError(f"the venue secret must be {MIN_SECRET_BYTES}-"
                                   f"{MAX_SECRET_BYTES} bytes, not {len(self.key)}")

    @property
    def key_id(self) -> str:
        """8 hex digits naming this secret (not revealing it)."""
        return hashlib.blake2b(b"", key=self.key, digest_size=4, person=_PERSON_KEY_ID).hexdigest()

    def card_id(self, medium: str, number: str) -> str:
        """32 hex digits for card `number` read on `medium` ("magstripe" or "rfid"): the medium
        is hashed too, so a stripe number and an RFID UID that happen to be equal stay apart."""
        return hashlib.blake2b(f"{medium}:{number}".encode(), key=self.key, digest_size=16,
                               person=_PERSON_CARD).hexdigest()
