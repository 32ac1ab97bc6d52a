"""A clean stop (SIGTERM): a signed gatewayStopping is the outbox's last event, and the delivered
mark persisted is the last ack the uplink heard (docs/uplink-protocol.md sections 6 and 9)."""

from __future__ import annotations

import os
import signal
from functools import partial
from pathlib import Path

import msgpack
import trio
import trio.testing

from drivers.sim.fleet import serve_fleet
from gateway import daemon, ports
from gateway.outbox import Outbox, OutboxSettings, open_readonly
from gateway.receiver.server import ReceiverSettings, serve_receiver
from gateway.signing import write_signing_key
from tests.gateway.test_control import GATEWAY_ID, gateway_config, short_dir, wait_until


async def test_sigterm_records_gateway_stopping_and_the_last_ack(tmp_path: Path) -> None:
    signer = write_signing_key(tmp_path / "gw.key")
    (tmp_path / "token").write_text("stop-test-token\n")
    os.chmod(tmp_path / "token", 0o600)
    stopped = trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            receiver = await nursery.start(serve_receiver, ReceiverSettings(
                host="127.0.0.1", port=0, db_path=tmp_path / "rx.db"))
            receiver.store.register(GATEWAY_ID, "stop-test-token", bytes(signer.verify_key).hex())
            fleet = await nursery.start(partial(serve_fleet, 2, rte=True, seed=3,
                                                events_per_second=20))
            config = gateway_config(tmp_path, fleet.device_paths, receiver.url,
                                    short_dir(tmp_path) / "control.sock")

            async def run_until_stopped(task_status: trio.TaskStatus[daemon.Gateway]) -> None:
                await daemon.run(config, handle_signals_=True, task_status=task_status)
                stopped.set()

            gw = await nursery.start(run_until_stopped)
            await wait_until(gw, lambda: gw.uplink.statistics()["last_ack_seq"] >= 10)
            os.kill(os.getpid(), signal.SIGTERM)
            await stopped.wait()
            last_ack = gw.uplink.statistics()["last_ack_seq"]
            nursery.cancel_scope.cancel()
    conn = open_readonly(config.outbox_path)
    try:
        last = conn.execute("SELECT type, body FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        delivered = int(conn.execute(
            "SELECT value FROM meta WHERE key = 'delivered_seq'").fetchone()[0])
    finally:
        conn.close()
    assert last[0] == "gatewayStopping"
    assert msgpack.unpackb(last[1])["data"] == {"reason": "SIGTERM"}
    assert delivered == last_ack


async def test_acks_heard_after_the_last_commit_survive_close(tmp_path: Path) -> None:
    signer = write_signing_key(tmp_path / "gw.key")
    settings = OutboxSettings(path=tmp_path / "o.db", gateway_id="gw-1")
    outbox = Outbox.open(settings, signer)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            for _ in range(3):
                await outbox.append_system("deviceOnline", {})
            nursery.cancel_scope.cancel()
    await outbox.mark_delivered(3)  # the writer is gone: no commit will carry this
    outbox.close()
    again = Outbox.open(settings, signer)
    try:
        assert again.delivered_seq == 3
    finally:
        again.close()


async def test_a_port_stopped_during_start_up_still_reports_started() -> None:
    """A SIGTERM while a port is still starting: its scope is cancelled before the driver is
    up, and nursery.start must return rather than fail the stop."""
    from types import SimpleNamespace

    class NeverUp:
        async def run(self, sink: object, *, task_status: object) -> None:
            await trio.sleep_forever()

    gw = SimpleNamespace(drivers={"p": NeverUp()}, sink=None, port_failures={}, port_errors={},
                         port_scopes=[])

    async def stop_when_blocked() -> None:
        await trio.testing.wait_all_tasks_blocked()
        for scope in gw.port_scopes:
            scope.cancel()

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_when_blocked)
            await nursery.start(ports.stoppable_port, gw, "p")
    assert len(gw.port_scopes) == 1 and gw.port_scopes[0].cancelled_caught
