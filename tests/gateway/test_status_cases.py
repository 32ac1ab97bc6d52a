"""Status that never lies: for each way the platform link can be wrong, the feed's state (what
the board shows), /health (status code and body) and /metrics say the same thing, because they
all read one tracker (gateway/status.py). The real daemon runs with simulated machines, the
reference receiver, the staff feed and the monitor listener.

The board page itself, in these states and with the gateway down, is in
tests/browser/test_board_states.py.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import trio
from trio_websocket import open_websocket_url

from drivers.sim.fleet import serve_fleet
from gateway import daemon
from gateway.config import (
    Config,
    FeedSection,
    FeedTokenSection,
    GatewaySection,
    LogSection,
    MonitorSection,
    PortSection,
    UplinkSection,
)
from gateway.events import rfc3339
from gateway.feed.protocol import hash_token
from gateway.receiver.server import ReceiverSettings, serve_receiver
from gateway.signing import decode_envelope, write_signing_key

from .test_control import all_online, wait_until
from .test_feed_server import http_get
from .uplink_fakes import Proxy

GATEWAY_ID = "status-gw"
TOKEN = "status-uplink-token"


@dataclass
class Site:
    tmp: Path
    nursery: trio.Nursery
    signer: Any
    fleet: Any

    def config(self, url: str, **uplink: Any) -> Config:
        return Config(
            gateway=GatewaySection(id=GATEWAY_ID, key_file=self.tmp / "gw.key",
                                   state_dir=self.tmp / "state"),
            uplink=UplinkSection(url=url, token_file=self.tmp / "token", backoff_initial_s=0.05,
                                 backoff_max_s=0.3, **uplink),
            ports=(PortSection.of("bank-a-01", Path(self.fleet.device_paths[0]),
                                  (1,), poll_interval_ms=40),),
            log=LogSection(level="warning"),
            feed=FeedSection(port=0, tokens=(FeedTokenSection(
                name="vic", sha256=hash_token("viewer-token"), role="viewer"),)),
            monitor=MonitorSection(port=0, uplink_down_s=0.5),
        )

    async def receiver(self, scope: trio.CancelScope) -> Any:
        async def serve(*, task_status: trio.TaskStatus[Any]) -> None:
            with scope:
                await serve_receiver(ReceiverSettings(host="127.0.0.1", port=0,
                                                      db_path=self.tmp / "rx.db"),
                                     task_status=task_status)
        handle = await self.nursery.start(serve)
        handle.store.register(GATEWAY_ID, TOKEN, bytes(self.signer.verify_key).hex())
        return handle

    async def gateway(self, config: Config, scope: trio.CancelScope,
                      done: trio.Event | None = None) -> daemon.Gateway:
        """Start the daemon under `scope`; `done` is set once it has stopped (outbox closed)."""
        async def run(*, task_status: trio.TaskStatus[daemon.Gateway]) -> None:
            try:
                with scope:
                    await daemon.run(config, handle_signals_=False, task_status=task_status)
            finally:
                if done is not None:
                    done.set()
        return await self.nursery.start(run)


@asynccontextmanager
async def site(tmp_path: Path) -> AsyncIterator[Site]:
    async with trio.open_nursery() as nursery:
        signer = write_signing_key(tmp_path / "gw.key")
        (tmp_path / "token").write_text(TOKEN + "\n")
        os.chmod(tmp_path / "token", 0o600)
        fleet = await nursery.start(partial(serve_fleet, 1, seed=11, events_per_second=5.0))
        try:
            yield Site(tmp_path, nursery, signer, fleet)
        finally:
            nursery.cancel_scope.cancel()


async def closed_port_url() -> str:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()
    return f"ws://127.0.0.1:{port}/v1/stream"


async def views(gw: daemon.Gateway) -> tuple[dict, tuple[int, dict], dict[str, float]]:
    """(the board's uplink state from a fresh feed client, /health, /metrics samples)."""
    async with open_websocket_url(f"ws://127.0.0.1:{gw.feed_port}/feed") as ws:
        await ws.send_message(json.dumps({"type": "auth", "token": "viewer-token"}))
        board = json.loads(await ws.get_message())["state"]["uplink"]
    code, _, body = await http_get(gw.monitor_port, "/health")
    _, _, text = await http_get(gw.monitor_port, "/metrics")
    samples = {}
    for line in text.decode().splitlines():
        match = re.match(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return board, (code, json.loads(body)), samples


def assert_agree(board: dict, health: tuple[int, dict], metrics: dict[str, float], *,
                 state: str) -> None:
    code, body = health
    assert board == body["uplink"], (board, body["uplink"])
    assert board["state"] == state
    assert board["connected"] is (state == "up")
    assert board["reason"] and board["since"]
    assert metrics[f'gateway_uplink_state{{state="{state}"}}'] == 1.0
    assert metrics["gateway_uplink_up"] == (1.0 if state == "up" else 0.0)
    since = metrics["gateway_uplink_state_since_seconds"]
    assert rfc3339(since) == board["since"]
    degraded = state != "up"
    assert (code, body["status"]) == ((503, "degraded") if degraded else (200, "ok"))
    assert metrics["gateway_health_degraded"] == (1.0 if degraded else 0.0)
    if state != "up":
        assert any(r.startswith(f"uplink {state}") for r in body["reasons"]), body["reasons"]


async def settled(gw: daemon.Gateway) -> None:
    """The machine answers and the gateway has run past /health's uplink limit (0.5 s): waits
    on the outbox's commits (the simulated machine plays all the time)."""
    await wait_until(gw, lambda: all_online(gw) and time.time() - gw.started_at > 0.6)


async def wait_attempts(gw: daemon.Gateway, count: int) -> None:
    while gw.uplink.statistics()["attempts"] < count:
        await gw.uplink.wait_changed()


async def uplink_events(gw: daemon.Gateway) -> list[tuple[str, dict]]:
    rows = await gw.outbox.read_after(0, 100_000)
    out = []
    for _seq, body in rows:
        envelope = decode_envelope(body)
        if envelope["event"] in ("uplinkUp", "uplinkDown"):
            out.append((envelope["event"], envelope["data"]))
    return out


async def test_never_connected_is_down_since_start_everywhere(tmp_path: Path):
    with trio.fail_after(30):
        async with site(tmp_path) as s:
            gw = await s.gateway(s.config(await closed_port_url()), trio.CancelScope())
            await wait_attempts(gw, 2)
            await settled(gw)
            board, health, metrics = await views(gw)
            assert_agree(board, health, metrics, state="down")
            assert board["reason"].startswith("never connected since start: ")
            assert board["since"] == rfc3339(gw.started_at)
            # More retries: the same outage, the same `since`; one uplinkDown recorded.
            await wait_attempts(gw, 5)
            again, health, metrics = await views(gw)
            assert again["since"] == board["since"]
            assert_agree(again, health, metrics, state="down")
            [(event, data)] = await uplink_events(gw)
            assert event == "uplinkDown"
            assert data["reason"].startswith("never connected since start: ")


async def test_restart_while_the_platform_is_down_is_not_reported_connected(tmp_path: Path):
    with trio.fail_after(45):
        async with site(tmp_path) as s:
            receiver_scope, gateway_scope = trio.CancelScope(), trio.CancelScope()
            receiver = await s.receiver(receiver_scope)
            stopped = trio.Event()
            gw = await s.gateway(s.config(receiver.url), gateway_scope, stopped)
            while not gw.uplink.statistics()["connected"]:
                await gw.uplink.wait_changed()
            await settled(gw)
            board, health, metrics = await views(gw)
            assert_agree(board, health, metrics, state="up")
            # The gateway stops while the platform is up; then the platform goes away.
            gateway_scope.cancel()
            receiver_scope.cancel()
            url = receiver.url
            await stopped.wait()
            restarted = await s.gateway(s.config(url), trio.CancelScope())
            assert (await uplink_events(restarted))[-1][0] == "uplinkUp", \
                "the trap: the last uplink event in the outbox says up"
            await wait_attempts(restarted, 2)
            await settled(restarted)
            board, health, metrics = await views(restarted)
            assert_agree(board, health, metrics, state="down")
            assert board["reason"].startswith("never connected since start")


async def test_a_frozen_platform_is_reported_within_the_limit(tmp_path: Path):
    with trio.fail_after(45):
        async with site(tmp_path) as s:
            receiver = await s.receiver(trio.CancelScope())
            port = int(receiver.url.split(":")[2].split("/")[0])
            proxy = Proxy(port)
            await s.nursery.start(proxy.run)
            url = receiver.url.replace(f":{port}/", f":{proxy.port}/")
            gw = await s.gateway(replace(s.config(url), uplink=replace(
                s.config(url).uplink, frozen_after_s=2.0)), trio.CancelScope())
            while not gw.uplink.statistics()["connected"]:
                await gw.uplink.wait_changed()
            await settled(gw)
            async with open_websocket_url(f"ws://127.0.0.1:{gw.feed_port}/feed") as ws:
                await ws.send_message(json.dumps({"type": "auth", "token": "viewer-token"}))
                assert json.loads(await ws.get_message())["state"]["uplink"]["state"] == "up"
                # The platform keeps the connection and answers pings, but acknowledges nothing.
                proxy.drop_acks_above = 0
                began = trio.current_time()
                while True:
                    message = json.loads(await ws.get_message())
                    if message["type"] == "status" and message["uplink"]["state"] == "frozen":
                        break
                took = trio.current_time() - began
            assert took <= 2.0 + 2.5, took   # the limit, plus sampling and the push interval
            board, health, metrics = await views(gw)
            assert_agree(board, health, metrics, state="frozen")
            assert gw.uplink.statistics()["connected"], "the socket itself is still up"
            assert "uplink frozen" in gw.status_line()
