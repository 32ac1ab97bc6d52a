"""Port and machine lifecycle (issue 13 findings 6 and 7), under trio's autojump clock over real
pseudo-terminals: the configured device is a symlink; a replug re-points it to a new pty, a swap
puts another machine behind it. The autojump threshold is a few real milliseconds, so the clock
never jumps while bytes are still in the kernel's pty buffers."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from drivers.base import MachineEvent, PortStatistics
from drivers.link import open_link
from drivers.sas.driver import SasDriver, SasSettings
from drivers.sim.egm import SasEgm
from drivers.sim.ledger import Ledger
from drivers.sim.line import PluggablePort
from gateway import daemon, ports
from tests.drivers.conftest import RecordingSink

INTERVAL = 0.2
OFFLINE_WITHIN = max(2 * INTERVAL, 0.5)


@pytest.fixture
def clock(autojump_clock: trio.testing.MockClock) -> trio.testing.MockClock:
    autojump_clock.autojump_threshold = 0.005
    return autojump_clock


def _machine(sink: RecordingSink, serial: str, asset: int) -> SasEgm:
    return SasEgm(1, Ledger(sink.waiter.poke), serial=serial, asset=asset)


def _first(sink: RecordingSink, kind: str, after: int = 0) -> MachineEvent | None:
    return next((e for e in sink.recorded[after:] if e.type == kind), None)


async def _lifecycle(tmp_path: Path, swap: bool,
                     ) -> tuple[RecordingSink, dict[str, float], PortStatistics]:
    sink = RecordingSink()
    device = tmp_path / "serial-by-id-port1"
    driver = SasDriver("port1", lambda: open_link(str(device), lock_dir=tmp_path), [1],
                       SasSettings(poll_interval_s=INTERVAL, rte=False))
    gw = SimpleNamespace(drivers={"port1": driver}, sink=sink, port_failures={},
                         port_errors={})
    marks: dict[str, float] = {}
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            port = PluggablePort(device, nursery)
            first = _machine(sink, "AAA", 111)
            await port.plug([first])
            await nursery.start(ports.supervise_port, gw, "port1")
            # Normal mode: discovery goes before the next GP, so the exception raised now is
            # reported after the identity was read.
            await sink.waiter.until(lambda: _first(sink, "deviceOnline") is not None)
            first.raise_exception(0x11, b"", trio.current_time())
            await sink.waiter.until(lambda: not first.ledger.pending())

            marks["unplugged"] = trio.current_time()
            await port.unplug()
            await sink.waiter.until(lambda: _first(sink, "deviceOffline") is not None)
            marks["offline"] = _first(sink, "deviceOffline").monotonic  # type: ignore[union-attr]
            await trio.sleep(2.0)  # unplugged for a while: failed opens, growing backoff

            second = _machine(sink, "BBB", 222) if swap else first
            seen = len(sink.recorded)
            marks["replugged"] = trio.current_time()
            await port.plug([second])
            await sink.waiter.until(lambda: _first(sink, "deviceOnline", seen) is not None)
            marks["online"] = _first(sink, "deviceOnline", seen).monotonic  # type: ignore[union-attr]
            second.raise_exception(0x13, b"", trio.current_time())
            await sink.waiter.until(lambda: not second.ledger.pending())
            stats = driver.statistics()
            nursery.cancel_scope.cancel()
    return sink, marks, stats


async def test_vanished_device_marks_offline_at_once_and_a_replug_resumes(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    sink, marks, stats = await _lifecycle(tmp_path, swap=False)
    offline = _first(sink, "deviceOffline")
    assert offline is not None and offline.data["reason"].startswith("link down: ")
    assert offline.machine.serial == "AAA"  # the machine that went away
    assert marks["offline"] - marks["unplugged"] <= OFFLINE_WITHIN
    # The first reopen after the replug comes within the backoff cap (5 s, full jitter).
    assert marks["online"] - marks["replugged"] <= ports.PORT_RETRY_MAX_S + 0.5
    assert [e.type for e in sink.recorded if e.type.startswith("device")] == [
        "deviceOnline", "deviceOffline", "deviceOnline"]
    assert _first(sink, "machineReplaced") is None
    assert [e.source.code for e in sink.exceptions()] == [0x11, 0x13]
    assert {(e.machine.serial, e.machine.asset) for e in sink.exceptions()} == {("AAA", "111")}
    assert stats.state == "running" and stats.machines[1]["online"]


async def test_a_swapped_machine_is_reported_and_its_identity_carried(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    sink, _, _ = await _lifecycle(tmp_path, swap=True)
    replaced = _first(sink, "machineReplaced")
    assert replaced is not None
    assert replaced.data["changed"] == ["serial", "asset"]
    assert (replaced.data["previous_serial"], replaced.data["previous_asset"]) == ("AAA", "111")
    assert (replaced.machine.serial, replaced.machine.asset) == ("BBB", "222")
    after_offline = sink.recorded[sink.recorded.index(_first(sink, "deviceOffline")) + 1:]
    # Nothing after the swap carries the old identity; after machineReplaced, the new one.
    assert all(e.machine.serial != "AAA" for e in after_offline)
    later = sink.recorded[sink.recorded.index(replaced):]
    assert all((e.machine.serial, e.machine.asset) == ("BBB", "222") for e in later)
    assert sink.exceptions()[-1].source.code == 0x13


async def test_a_device_missing_at_start_marks_its_machines_offline(
        tmp_path: Path, clock: trio.testing.MockClock) -> None:
    sink = RecordingSink()
    driver = SasDriver("port1", lambda: open_link(str(tmp_path / "absent"), lock_dir=tmp_path),
                       [1, 2], SasSettings(poll_interval_s=INTERVAL))
    gw = SimpleNamespace(drivers={"port1": driver}, sink=sink, port_failures={},
                         port_errors={})
    async with trio.open_nursery() as nursery:
        await nursery.start(ports.supervise_port, gw, "port1")
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    offline = [e for e in sink.recorded if e.type == "deviceOffline"]
    # Once per machine, not once per failed open.
    assert [e.machine.address for e in offline] == [1, 2]
    assert all("No such file" in e.data["reason"] for e in offline)
    assert all(e.monotonic <= OFFLINE_WITHIN for e in offline)
    assert driver.statistics().state == "down"
    # Backoff: short first retry, capped, jittered: 30 s of a missing device is dozens of
    # attempts at most, never a busy loop.
    assert 6 <= gw.port_failures["port1"] <= 200


async def test_reopen_backoff_is_the_jittered_helper_starting_short() -> None:
    delays = [ports.backoff_delay(n, initial=ports.PORT_RETRY_INITIAL_S,
                                   maximum=ports.PORT_RETRY_MAX_S, random=lambda: 0.999)
              for n in range(8)]
    assert delays[0] <= 1.0 and max(delays) <= ports.PORT_RETRY_MAX_S
    assert delays == sorted(delays)


async def test_health_diag_board_and_metrics_agree_when_a_device_vanishes(
        tmp_path: Path) -> None:
    # The whole daemon on real time (its outbox, uplink and control socket), one pluggable
    # device: when it vanishes, every view says port1/1 is offline, and why.

    from gateway.control import snapshot
    from gateway.feed.server import decode_envelope
    from gateway.feed.state import AlertBoard
    from gateway.receiver.server import ReceiverSettings, serve_receiver
    from gateway.signing import write_signing_key
    from tests.gateway.test_control import GATEWAY_ID, gateway_config, short_dir, wait_until

    device = tmp_path / "serial-by-id-port1"
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            signer = write_signing_key(tmp_path / "gw.key")
            (tmp_path / "token").write_text("control-test-token\n")
            (tmp_path / "token").chmod(0o600)
            receiver = await nursery.start(serve_receiver, ReceiverSettings(
                host="127.0.0.1", port=0, db_path=tmp_path / "rx.db"))
            receiver.store.register(GATEWAY_ID, "control-test-token",
                                    bytes(signer.verify_key).hex())
            port = PluggablePort(device, nursery)
            await port.plug([SasEgm(1, Ledger(), serial="AAA", asset=111)])
            config = gateway_config(tmp_path, [str(device)], receiver.url,
                                    short_dir(tmp_path) / "control.sock")
            gw = await nursery.start(partial(daemon.run, config, handle_signals_=False))
            machine = gw.drivers["port1"].statistics

            await wait_until(gw, lambda: machine().machines[1]["online"])
            committed: list[str] = []
            gw.outbox.commit_listeners.append(
                lambda envelopes: committed.extend(e["event"] for e in envelopes))
            await port.unplug()
            await wait_until(gw, lambda: "deviceOffline" in committed)
            code, health = gw.monitor.health()
            metrics = gw.monitor.metrics().decode()
            diag = await snapshot(gw)
            rows = await gw.outbox.read_after(0, 1000)
            nursery.cancel_scope.cancel()
    board = AlertBoard()
    for _, body in rows:
        board.apply(decode_envelope(body))
    [offline] = [a for a in board.alerts if a.kind == "offline"]
    assert offline.machine == "port1/1" and offline.data["reason"].startswith("link down")
    [m] = diag["ports"]["port1"]["machines"]
    assert m["state"] == "offline" and m["offline_reason"] == offline.data["reason"]
    assert diag["ports"]["port1"]["state"] == "down"
    assert health["machines"] == {"online": 0, "total": 1, "offline": [
        {"machine": "port1/1", "reason": offline.data["reason"]}]}
    assert code == 503 and health["status"] == "degraded"
    assert 'gateway_machine_up{address="1",port="port1"} 0.0' in metrics
