"""Typed statistics snapshots (issue 14): each source's figures are read in one place, the port
sums are computed in one place, and /metrics and /health read the same snapshot."""

from __future__ import annotations

import dataclasses

from gateway.monitor import HealthLimits, Monitor, assess
from gateway.statistics import (
    COUNTERS,
    GatewayFigures,
    MachineFigures,
    OutboxFigures,
    PortFigures,
    UplinkFigures,
)

DRIVER = {  # two machines as a SAS driver reports them: more keys than the gateway reads
    1: {"online": True, "polls": 90, "timeouts": 4, "crc_errors": 1, "resent_after_reset": 2,
        "game": "BJ/7", "meters": {"coin_in_credits": 5}, "latency_p99_s": 0.031},
    2: {"online": False, "offline_reason": "no answer to 10 polls", "polls": 10, "timeouts": 10},
}


def _figures() -> GatewayFigures:
    port = PortFigures.of("bank-a", "running", DRIVER, failures=3, last_error=None)
    return GatewayFigures((port,), OutboxFigures.of({"depth": 7, "last_seq": 70, "kid": "k"}),
                          UplinkFigures.of({"state": "connected", "connected": True,
                                            "attempts": 5, "reconnects": 1}),
                          {"state": "up", "connected": True, "since": 1.0, "reason": "ok"})


def test_a_source_s_figures_are_read_once_into_typed_fields():
    m = MachineFigures.of("2", DRIVER[2])
    assert (m.address, m.online, m.offline_reason, m.polls, m.crc_errors) == (
        2, False, "no answer to 10 polls", 10, 0)  # absent counters are 0, not missing
    assert not hasattr(MachineFigures.of(1, DRIVER[1]), "game")
    port = _figures().ports[0]
    assert (port.machines_online, port.total("timeouts"), port.total("polls")) == (1, 14, 100)
    assert dataclasses.is_dataclass(port) and port.__dataclass_params__.frozen  # type: ignore[attr-defined]


def test_the_json_form_reads_back_to_the_same_figures():
    figures = _figures()
    status = figures.as_status()
    assert status["ports"]["bank-a"]["timeouts"] == 14
    assert status["ports"]["bank-a"]["machines"]["1"]["latency_p99_s"] == 0.031
    assert GatewayFigures.from_status(status) == figures
    assert GatewayFigures.from_status({}) == GatewayFigures()


def test_health_and_metrics_read_one_snapshot(make_outbox):
    """Whatever the snapshot says, /metrics and /health say: each counter of COUNTERS appears
    per port with the port's total and per machine, and the offline machine is the reason."""
    figures = _figures()
    monitor = Monitor(make_outbox(), lambda: figures)
    text = monitor.metrics().decode()
    port = figures.ports[0]
    for counter in COUNTERS:
        assert f'gateway_port_{counter}_total{{port="bank-a"}} {float(port.total(counter))}' \
            in text, counter
        for m in port.machines:
            assert f'gateway_machine_{counter}_total{{address="{m.address}",port="bank-a"}} ' \
                   f"{float(getattr(m, counter))}" in text, (counter, m.address)
    assert 'gateway_port_failures_total{port="bank-a"} 3.0' in text
    code, body = monitor.health()
    assert (code, body["reasons"]) == (503, ["port bank-a: machine(s) 2 offline"])
    assert body["machines"] == {"online": 1, "total": 2, "offline": [
        {"machine": "bank-a/2", "reason": "no answer to 10 polls"}]}
    assert assess(figures, HealthLimits(), wall=2.0) == assess(figures.as_status(),
                                                               HealthLimits(), wall=2.0)
