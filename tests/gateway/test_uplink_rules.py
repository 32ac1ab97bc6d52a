"""Gateway rules of docs/uplink-protocol.md not covered elsewhere: the token file (G-TOKEN-1),
the hello (G-HELLO-1), the wait for welcome (G-WELCOME-1), unknown keys (G-FRAME-2); and the
spec's rule-to-test table (section 12) naming a test that exists for every G- rule."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import msgpack
import pytest
import trio
import trio.testing
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request

from gateway.uplink import protocol as proto
from gateway.uplink.client import UplinkClient, UplinkRejectedError, UplinkSettings, _read_token
from tests.gateway.uplink_fakes import FakeOutbox, write_token

ROOT = Path(__file__).resolve().parents[2]


def test_token_file_is_stripped_and_checked_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("  s3cret-Token_1\n\n")
    assert _read_token(path) == "s3cret-Token_1"
    for bad in ("two words", "t\u00f6ken", "tab\there"):
        path.write_text(bad)
        with pytest.raises(UplinkRejectedError) as refused:
            _read_token(path)
        assert bad not in str(refused.value) and str(path) in str(refused.value)
    path.write_text("\n")
    with pytest.raises(UplinkRejectedError, match="empty"):
        _read_token(path)


def test_unknown_keys_in_platform_frames_are_ignored() -> None:
    frame = msgpack.packb({"type": "ack", "epoch": "e", "seq": 3, "x_future": [1]})
    assert proto.decode(frame) == proto.Ack("e", 3)
    frame = msgpack.packb({"type": "welcome", "epoch": "e", "high_water": 0, "hint": "x"})
    assert proto.decode(frame) == proto.Welcome("e", 0)


async def silent_after_hello(hellos: list[proto.Message], stream: trio.SocketStream) -> None:
    ws = WSConnection(ConnectionType.SERVER)
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, Request):
                await stream.send_all(ws.send(AcceptConnection()))
            elif isinstance(event, BytesMessage):
                hellos.append(proto.decode(bytes(event.data)))  # and never a welcome


async def test_hello_names_the_outbox_and_a_missing_welcome_is_a_timeout(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    autojump_clock.autojump_threshold = 0.02
    outbox = FakeOutbox()
    outbox.kids = ["ed25519:00000000000000aa", outbox.signer.kid]  # a retired key, then ours
    hellos: list[proto.Message] = []
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp,
                                                    partial(silent_after_hello, hellos), 0,
                                                    host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            client = UplinkClient(UplinkSettings(
                url=f"ws://127.0.0.1:{port}/v1/stream", token_file=write_token(tmp_path, "t"),
                connect_timeout_s=10.0, backoff_initial_s=0.01, backoff_max_s=0.05), outbox)
            await nursery.start(client.run)
            started = trio.current_time()
            while client.statistics()["last_error"] is None:
                await client.wait_changed()
            waited = trio.current_time() - started
            error = client.statistics()["last_error"]
            nursery.cancel_scope.cancel()
    assert hellos[0] == proto.Hello(outbox.gateway_id, outbox.epoch, tuple(outbox.kids))
    assert "no welcome within 10 s" in error
    assert 10 <= waited <= 11
    assert outbox.system == []  # never up: no uplinkUp, no uplinkDown


def test_every_gateway_rule_names_a_test_that_exists() -> None:
    spec = (ROOT / "docs" / "uplink-protocol.md").read_text()
    rules = set(re.findall(r"\bG-[A-Z]+-\d+\b", spec))
    table = dict(re.findall(r"^\| (G-[A-Z]+-\d+) \| `([^`]+)` \|$", spec, re.MULTILINE))
    assert set(table) == rules
    for rule, test in table.items():
        path, _, name = test.partition("::")
        assert re.search(rf"^(async )?def {re.escape(name)}\(",
                         (ROOT / path).read_text(), re.MULTILINE), f"{rule}: {test}"
