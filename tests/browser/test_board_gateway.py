"""The alert board as floor staff meet it: the whole gateway running (simulated machines on
pseudo-terminals, the real daemon), the platform gone, and an attendant in headless Chromium.

The receiver is stopped once the gateway has connected, so the board must show the uplink-down
banner and /health must agree; a simulated machine's slot door opens; the attendant acknowledges
it from the page; then the gateway itself stops and the page says so over the whole page.
Screenshots go to test-output/.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import trio

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
from gateway.demo import _prepare
from gateway.feed.protocol import hash_token
from gateway.receiver.server import ReceiverSettings, serve_receiver
from gateway.signing import decode_envelope

from ..gateway.test_feed_server import http_get
from .live import OUTPUT, TrioThread
from .taps import tap_acknowledge


def test_attendant_acknowledges_a_door_while_the_uplink_is_down(browser, page_problems,
                                                                tmp_path: Path):
    made = _prepare(tmp_path)

    async def start(nursery: trio.Nursery):
        receiver_scope, gateway_scope = trio.CancelScope(), trio.CancelScope()

        async def receiver(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
            with receiver_scope:
                await serve_receiver(ReceiverSettings(
                    host="127.0.0.1", port=0, db_path=tmp_path / "receiver.db",
                    certfile=tmp_path / "receiver.pem", keyfile=tmp_path / "receiver.key"),
                    task_status=task_status)

        handle = await nursery.start(receiver)
        handle.store.register("board-gw", made["token"], bytes(made["signer"].verify_key).hex())
        fleet = await nursery.start(partial(serve_fleet, 2, seed=3, events_per_second=0.5))
        fleet.stop_play()  # only the door below, so the page's state is predictable
        config = Config(
            gateway=GatewaySection(id="board-gw", key_file=made["key_file"],
                                   state_dir=tmp_path / "state"),
            uplink=UplinkSection(url=handle.url, token_file=tmp_path / "uplink.token",
                                 ca_file=tmp_path / "ca.pem", backoff_initial_s=0.2,
                                 backoff_max_s=1.0),
            ports=tuple(PortSection(name=f"bank-a-{i + 1:02d}", device=Path(p))
                        for i, p in enumerate(fleet.device_paths)),
            log=LogSection(level="warning"),
            feed=FeedSection(port=0, tokens=(FeedTokenSection(
                name="ann", sha256=hash_token("attendant-token"), role="attendant"),)),
            monitor=MonitorSection(port=0, uplink_down_s=0.0),
        )

        async def gateway(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
            with gateway_scope:
                await daemon.run(config, handle_signals_=False, task_status=task_status)

        gw = await nursery.start(gateway)
        while not gw.uplink.statistics()["connected"]:
            await gw.uplink.wait_changed()
        receiver_scope.cancel()  # the platform goes away
        while gw.uplink.statistics()["connected"]:
            await gw.uplink.wait_changed()
        fleet.machines[0].raise_exception(0x11, b"", trio.current_time())  # slot door opened
        return gw, gateway_scope

    with TrioThread(start) as site:
        gw, gateway_scope = site.value
        page = page_problems(browser.new_page(viewport={"width": 1100, "height": 700}))
        page.goto(f"http://127.0.0.1:{gw.feed_port}/")
        page.wait_for_selector("#login:not([hidden])")
        page.fill("#token", "attendant-token")
        page.click("#login-form button")
        door = '.tile.kind-door[data-machine="bank-a-01/1"]'
        page.wait_for_selector(door)
        banner = page.wait_for_selector("#uplink-banner:not([hidden])").text_content()
        assert "Platform connection lost" in banner
        # The board and /health say the same thing.
        code, _, body = site.call(http_get, gw.monitor_port, "/health")
        health = json.loads(body)
        assert code == 503 and health["uplink"]["state"] == "down"
        assert page.evaluate("document.getElementById('uplink-banner').title") == \
            health["uplink"]["reason"]
        assert page.locator(f"{door} .machine-name").text_content() == "Bank A 01 \u00B7 #1"
        assert page.locator(f"{door} .detail").text_content() == "Main door"

        tap_acknowledge(page, door)
        assert "DOOR OPEN" in page.locator("#confirm-text").text_content()
        page.locator("#confirm-yes").click()
        extra = page.wait_for_selector(f"{door}.acknowledged .extra").text_content()
        assert extra.startswith("Acknowledged by ann at ")
        assert extra.endswith("stays until the machine clears it")
        OUTPUT.mkdir(exist_ok=True)
        page.screenshot(path=str(OUTPUT / "alert-board.png"))

        # The acknowledgement is a signed event in the outbox, waiting for the platform.
        rows = site.call(gw.outbox.read_after, gw.outbox.last_seq - 5, 10)
        acks = [decode_envelope(b) for _, b in rows]
        acks = [e for e in acks if e["event"] == "alertAcknowledged"]
        assert [(e["data"]["by"], e["machine"]["port"]) for e in acks] == [("ann", "bank-a-01")]
        assert gw.outbox.depth() > 0

        # The gateway itself stops: the whole page says so and its buttons do nothing.
        site.run_sync(gateway_scope.cancel)
        page.wait_for_selector("#unreachable:not([hidden])", timeout=20000)
        assert page.locator("body.disconnected").count() == 1
        assert all(b.is_disabled() for b in page.locator(".tile button").all())
        assert page_problems.problems == []
