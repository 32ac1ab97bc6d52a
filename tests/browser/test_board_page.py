"""The alert board page: its logic under node, and the real page in headless Chromium against a
live feed server, driven over the DevTools protocol (a WebSocket, so trio-websocket is the client).

Chromium comes from Debian (`apt-get install chromium`) and node from the machine image; a test
whose tool is missing is skipped with the reason, the rest of the feed is covered in tests/gateway.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import trio
from trio_websocket import open_websocket_url

from drivers.base import MachineRef
from gateway.events import system_draft
from gateway.feed.protocol import TokenEntry, hash_token
from gateway.feed.server import FeedServer, FeedSettings
from gateway.signing import decode_envelope

HERE = Path(__file__).parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NODE = shutil.which("node")
TOKENS = (TokenEntry("ann", "attendant", hash_token("attendant-token")),)

# Resolves once `predicate` is true, re-checking on every DOM change: waits on the page's own
# events instead of polling.
WAIT_FOR = """(predicate) => new Promise((resolve) => {
  let observer = null;
  const check = () => {
    let value = null;
    try { value = predicate(); } catch (err) { value = null; }
    if (value) { if (observer) observer.disconnect(); resolve(value); return true; }
    return false;
  };
  if (!check()) {
    observer = new MutationObserver(check);
    observer.observe(document, {subtree: true, childList: true, attributes: true,
                                characterData: true});
  }
})"""


@pytest.mark.skipif(NODE is None, reason="node is not installed")
def test_board_logic_under_node():
    result = subprocess.run([NODE, "--test", str(HERE / "board_core.test.js")],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


class DevTools:
    """A minimal Chrome DevTools Protocol client over one browser WebSocket."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.session: str | None = None
        self._next = 0
        self.events: list[dict[str, Any]] = []

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        await self.ws.send_message(json.dumps(message))
        while True:
            reply = json.loads(await self.ws.get_message())
            if reply.get("id") == self._next:
                assert "error" not in reply, reply
                return reply.get("result", {})
            self.events.append(reply)

    async def event(self, method: str) -> dict[str, Any]:
        for i, seen in enumerate(self.events):
            if seen.get("method") == method:
                return self.events.pop(i)
        while True:
            message = json.loads(await self.ws.get_message())
            if message.get("method") == method:
                return message
            self.events.append(message)

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                                 returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    async def wait_for(self, predicate: str) -> Any:
        return await self.evaluate(f"({WAIT_FOR})(() => {predicate})")

    def problems(self) -> list[str]:
        """Uncaught page exceptions and Content-Security-Policy violations seen so far."""
        out = [e["params"]["exceptionDetails"].get("text", "") for e in self.events
               if e.get("method") == "Runtime.exceptionThrown"]
        out += [e["params"]["entry"]["text"] for e in self.events
                if e.get("method") == "Log.entryAdded"
                and "Content Security Policy" in e["params"]["entry"]["text"]]
        return out


async def start_chromium(profile: Path, nursery: trio.Nursery) -> tuple[trio.Process, str]:
    process = await trio.lowlevel.open_process(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    buffer = b""
    while b"DevTools listening on " not in buffer or not buffer.endswith(b"\n"):
        chunk = await process.stderr.receive_some()
        if not chunk:
            raise RuntimeError(f"chromium exited: {buffer.decode(errors='replace')}")
        buffer += chunk
    url = buffer.split(b"DevTools listening on ", 1)[1].split(b"\n", 1)[0].decode().strip()

    async def drain() -> None:  # keep its stderr pipe from filling up
        while await process.stderr.receive_some():
            pass
    nursery.start_soon(drain)
    return process, url


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
async def test_board_in_headless_chromium(make_outbox, nursery, tmp_path):
    with trio.fail_after(60):
        outbox = make_outbox()
        await nursery.start(outbox.run_writer)

        async def append(event: str, data: dict | None = None, port: str | None = "bank-a-01"):
            return await outbox.append(system_draft(
                event, data, now=time.time(), monotonic=trio.current_time(),
                machine=MachineRef(port, 1) if port else None))

        handpay = await append("handpayPending", {"amount_cents": 250000})
        await append("doorOpened", {"door": "main"}, port="bank-b-07")
        await append("uplinkDown", {"reason": "platform unreachable"}, port=None)

        feed_scope = trio.CancelScope()

        async def serve(port: int, *, task_status) -> None:
            with feed_scope:
                server = FeedServer(FeedSettings(port=port, tokens=TOKENS), outbox, dict)
                await server.run(task_status=task_status)

        port = await nursery.start(serve, 0)
        process, browser_url = await start_chromium(tmp_path / "profile", nursery)
        try:
            async with open_websocket_url(browser_url, max_message_size=16 * 2**20) as ws:
                tools = DevTools(ws)
                target = await tools.call("Target.createTarget", url="about:blank")
                attached = await tools.call("Target.attachToTarget",
                                            targetId=target["targetId"], flatten=True)
                tools.session = attached["sessionId"]
                for domain in ("Page", "Runtime", "Log"):
                    await tools.call(f"{domain}.enable")
                await tools.call("Page.navigate", url=f"http://127.0.0.1:{port}/")
                await tools.event("Page.loadEventFired")

                # Not logged in: the form shows; log in as the page's user would.
                assert await tools.wait_for("!document.getElementById('login').hidden")
                await tools.evaluate("document.getElementById('token').value = 'attendant-token';"
                                     "document.getElementById('login-form').requestSubmit()")
                await tools.wait_for("document.querySelectorAll('.alert').length === 2")
                assert await tools.evaluate(
                    "sessionStorage.getItem('casino-feed-token')") == "attendant-token"
                assert await tools.evaluate(
                    "getComputedStyle(document.getElementById('login')).display") == "none"
                banner, title = await tools.evaluate(
                    "(() => { const b = document.getElementById('uplink-banner');"
                    " return b.hidden ? null : [b.querySelector('#uplink-text').textContent,"
                    " b.title]; })()")
                # Plain words for the floor; the uplink's own reason only in the tooltip.
                assert banner.startswith("Platform connection lost since ") and \
                    "(network)" in banner, banner
                assert title == "platform unreachable"
                assert await tools.evaluate(
                    "[...document.querySelectorAll('.machine h2')].map(h => h.textContent)"
                ) == ["bank-b-07/1", "bank-a-01/1"]
                assert await tools.evaluate(
                    "document.querySelector('.kind-handpay .detail').textContent"
                ) == "2,500.00 USD"
                assert await tools.evaluate(
                    "document.querySelectorAll('.ack-button').length") == 2
                assert (await tools.evaluate("document.getElementById('status').textContent")
                        ) == "Connected as ann (attendant)"

                # A new tilt is pushed at once and flashes.
                await append("tilt", {"kind": "reel"}, port="bank-c-02")
                await tools.wait_for("document.querySelector('.alert.kind-tilt.flash')")

                # Acknowledge the handpay from the page: recorded in the outbox, shown by whom.
                await tools.evaluate("document.querySelector('.kind-handpay .ack-button').click()")
                text = await tools.wait_for(
                    "document.querySelector('.alert.kind-handpay.acknowledged .ack')"
                    "?.textContent")
                assert text == "acknowledged by ann"
                body = (await outbox.read_after(outbox.last_seq - 1, 1))[0][1]
                ack = decode_envelope(body)
                assert (ack["event"], ack["data"]["alert_seq"], ack["data"]["by"]) == (
                    "alertAcknowledged", handpay, "ann")

                # The uplink comes back: the banner goes.
                await append("uplinkUp", {"down_for_s": 12.5}, port=None)
                await tools.wait_for("document.getElementById('uplink-banner').hidden")

                # The feed restarts: the page reconnects by itself and shows what happened.
                feed_scope.cancel()
                await tools.wait_for("document.getElementById('status').textContent"
                                     ".startsWith('Gateway')")
                await append("deviceOffline", port="bank-d-04")
                feed_scope = trio.CancelScope()
                await nursery.start(serve, port)
                await tools.wait_for("document.querySelector('.alert.kind-offline')")
                assert (await tools.evaluate("document.getElementById('status').textContent")
                        ) == "Connected as ann (attendant)"
                assert tools.problems() == []
        finally:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
