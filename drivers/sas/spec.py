"""SAS's registration (drivers/registry.py): everything the gateway needs of the protocol.

The redelivery key is the exception's payload, compared with its code: `SourceRef(code,
payload)` as drivers/sas/mapping.py builds it (a machine re-sends an unacknowledged exception
with the same code and payload).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from drivers.base import Capability
from drivers.link import open_link
from drivers.link.tap import tapped_opener
from drivers.registry import DriverEnv, DriverSpec, PortConfig
from drivers.sas.driver import SasDriver
from drivers.sas.errors import SasRemoteProtocolError
from drivers.sas.journal import PollJournal
from drivers.sas.probe import probe_request
from drivers.sas.settings import SasPortSettings, check_addresses
from drivers.sas.trace import SasTraceDecoder

__all__ = ["SPEC", "poll_journal_path"]


def poll_journal_path(state_dir: Path, port: str) -> Path:
    return state_dir / "polls" / f"{port}.journal"


def _open_journal(state_dir: Path, port: str) -> PollJournal:
    return PollJournal(poll_journal_path(state_dir, port))


def _build(port: PortConfig, env: DriverEnv) -> SasDriver:
    settings = port.settings
    if not isinstance(settings, SasPortSettings):
        raise TypeError(f"port {port.name}: SAS settings expected, got {settings!r}")
    if env.journal is not None and not isinstance(env.journal, PollJournal):
        raise TypeError(f"port {port.name}: a SAS port's journal is a PollJournal")
    opener = tapped_opener(partial(open_link, str(port.device), mode=settings.link), env.tap)
    return SasDriver(port.name, opener, port.addresses, settings.host_config(),
                     journal=env.journal)


SPEC = DriverSpec(
    protocol="sas",
    settings=SasPortSettings,
    build=_build,
    trace_decoder=SasTraceDecoder,
    capabilities=frozenset(Capability),
    check_port=lambda port: check_addresses(port.addresses),
    open_journal=_open_journal,
    probe=probe_request,
    recoverable=(SasRemoteProtocolError,),
)
