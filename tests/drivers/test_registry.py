"""The driver registry (drivers/registry.py): a protocol's settings, trace decoding with its
redaction hook, journal and opaque redelivery key reach the gateway without the gateway knowing
the protocol. A toy protocol ("toy") is registered to show a second one needs no gateway change."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from drivers import registry
from drivers.base import MachineEvent, MachineRef, SourceRef
from drivers.registry import DriverEnv, DriverSpec, PortConfig
from drivers.sas.settings import SasPortSettings
from gateway.capture import OutboxSink
from gateway.config import PortSection, parse_config, problems_of
from gateway.control import PortTap, TraceHub
from gateway.errors import ConfigError
from gateway.ports import build_driver

BASE = {
    "gateway": {"id": "gw-1", "key_file": "k"},
    "uplink": {"url": "wss://platform.example/v1/stream", "token_file": "t"},
}


@dataclass(frozen=True, slots=True)
class ToySettings:
    baud: int = field(default=9600, metadata={
        "check": lambda v: None if v in (9600, 19200) else "9600 or 19200"})


class SecretDecoder:
    """Redacts every digit: what a card reader does to card numbers."""

    def __init__(self) -> None:
        self.sent_frames: list[bytes] = []

    def sent(self, data: bytes) -> None:
        self.sent_frames.append(data)

    def redact(self, data: bytes) -> bytes:
        return bytes(ord("*") if chr(b).isdigit() else b for b in data)

    def describe(self, direction: str, data: bytes, *, wakeup: bool = False) -> str:
        return f"{direction} {data.decode('ascii', 'replace')}"


@dataclass
class ToyDriver:
    port: str
    config: PortConfig
    env: DriverEnv


def _toy_spec() -> DriverSpec:
    return DriverSpec(protocol="toy", settings=ToySettings,
                      build=lambda port, env: ToyDriver(port.name, port, env),  # type: ignore[arg-type,return-value]
                      trace_decoder=SecretDecoder,
                      check_port=lambda port: [(f"addresses[{j}]", "expected 0, the only reader")
                                               for j, a in enumerate(port.addresses) if a != 0])


@pytest.fixture
def toy() -> object:
    registry.register(_toy_spec())
    yield
    registry._registered.pop("toy", None)


def test_unknown_protocol_names_the_known_ones() -> None:
    with pytest.raises(registry.UnknownProtocolError, match=r"'gapi'.*sas"):
        registry.get("gapi")
    with pytest.raises(ConfigError) as caught:
        parse_config({**BASE, "ports": [{"name": "p", "device": "/dev/x", "protocol": "gapi"}]})
    assert caught.value.field == "ports[0].protocol" and "one of" in str(caught.value)


def test_sas_settings_come_from_the_protocol() -> None:
    config = parse_config({**BASE, "ports": [{"name": "p", "device": "/dev/x",
                                             "poll_interval_ms": 80, "rte": False}]})
    port = config.ports[0]
    assert port.protocol == "sas"
    assert port.settings == SasPortSettings(poll_interval_ms=80, rte=False)
    assert port.settings.host_config().poll_interval_s == 0.08


def test_a_second_protocol_needs_no_gateway_change(toy: object, tmp_path: Path) -> None:
    table = {**BASE, "gateway": {**BASE["gateway"], "state_dir": str(tmp_path)},
             "ports": [{"name": "r1", "device": "/dev/ttyACM0", "protocol": "toy",
                        "addresses": [0], "baud": 19200}]}
    config = parse_config(table)
    assert config.ports[0].settings == ToySettings(19200)
    driver = build_driver(config.ports[0], config, TraceHub())
    assert isinstance(driver, ToyDriver) and driver.config.settings.baud == 19200
    assert driver.env.journal is None and driver.env.tap is not None
    # SAS's keys are not the toy's; the toy's own check and its cross-field check both speak.
    bad = {**table, "ports": [{**table["ports"][0], "baud": 1200, "rte": True,
                               "addresses": [3]}]}
    with pytest.raises(ConfigError) as caught:
        parse_config(bad)
    fields = sorted(p.field for p in problems_of(caught.value))
    assert fields == ["ports[0].baud", "ports[0].rte"]  # addresses checked once the rest is valid
    with pytest.raises(ConfigError, match=r"ports\[0\].addresses\[0\]: expected 0"):
        parse_config({**table, "ports": [{**table["ports"][0], "addresses": [3]}]})


def test_port_section_of_checks_like_a_file() -> None:
    assert PortSection.of("p", Path("/dev/x"), poll_interval_ms=40).settings.poll_interval_ms == 40
    with pytest.raises(ConfigError, match="poll_interval_ms"):
        PortSection.of("p", Path("/dev/x"), poll_interval_ms=1)
    assert PortSection("p", Path("/dev/x")).settings == SasPortSettings()


async def test_trace_shows_only_what_the_decoder_redacted() -> None:
    hub = TraceHub()
    decoder = SecretDecoder()
    tap = PortTap(hub, "r1", decoder)
    tap.sent(b"poll")  # nobody traces: the decoder keeps its context, nothing is published
    with hub.subscribe("r1") as (_sub, frames):
        tap.received(b";4111111111111111=2512?")
        frame = frames.receive_nowait()
    assert decoder.sent_frames == [b"poll"]
    assert frame["text"] == "rx ;****************=****?"
    assert bytes.fromhex(frame["hex"]) == b";****************=****?"
    assert "4111" not in repr(frame)


@pytest.mark.parametrize(("stored", "asked", "redelivery"), [
    ("event-41", "event-41", True),
    ("event-41", "event-42", False),
    (b"\x00event-41", b"\x00event-41", True),
    (b"\x00event-41", "\x00event-41", False),  # bytes and str never compare equal
])
async def test_the_opaque_key_alone_identifies_a_redelivery(make_outbox, stored, asked,
                                                            redelivery) -> None:
    machine = MachineRef("r1", 0)
    outbox = make_outbox()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            await OutboxSink(outbox, currency="USD").record(MachineEvent(
                "doorOpened", machine, {"door": "main"},
                SourceRef("toy", 7, b"raw bytes", key=stored)))
            nursery.cancel_scope.cancel()
    await outbox.aclose()
    sink = OutboxSink(make_outbox(), currency="USD")
    # The payload differs from the one recorded: only the driver's key decides.
    assert sink.is_redelivery(machine, SourceRef("toy", 7, b"other", key=asked)) is redelivery


@pytest.mark.parametrize("journal_moved_on", [True, False])
async def test_the_daemon_settles_a_restart_through_the_protocols_journal(
        make_outbox, tmp_path: Path, journal_moved_on: bool) -> None:
    """ports.open_drivers opens each port's restart journal through its DriverSpec and settles
    the exceptions a later frame acknowledged, before the driver exists (no isinstance on a
    protocol's driver class)."""
    from drivers.sas.journal import PollJournal
    from drivers.sas.spec import poll_journal_path
    from gateway.ports import open_drivers

    config = parse_config({**BASE, "gateway": {**BASE["gateway"], "state_dir": str(tmp_path)},
                           "ports": [{"name": "p1", "device": "/dev/ttyS9"}]})
    journal = PollJournal(poll_journal_path(tmp_path, "p1"))
    counter = journal.record(bytes([0x81]))  # the GP that elicits the exception
    if journal_moved_on:
        journal.record(bytes([0x82]))  # a later, different frame: the implied ACK went out
    journal.close()
    machine = MachineRef("p1", 1)
    outbox = make_outbox()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            await OutboxSink(outbox, currency="USD").record(MachineEvent(
                "doorOpened", machine, {"door": "main"}, SourceRef("sas", 0x11,
                                                                   poll_counter=counter)))
            nursery.cancel_scope.cancel()
    await outbox.aclose()
    sink = OutboxSink(make_outbox(), currency="USD")
    drivers = open_drivers(config, TraceHub(), sink)
    assert list(drivers) == ["p1"]
    assert sink.is_redelivery(machine, SourceRef("sas", 0x11)) is not journal_moved_on


def test_rte_repeat_spacing_is_a_port_setting_off_by_default() -> None:
    """The idle-RTE repeat spacing (docs/sas.md, "Line scheduling") reaches the host from the
    file in milliseconds; 0 (the default) leaves the repeats at the poll interval."""
    assert SasPortSettings().host_config().rte_repeat_spacing_s is None
    config = parse_config({**BASE, "ports": [{"name": "p", "device": "/dev/x", "addresses": [1],
                                              "rte_repeat_spacing_ms": 40}]})
    assert config.ports[0].settings.host_config().rte_repeat_spacing_s == 0.04
    with pytest.raises(ConfigError, match="rte_repeat_spacing_ms"):
        PortSection.of("p", Path("/dev/x"), rte_repeat_spacing_ms=20)
