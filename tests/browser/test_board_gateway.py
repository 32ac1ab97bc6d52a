"""The alert board as floor staff meet it: the whole gateway running (simulated machines on
pseudo-terminals, the real daemon), the platform gone, and an attendant in headless Chromium.

The receiver is stopped once the gateway has connected, so the board must show the uplink-down
banner; a simulated machine's slot door opens; the attendant acknowledges it from the page. A
screenshot is saved to test-output/alert-board.png.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
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
    PortSection,
    UplinkSection,
)
from gateway.demo import _prepare
from gateway.feed.protocol import hash_token
from gateway.receiver.server import ReceiverSettings, serve_receiver
from gateway.signing import decode_envelope

from .test_board_page import CHROMIUM, DevTools, start_chromium

OUTPUT = Path(__file__).parents[2] / "test-output"


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
async def test_attendant_acknowledges_a_door_while_the_uplink_is_down(tmp_path: Path):
    made = _prepare(tmp_path)
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            receiver_scope = trio.CancelScope()

            async def receiver(*, task_status=trio.TASK_STATUS_IGNORED) -> None:
                with receiver_scope:
                    await serve_receiver(ReceiverSettings(
                        host="127.0.0.1", port=0, db_path=tmp_path / "receiver.db",
                        certfile=tmp_path / "receiver.pem", keyfile=tmp_path / "receiver.key"),
                        task_status=task_status)

            handle = await nursery.start(receiver)
            handle.store.register("board-gw", made["token"],
                                  bytes(made["signer"].verify_key).hex())
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
            )
            gw = await nursery.start(partial(daemon.run, config, handle_signals_=False))
            while not gw.uplink.statistics()["connected"]:
                await gw.uplink.wait_changed()
            receiver_scope.cancel()  # the platform goes away
            while gw.uplink.statistics()["connected"]:
                await gw.uplink.wait_changed()

            egm = fleet.machines[0]
            egm.raise_exception(0x11, b"", trio.current_time())  # slot door opened

            process, browser_url = await start_chromium(tmp_path / "profile", nursery)
            try:
                async with open_websocket_url(browser_url, max_message_size=32 * 2**20) as ws:
                    tools = DevTools(ws)
                    target = await tools.call("Target.createTarget", url="about:blank")
                    attached = await tools.call("Target.attachToTarget",
                                                targetId=target["targetId"], flatten=True)
                    tools.session = attached["sessionId"]
                    for domain in ("Page", "Runtime"):
                        await tools.call(f"{domain}.enable")
                    await tools.call("Emulation.setDeviceMetricsOverride", width=1100,
                                     height=700, deviceScaleFactor=1, mobile=False)
                    await tools.call("Page.navigate", url=f"http://127.0.0.1:{gw.feed_port}/")
                    await tools.event("Page.loadEventFired")
                    await tools.wait_for("!document.getElementById('login').hidden")
                    await tools.evaluate(
                        "document.getElementById('token').value = 'attendant-token';"
                        "document.getElementById('login-form').requestSubmit()")

                    await tools.wait_for("document.querySelector('.alert.kind-door')")
                    banner = await tools.wait_for(
                        "(() => { const b = document.getElementById('uplink-banner');"
                        " return b.hidden ? null : b.textContent; })()")
                    assert "Platform connection lost" in banner
                    assert "bank-a-01/1" in await tools.evaluate(
                        "document.querySelector('.alert.kind-door').closest('.machine')"
                        ".querySelector('h2').textContent")

                    await tools.evaluate(
                        "document.querySelector('.alert.kind-door .ack-button').click()")
                    text = await tools.wait_for(
                        "document.querySelector('.alert.kind-door.acknowledged .ack')"
                        "?.textContent")
                    assert text == "acknowledged by ann"

                    shot = await tools.call("Page.captureScreenshot", format="png")
                    OUTPUT.mkdir(exist_ok=True)
                    import base64
                    (OUTPUT / "alert-board.png").write_bytes(base64.b64decode(shot["data"]))
            finally:
                process.kill()

            # The acknowledgement is a signed event in the outbox, waiting for the platform.
            last = decode_envelope((await gw.outbox.read_after(gw.outbox.last_seq - 1, 1))[0][1])
            assert (last["event"], last["data"]["by"]) == ("alertAcknowledged", "ann")
            assert gw.outbox.depth() > 0
            nursery.cancel_scope.cancel()
