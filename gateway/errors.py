"""The gateway's error tree, split by blame and by what the supervisor does about it.

    GatewayError
    +-- ConfigError      bad configuration; fatal at start-up; exit 78 (EX_CONFIG), systemd does
    |                    not restart (RestartPreventExitStatus=78)
    +-- StoreError       the outbox is unusable (cannot open, commit failed); exit 1, systemd restarts
    (gateway.signing.KeyFileError -- a key file missing, malformed or too open -- also exits 78)

Expected conditions -- a machine offline, a CRC error a retry fixes, the uplink down while the
outbox buffers -- are events and state, never exceptions. Link and SAS errors live in drivers/.
"""

from __future__ import annotations

__all__ = ["EXIT_CONFIG", "EXIT_FAILURE", "ConfigError", "GatewayError", "StoreError"]

EXIT_FAILURE = 1
EXIT_CONFIG = 78


class GatewayError(Exception):
    """Root of the gateway's own errors."""


class ConfigError(GatewayError):
    """The configuration is invalid. `field` names the offending key (e.g. ports[0].device)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field


class StoreError(GatewayError):
    """The outbox cannot be used: unreadable file, another gateway's outbox, failed commit."""
