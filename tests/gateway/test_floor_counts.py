"""Slot machines and card readers are counted apart everywhere the gateway counts the floor
(floor review): a card reader's port is no machine in the status line, /health, /metrics or
diag, and each is named in words staff and IT use ("card reader")."""

from __future__ import annotations

import trio

from drivers.base import MachineRef
from drivers.cardreader.cardid import VenueSecret
from drivers.cardreader.driver import CardReaderDriver
from drivers.cardreader.reader import ReaderSettings
from gateway.diag import assess as diag_assess
from gateway.diag import render_check
from gateway.monitor import HealthLimits, Monitor, assess
from gateway.statistics import GatewayFigures, OutboxFigures, PortFigures

SAS = {1: {"online": True, "polls": 90}, 2: {"online": False, "polls": 10,
                                             "offline_reason": "no answer to 10 polls"}}


async def _never_opened() -> object:  # the statistics of a reader never started
    raise AssertionError("not opened in this test")


def _reader(port: str, beside: str) -> PortFigures:
    """A card reader port as the real driver reports it (offline: never opened)."""
    driver = CardReaderDriver(port, _never_opened, MachineRef(beside, 1),  # type: ignore[arg-type]
                              ReaderSettings(), VenueSecret(b"\x11" * 32))
    stats = driver.statistics()
    return PortFigures.of(port, "running", stats.machines)


def _floor(readers_online: int = 0) -> GatewayFigures:
    readers = [_reader("reader-1", "bank-a"), _reader("reader-2", "bank-b")]
    if readers_online:
        readers[0] = PortFigures.of("reader-1", "running", {1: {
            **dict(readers[0].machines[0].own), "device": "card_reader", "online": True}})
    return GatewayFigures((PortFigures.of("bank-a", "running", SAS), *readers),
                          OutboxFigures())


def test_a_reader_port_is_a_card_reader_not_a_machine():
    figures = _floor(readers_online=1)
    assert figures.machines_online == 1
    assert figures.floor_line() == "1/2 machines online, 1/2 card readers online"
    machines_only = GatewayFigures((PortFigures.of("bank-a", "running", SAS),))
    assert machines_only.floor_line() == "1/2 machines online"
    assert GatewayFigures.from_status(figures.as_status()) == figures


def test_health_counts_machines_and_card_readers_apart(make_outbox):
    monitor = Monitor(make_outbox(), lambda: _floor(readers_online=1))
    code, body = monitor.health()
    assert code == 503
    assert body["machines"] == {"online": 1, "total": 2, "offline": [
        {"machine": "bank-a/2", "reason": "no answer to 10 polls"}]}
    assert body["card_readers"] == {"online": 1, "total": 2, "offline": [
        {"card_reader": "reader-2", "beside": "bank-b/1", "reason": None}]}
    assert body["ports"]["reader-2"] == {"state": "running", "card_readers_online": 0,
                                         "card_readers": 1}
    assert body["ports"]["bank-a"] == {"state": "running", "machines_online": 1, "machines": 2}
    assert body["reasons"] == ["port bank-a: machine(s) 2 offline",
                               "card reader reader-2 (beside bank-b/1) offline"]
    assert not [r for r in assess(_floor(), HealthLimits(), wall=0.0) if "reader-1: machine" in r]


def test_metrics_give_card_readers_their_own_up_gauge(make_outbox):
    text = Monitor(make_outbox(), lambda: _floor(readers_online=1)).metrics().decode()
    machine_up = [line for line in text.splitlines() if line.startswith("gateway_machine_")]
    assert machine_up and not [line for line in machine_up if "reader-" in line]
    assert 'gateway_card_reader_up{machine="bank-a/1",port="reader-1"} 1.0' in text
    assert 'gateway_card_reader_up{machine="bank-b/1",port="reader-2"} 0.0' in text


def _diag_status() -> dict:
    machine = {"address": 1, "state": "online", "serial": "S1", "asset": None,
               "last_response_age_s": 0.1, "polls": 100, "timeouts": 0, "crc_errors": 0,
               "nacks": 0, "last_event": None, "device": "machine", "figures": {}}
    reader = {**machine, "state": "offline", "serial": None, "polls": 0,
              "last_response_age_s": None, "device": "card_reader",
              "offline_reason": "read failed: [Errno 5] Input/output error",
              "figures": {"machine": "port1/1", "kind": "insert"}}
    port = {"device": "/dev/ttyS0", "state": "running", "failures": 0, "last_error": None}
    return {"gateway": {"status": "1/1 machines online, 0/1 card readers online, uplink up, "
                                  "0 queued",
                        "watchdog": {"alive": True}},
            "ports": {"port1": {**port, "machines": [machine]},
                      "reader1": {**port, "machines": [reader]}},
            "outbox": {"depth": 0, "intake_stopped": False, "error": None},
            "uplink": {"state": "connected", "connected": True, "down_for_s": None}}


def test_diag_check_names_an_offline_card_reader_and_counts_it_apart():
    status = _diag_status()
    code, problems = diag_assess(status)
    assert (code, problems) == (1, ["card reader reader1 (beside port1/1) offline: read "
                                    "failed: [Errno 5] Input/output error"])
    assert "| online=1;;;0;1 card_readers_online=0;;;0;1 " in render_check(status, code, problems)
    # Every reader offline is no "no machine online": the machines are polled.
    assert not [p for p in problems if "no machine online" in p]


def test_diag_says_no_machine_online_only_for_machines():
    status = _diag_status()
    status["ports"]["reader1"]["machines"][0]["state"] = "online"
    status["ports"]["port1"]["machines"][0]["state"] = "offline"
    code, problems = diag_assess(status)
    assert code == 2 and "no machine online (0/1)" in problems


async def test_the_readers_status_in_diag_is_offline_not_unpolled():
    """A reader is never polled: while its line is closed diag says offline (with why)."""
    from gateway.control import _machine_row  # the one row builder diag and the socket use

    class Gw:
        class activity:  # stands in for the gateway's attribute
            last: dict = {}

    m = _reader("reader-1", "bank-a").machines[0]
    row = _machine_row(Gw(), "reader-1", m, 0.0, trio.current_time())  # type: ignore[arg-type]
    assert (row["state"], row["device"]) == ("offline", "card_reader")


def test_diag_names_a_card_reader_port_that_will_not_open_as_a_card_reader():
    status = _diag_status()
    status["ports"]["reader1"].update(state="down", failures=2,
                                      last_error="cannot open /dev/ttyUSB7: No such file")
    code, problems = diag_assess(status)
    assert (code, problems) == (1, ["card reader reader1 down: cannot open /dev/ttyUSB7: No such "
                                    "file (retrying)"])
