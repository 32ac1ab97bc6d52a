"""The monitor listener: /health and /metrics on a port of their own, loopback without
authentication, anything else only with a bearer token (gateway/monitor.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from gateway.config import MonitorSection, parse_config
from gateway.errors import ConfigError
from gateway.monitor import HealthLimits, Monitor, assess, serve_monitor

from .test_feed_server import http_get

STATUS = {
    "uplink": {"attempts": 3, "reconnects": 1},
    "uplink_status": {"state": "up", "connected": True, "since": 1_800_000_000.0,
                      "reason": "connected, events acknowledged"},
    "ports": {"bank-a-01": {"state": "running", "failures": 2, "machines": {
        "1": {"online": True, "polls": 90, "timeouts": 4, "crc_errors": 1,
              "resent_after_reset": 0},
        "2": {"online": False, "polls": 10, "timeouts": 10, "crc_errors": 0,
              "resent_after_reset": 0}}}},
}


async def http_get_auth(port: int, target: str, token: str | None) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        auth = f"Authorization: Bearer {token}\r\n" if token else ""
        await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


async def test_health_and_metrics_on_their_own_port(make_outbox, nursery):
    outbox = make_outbox()
    await nursery.start(outbox.run_writer)
    status = {k: dict(v) if isinstance(v, dict) else v for k, v in STATUS.items()}
    monitor = Monitor(outbox, lambda: status)
    port = await nursery.start(serve_monitor, MonitorSection(port=0), monitor)
    with trio.fail_after(10):
        code, _, body = await http_get(port, "/health")
        health = json.loads(body)
        assert (code, health["status"]) == (503, "degraded")
        assert health["reasons"] == ["port bank-a-01: machine(s) 2 offline"]
        assert health["ports"] == {"bank-a-01": {"state": "running", "machines_online": 1,
                                                 "machines": 2}}
        code, headers, body = await http_get(port, "/metrics")
        text = body.decode()
        assert code == 200 and headers[b"content-type"].startswith(b"text/plain")
        for line in ['gateway_machine_up{address="1",port="bank-a-01"} 1.0',
                     'gateway_machine_up{address="2",port="bank-a-01"} 0.0',
                     'gateway_port_up{port="bank-a-01"} 1.0',
                     'gateway_port_polls_total{port="bank-a-01"} 100.0',
                     'gateway_port_timeouts_total{port="bank-a-01"} 14.0',
                     'gateway_machine_timeouts_total{address="2",port="bank-a-01"} 10.0',
                     'gateway_port_failures_total{port="bank-a-01"} 2.0',
                     "gateway_uplink_connect_attempts_total 3.0",
                     "gateway_uplink_reconnects_total 1.0",
                     'gateway_uplink_state{state="up"} 1.0', "gateway_uplink_up 1.0",
                     "gateway_health_degraded 1.0", "gateway_outbox_oldest_undelivered_age_seconds",
                     "gateway_feed_auth_failures_total 0.0", "process_resident_memory_bytes",
                     "gateway_build_info{"]:
            assert line in text, line
        status["ports"]["bank-a-01"]["machines"]["2"]["online"] = True
        assert (await http_get(port, "/health"))[0] == 200
        assert (await http_get(port, "/nope"))[0] == 404


async def test_a_token_file_guards_the_listener(make_outbox, nursery, tmp_path: Path):
    outbox = make_outbox()
    await nursery.start(outbox.run_writer)
    token = tmp_path / "monitor.token"
    token.write_text("scrape-secret\n")
    port = await nursery.start(serve_monitor, MonitorSection(port=0, token_file=token),
                               Monitor(outbox, dict))
    with trio.fail_after(10):
        assert (await http_get_auth(port, "/metrics", None))[0] == 401
        assert (await http_get_auth(port, "/metrics", "wrong"))[0] == 401
        code, body = await http_get_auth(port, "/health", "scrape-secret")
        assert code == 200 and json.loads(body)["status"] == "ok"


def test_a_non_loopback_bind_needs_a_token_file():
    base = {"gateway": {"id": "gw", "key_file": "k"}, "uplink": {"url": "wss://x",
                                                                 "token_file": "t"}}
    with pytest.raises(ConfigError, match=r"monitor\.token_file"):
        parse_config({**base, "monitor": {"host": "0.0.0.0"}})
    with pytest.raises(ConfigError, match="token_file"):
        MonitorSection(host="10.0.0.5")
    config = parse_config({**base, "monitor": {"host": "0.0.0.0", "token_file": "m.token"}})
    assert config.monitor.token_file == Path("m.token")
    assert parse_config(base).monitor is None


def test_assess_reasons():
    limits = HealthLimits(uplink_down_s=60, undelivered_s=300, degraded_depth=100)
    assert assess({}, limits, wall=1000.0) == []
    reasons = assess({"uplink_status": {"state": "down", "connected": False, "since": 900.0,
                                       "reason": "refused"},
                      "outbox": {"oldest_undelivered_s": 400.0, "depth": 101,
                                 "intake_stopped": True},
                      "ports": {"p": {"state": "stopped"}}}, limits, wall=1000.0)
    assert reasons == ["uplink down for 100 s (limit 60 s): refused",
                       "oldest undelivered event is 400 s old (limit 300 s)",
                       "101 events undelivered (limit 100)",
                       "disk floor reached: the outbox stopped taking events",
                       "port p down (stopped)"]


async def test_metrics_give_the_outage_the_disk_holds_as_diag_does(make_outbox, nursery):
    """Issue 18: hours of uplink outage the free disk holds at the current event rate, on
    /metrics (here) as in diag: free bytes / (file bytes per event kept x events/s x 3600)."""
    import shutil

    from .test_outbox import draft

    outbox = make_outbox()
    await nursery.start(outbox.run_writer)
    for i in range(200):
        await outbox.append(draft(i))
    monitor = Monitor(outbox, dict, events_per_s=lambda: 4.0)
    text = (await monitor.scrape()).decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("gateway_outbox_")}
    path = outbox.settings.path
    size = sum(p.stat().st_size for p in (path, Path(f"{path}-wal")) if p.exists())
    per_event = size / outbox.last_seq
    expected = shutil.disk_usage(path.parent).free / (per_event * 4.0 * 3600)
    assert values["gateway_outbox_bytes_per_event"] == pytest.approx(per_event, rel=0.05)
    assert values["gateway_outbox_outage_capacity_hours"] == pytest.approx(expected, rel=0.05)
    quiet = Monitor(outbox, dict, events_per_s=lambda: 0.0)
    assert b"outage_capacity_hours" not in await quiet.scrape()  # no rate, no estimate


async def test_health_says_the_epoch_state(make_outbox, outbox_settings):
    """Issue 15: a restored or torn outbox started a new epoch and /health said only `ok`.
    /health names the epoch, whether the witness was there, and this start's epoch change."""
    from tests.gateway.test_outbox_integrity import execute, fill

    first = make_outbox()
    old_epoch = first.epoch
    await fill(first, 30)
    again = make_outbox()
    _, intact = Monitor(again, dict).health()
    again.close()
    assert (intact["outbox"]["epoch"], intact["outbox"]["witness"]) == (old_epoch, "present")
    assert (intact["outbox"]["epoch_changes"], intact["outbox"]["epoch_change"]) == (0, None)

    execute(outbox_settings.path, "DELETE FROM events WHERE seq > 20")  # rows 21..30 gone
    outbox = make_outbox()
    code, health = Monitor(outbox, dict).health()
    assert code == 200   # nothing to page on: the loss marker is the visible outcome
    assert health["outbox"]["epoch"] == outbox.epoch != old_epoch
    assert health["outbox"]["epoch_changes"] == 1
    assert health["outbox"]["epoch_change"] == {"reason": "rollback",
                                                "previous_epoch": old_epoch,
                                                "first_missing": 21, "last_missing": 30}
