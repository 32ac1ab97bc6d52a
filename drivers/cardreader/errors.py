"""The card reader driver's own exceptions (link failures are drivers.link.LinkError)."""

from __future__ import annotations

__all__ = ["CardReaderError", "VenueSecretError"]


class CardReaderError(Exception):
    """A card reader setting or call is wrong (a caller's bug or a bad configuration)."""


class VenueSecretError(CardReaderError):
    """The venue secret file is missing, unreadable, too open or too short; one line, for an
    operator (the gateway exits 78 on it)."""
