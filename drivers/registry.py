"""Protocol name -> `DriverSpec`: everything a machine protocol owns, in one registration.

The gateway (daemon, control, diag, config, capture) reaches a protocol only through here and the
neutral contract (drivers/base.py, drivers/model.py); no module in gateway/ imports a protocol
package (tests/test_architecture.py). A `[[ports]]` table names its protocol (`protocol = "sas"`,
the default); the spec then supplies

  * `settings`: the port's protocol-specific section, a frozen dataclass whose fields carry
    `metadata={"check": value -> problem or None}`; gateway/config.py parses and validates it
    with the rest of the file (one-line errors, exit 78), and `check_port` adds checks across
    fields (e.g. the SAS address range);
  * `build(port, env)`: the `Driver` for one port (env: state directory, restart journal, tap);
  * `trace_decoder()`: a per-port `TraceDecoder` for `diag trace`, with a redaction hook;
  * `probe(request)`: `diag probe` with the gateway stopped (None: the protocol has none);
  * `open_journal(state_dir, port)`: its restart journal (None: it keeps none);
  * `recoverable`: its errors after which the port supervisor reopens the port;
  * `capabilities`: which optional parts of the contract it has (`Capability`).

The redelivery key is not registered: a driver puts it in each `SourceRef` (drivers/model.py).
Meters come from `MeterSource.read_meters` under `MeterName`s (drivers/base.py).

Built-in protocols are imported on first use, so a port that does not use one never loads it.
Trio-free: importing the registry loads no protocol and no event loop.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from drivers.model import Capability, FrameTap

if TYPE_CHECKING:
    from drivers.base import Driver

__all__ = [
    "DEFAULT_PROTOCOL",
    "DriverEnv",
    "DriverSpec",
    "PortConfig",
    "ProbeReport",
    "ProbeRequest",
    "RestartJournal",
    "TraceDecoder",
    "UnknownProtocolError",
    "get",
    "protocols",
    "register",
]

DEFAULT_PROTOCOL = "sas"

# Built-in protocols: name -> module whose SPEC is the DriverSpec (imported on first use).
_BUILTIN: dict[str, str] = {
    "sas": "drivers.sas.spec",
}
_registered: dict[str, DriverSpec] = {}


class UnknownProtocolError(LookupError):
    """No driver registered under this protocol name."""


@dataclass(frozen=True, slots=True)
class PortConfig:
    """What a driver gets of its `[[ports]]` table: the generic fields and its own `settings`."""

    name: str
    device: Path
    addresses: tuple[int, ...]
    settings: Any


class RestartJournal(Protocol):
    """A protocol's record of what it last sent on a line, kept across restarts (SAS: the poll
    journal, drivers/sas/journal.py). The gateway only reads `counter_at_open` -- the counter as
    the previous process left it -- to settle which exceptions were acknowledged before the
    restart (drivers/redelivery.py), and closes it."""

    @property
    def counter_at_open(self) -> int | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DriverEnv:
    """What the gateway hands `build`: where state lives, the port's journal, the trace tap."""

    state_dir: Path
    journal: RestartJournal | None = None
    tap: FrameTap | None = None


class TraceDecoder(Protocol):
    """One port's frames in words for `diag trace`. The gateway calls `redact` on every frame
    before it is shown in any form (hex or text), then `describe` on what `redact` returned; a
    card reader masks card numbers there. `sent` sees every host frame, traced or not, so the
    decoder knows what an answer answers (keep it cheap)."""

    def sent(self, data: bytes) -> None: ...

    def redact(self, data: bytes) -> bytes: ...

    def describe(self, direction: str, data: bytes, *, wakeup: bool = False) -> str: ...


@dataclass(frozen=True, slots=True)
class ProbeRequest:
    """`diag probe` arguments. `link` is the link mode ("auto", "serial", "pty"); `journal` the
    port's restart journal when the device is a configured port (None otherwise)."""

    device: str
    address: int
    link: str = "auto"
    timeout_s: float = 0.2
    spacing_s: float = 0.2
    journal: RestartJournal | None = None
    lock_dir: Path | None = None


# {"device", "address", "ok": bool, "steps": [{"poll", "what", "result", "ok", "latency_ms",
#  "attempts", "data": {...}}], "advice": [str], optional "error", "opened_ms"}; gateway/diag.py
# renders it. Never raises for what the line or the machine does.
ProbeReport = dict[str, Any]


def _no_port_checks(port: PortConfig) -> Sequence[tuple[str, str]]:
    return ()


def _no_journal(state_dir: Path, port: str) -> RestartJournal | None:
    return None


@dataclass(frozen=True, slots=True)
class DriverSpec:
    """One protocol's registration (see the module docstring)."""

    protocol: str
    settings: type
    build: Callable[[PortConfig, DriverEnv], Driver]
    trace_decoder: Callable[[], TraceDecoder]
    capabilities: frozenset[Capability] = frozenset()
    check_port: Callable[[PortConfig], Sequence[tuple[str, str]]] = _no_port_checks
    open_journal: Callable[[Path, str], RestartJournal | None] = _no_journal
    probe: Callable[[ProbeRequest], Awaitable[ProbeReport]] | None = None
    recoverable: tuple[type[BaseException], ...] = field(default=())


def register(spec: DriverSpec) -> None:
    """Make `spec` available under `spec.protocol` (a later registration replaces it)."""
    _registered[spec.protocol] = spec


def protocols() -> tuple[str, ...]:
    """Every protocol name a port may use."""
    return tuple(sorted({*_BUILTIN, *_registered}))


def get(protocol: str) -> DriverSpec:
    """The spec for `protocol`; UnknownProtocolError names the known ones."""
    spec = _registered.get(protocol)
    if spec is None and protocol in _BUILTIN:
        spec = importlib.import_module(_BUILTIN[protocol]).SPEC
        _registered[protocol] = spec
    if spec is None:
        raise UnknownProtocolError(f"no driver for protocol {protocol!r} (known: "
                                   f"{', '.join(protocols())})")
    return spec
