"""The card reader's registration (drivers/registry.py): everything the gateway needs of it.

No capabilities: a reader is never acknowledged, never redelivers, has no meters and takes no
commands (docs/cardreader.md, "What the driver contract means here"). No restart journal and no
probe. `check_port` reads the venue secret at config check, so a weak one stops the gateway with
exit 78 before any port opens.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from drivers.cardreader.driver import CardReaderDriver
from drivers.cardreader.errors import VenueSecretError
from drivers.cardreader.link import open_reader_link
from drivers.cardreader.secret_file import load_venue_secret
from drivers.cardreader.settings import CardReaderPortSettings
from drivers.cardreader.trace import CardReaderTraceDecoder
from drivers.registry import DriverEnv, DriverSpec, PortConfig

__all__ = ["SPEC"]


def _check_port(port: PortConfig) -> Sequence[tuple[str, str]]:
    settings = port.settings
    if not isinstance(settings, CardReaderPortSettings) or not settings.secret_file.is_absolute():
        return ()  # the field's own check has said what is wrong
    try:
        load_venue_secret(settings.secret_file)
    except VenueSecretError as err:
        return [("secret_file", str(err))]
    return ()


def _build(port: PortConfig, env: DriverEnv) -> CardReaderDriver:
    settings = port.settings
    if not isinstance(settings, CardReaderPortSettings):
        raise TypeError(f"port {port.name}: card reader settings expected, got {settings!r}")
    return CardReaderDriver(port.name, partial(open_reader_link, str(port.device),
                                               baud=settings.baud),
                            settings.machine_ref(), settings.reader_settings(),
                            load_venue_secret(settings.secret_file), tap=env.tap)


SPEC = DriverSpec(
    protocol="cardreader",
    settings=CardReaderPortSettings,
    build=_build,
    trace_decoder=CardReaderTraceDecoder,
    capabilities=frozenset(),
    check_port=_check_port,
)
