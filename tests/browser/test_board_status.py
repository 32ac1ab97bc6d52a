"""The status cases with the real daemon and the real page: never connected, restart while the
platform is down, frozen platform. In each, the banner on the page, the feed's state, /health
and /metrics say the same thing (tests/gateway/test_status_cases.py checks the last three in
detail; this adds the page)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from functools import partial
from pathlib import Path

import trio

from drivers.sim.fleet import serve_fleet
from gateway.signing import write_signing_key

from ..gateway.test_feed_server import http_get
from ..gateway.test_status_cases import TOKEN, Site, closed_port_url, settled, wait_attempts
from ..gateway.uplink_fakes import Proxy
from .live import TrioThread

BANNER = ("() => { const b = document.getElementById('uplink-banner');"
          " return b.hidden ? null : [document.getElementById('uplink-text').textContent,"
          " b.title, b.classList.contains('frozen')]; }")


def open_board(browser, page_problems, port: int):
    page = page_problems(browser.new_page(viewport={"width": 800, "height": 1000}))
    page.goto(f"http://127.0.0.1:{port}/")
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#token", "viewer-token")
    page.click("#login-form button")
    page.wait_for_selector("#login", state="hidden")
    return page


def agree(site: TrioThread, gw, page, *, starts: str, frozen: bool = False) -> None:
    text, title, is_frozen = page.wait_for_function(BANNER).json_value()
    code, _, body = site.call(http_get, gw.monitor_port, "/health")
    health = json.loads(body)
    _, _, metrics = site.call(http_get, gw.monitor_port, "/metrics")
    state = health["uplink"]["state"]
    assert code == 503 and text.startswith(starts), (text, health)
    assert title == health["uplink"]["reason"] and is_frozen is frozen
    assert f'gateway_uplink_state{{state="{state}"}} 1.0' in metrics.decode()
    assert state == ("frozen" if frozen else "down")


class Running:
    """A daemon started in the site's nursery that can be stopped and waited for."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.done = trio.Event()
        self.gw = None

    @classmethod
    async def start(cls, site: Site, config) -> Running:
        running = cls()
        running.gw = await site.gateway(config, running.scope, running.done)
        return running

    async def stop(self) -> None:
        """Stop it and wait until it has closed its outbox and ports."""
        self.scope.cancel()
        await self.done.wait()


def test_the_page_agrees_with_health_in_each_status_case(browser, page_problems,
                                                         tmp_path: Path):
    async def start(nursery: trio.Nursery) -> Site:
        signer = write_signing_key(tmp_path / "gw.key")
        (tmp_path / "token").write_text(TOKEN + "\n")
        os.chmod(tmp_path / "token", 0o600)
        fleet = await nursery.start(partial(serve_fleet, 1, seed=11, events_per_second=5.0))
        return Site(tmp_path, nursery, signer, fleet)

    with TrioThread(start) as thread:
        s: Site = thread.value

        # 1. Never connected since start.
        async def never() -> object:
            running = await Running.start(s, s.config(await closed_port_url()))
            await wait_attempts(running.gw, 2)
            await settled(running.gw)
            return running

        running = thread.call(never)
        page = open_board(browser, page_problems, running.gw.feed_port)
        agree(thread, running.gw, page,
              starts="Platform not connected since the gateway started at ")
        thread.call(running.stop)
        page.close()

        # 2. Restart while the platform is down (the last uplink event in the outbox says up).
        async def restart() -> object:
            receiver_scope = trio.CancelScope()
            receiver = await s.receiver(receiver_scope)
            first = await Running.start(s, s.config(receiver.url))
            while not first.gw.uplink.statistics()["connected"]:
                await first.gw.uplink.wait_changed()
            await first.stop()
            receiver_scope.cancel()
            running = await Running.start(s, s.config(receiver.url))
            await wait_attempts(running.gw, 2)
            await settled(running.gw)
            return running

        running = thread.call(restart)
        page = open_board(browser, page_problems, running.gw.feed_port)
        agree(thread, running.gw, page,
              starts="Platform not connected since the gateway started at ")
        thread.call(running.stop)
        page.close()

        # 3. A frozen platform: connected, acknowledging nothing.
        async def frozen() -> object:
            receiver = await s.receiver(trio.CancelScope())
            port = int(receiver.url.split(":")[2].split("/")[0])
            proxy = Proxy(port)
            await s.nursery.start(proxy.run)
            url = receiver.url.replace(f":{port}/", f":{proxy.port}/")
            config = s.config(url)
            gw = (await Running.start(s, replace(config, uplink=replace(
                config.uplink, frozen_after_s=2.0)))).gw
            while not gw.uplink.statistics()["connected"]:
                await gw.uplink.wait_changed()
            await settled(gw)
            return gw, proxy

        gw, proxy = thread.call(frozen)
        page = open_board(browser, page_problems, gw.feed_port)
        assert page.evaluate("document.getElementById('uplink-banner').hidden")
        proxy.drop_acks_above = 0
        page.wait_for_selector("#uplink-banner.frozen", timeout=15000)
        agree(thread, gw, page, starts="Platform not answering since ", frozen=True)
        assert page_problems.problems == []
