"""A SAS port's own settings: the protocol-specific keys of its `[[ports]]` table.

Registered as `DriverSpec.settings` (drivers/sas/spec.py); gateway/config.py parses and checks
them with the rest of the file (each field's `check` returns the expected shape or None), so a
bad value is one line naming `ports[N].field`, exit 78. Milliseconds in the file, seconds in the
host: the conversion is here, once, as properties.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from drivers.sas.host import HostConfig

__all__ = ["SasPortSettings", "check_addresses"]


def _within(low: int, high: int, message: str) -> Callable[[int], str | None]:
    return lambda v: None if low <= v <= high else message


@dataclass(frozen=True, slots=True)
class SasPortSettings:
    link: str = field(default="auto", metadata={
        "check": lambda v: None if v in ("auto", "serial", "pty") else "one of auto, serial, pty"})
    poll_interval_ms: int = field(default=200, metadata={
        "check": _within(40, 5000, "between 40 and 5000 (SAS allows 40 ms-5 s)")})
    response_timeout_ms: int = field(default=100, metadata={
        "check": _within(20, 1000, "between 20 and 1000")})
    offline_after_misses: int = field(default=5, metadata={
        "check": _within(1, 100, "between 1 and 100")})
    rte: bool = True
    # 0: repeats of an idle RTE machine's silent GP wait the poll interval (the default, safe on
    # any line); 40-5000: they come this close, for shared lines of idle RTE machines whose
    # answers are prompt (docs/sas.md, "Line scheduling").
    rte_repeat_spacing_ms: int = field(default=0, metadata={
        "check": lambda v: None if v == 0 or 40 <= v <= 5000
        else "0 (off) or between 40 and 5000 (SAS allows 40 ms-5 s)"})

    @property
    def poll_interval_s(self) -> float:
        return self.poll_interval_ms / 1000

    @property
    def response_timeout_s(self) -> float:
        return self.response_timeout_ms / 1000

    @property
    def rte_repeat_spacing_s(self) -> float | None:
        return self.rte_repeat_spacing_ms / 1000 if self.rte_repeat_spacing_ms else None

    def host_config(self) -> HostConfig:
        """The host's configuration: these settings, the rest at the host's defaults."""
        return HostConfig(poll_interval_s=self.poll_interval_s,
                          response_timeout_s=self.response_timeout_s,
                          offline_after_misses=self.offline_after_misses, rte=self.rte,
                          rte_repeat_spacing_s=self.rte_repeat_spacing_s)


def check_addresses(addresses: tuple[int, ...]) -> list[tuple[str, str]]:
    """(field, problem) for each address SAS cannot poll."""
    return [(f"addresses[{j}]", f"expected a SAS address 1-127, got {a}")
            for j, a in enumerate(addresses) if not 1 <= a <= 127]
