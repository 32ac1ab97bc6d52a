"""One append on its way through the writer: the unit the collector groups and the commit seals."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio

from gateway.events import Draft
from gateway.signing import Signer

__all__ = ["Pending"]


@dataclass(slots=True)
class Pending:
    draft: Draft
    done: trio.Event = field(default_factory=trio.Event)
    seq: int = 0
    envelope: dict[str, Any] | None = None
    rotate_to: Signer | None = None  # a keyRotated draft: sealed by the old key, then switch
    shed: bool = False
    alert: bool = False  # the outbox's own diskFull/diskSpaceRestored: nobody awaits it

    def not_committed(self) -> None:
        """The group's transaction did not happen: no seq was used."""
        self.seq, self.envelope = 0, None
