"""The uplink client against the reference receiver over real loopback sockets (TLS via trustme)."""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Message, Request

from gateway.receiver import ReceiverHandle, ReceiverSettings, serve_receiver
from gateway.signing import GENESIS, check_event, decode_envelope
from gateway.uplink import protocol as proto
from gateway.uplink.client import UplinkClient, UplinkSettings
from tests.gateway.uplink_fakes import FakeOutbox, Pki, envelope_types, register, write_token

TOKEN = "s3cret-token-for-tests"
FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, connect_timeout_s=5.0)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


def receiver_settings(tmp_path: Path, pki: Pki | None, port: int = 0) -> ReceiverSettings:
    return ReceiverSettings(port=port, db_path=tmp_path / "platform.db",
                            certfile=pki.server_pem if pki else None)


def client_settings(handle: ReceiverHandle, tmp_path: Path, pki: Pki | None,
                    **overrides: object) -> UplinkSettings:
    base = UplinkSettings(url=handle.url, token_file=write_token(tmp_path, TOKEN),
                          ca_file=pki.ca_file if pki else None, **FAST)  # type: ignore[arg-type]
    return replace(base, **overrides)  # type: ignore[arg-type]


async def until(client: UplinkClient, predicate: Callable[[dict[str, object]], bool]) -> None:
    while not predicate(client.statistics()):
        await client.wait_changed()


def assert_stored_once_with_valid_chain(handle: ReceiverHandle, outbox: FakeOutbox) -> None:
    stored = handle.store.events(outbox.gateway_id, outbox.epoch)
    assert [seq for seq, _ in stored] == list(range(1, outbox.last_seq + 1))
    assert [body for _, body in stored] == outbox.rows  # byte for byte what was signed
    keys = {outbox.signer.kid: outbox.signer.verify_key}
    prev = GENESIS
    for _, body in stored:
        prev = check_event(decode_envelope(body), keys, prev)


async def test_streams_every_event_once_over_tls(tmp_path: Path, pki: Pki) -> None:
    outbox = FakeOutbox()
    outbox.extend(1000)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve_receiver, receiver_settings(tmp_path, pki))
            assert handle.url.startswith("wss://127.0.0.1:")
            register(handle.store, outbox, TOKEN)
            client = UplinkClient(client_settings(handle, tmp_path, pki, batch_max=64, window=4),
                                  outbox)
            await nursery.start(client.run)
            await outbox.wait_delivered(1001)  # 1000 + uplinkUp
            # Events appended while connected flow too.
            outbox.extend(25)
            await outbox.wait_delivered(outbox.last_seq)
            stats = client.statistics()
            nursery.cancel_scope.cancel()
    assert stats["connected"] and stats["last_ack_seq"] == outbox.last_seq
    assert stats["reconnects"] == 0
    assert [t for t, _ in outbox.system] == ["uplinkUp"]
    figures = handle.store.figures(outbox.gateway_id)
    assert figures == {"received": 1026, "duplicates": 0, "bad_signatures": 0,
                       "chain_breaks": 0, "gaps": 0, "high_water": 1026, "stored": 1026}
    assert_stored_once_with_valid_chain(handle, outbox)


async def test_resumes_from_high_water_without_duplicates(tmp_path: Path, pki: Pki) -> None:
    outbox = FakeOutbox()
    outbox.extend(300)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve_receiver, receiver_settings(tmp_path, pki))
            register(handle.store, outbox, TOKEN)
            settings = client_settings(handle, tmp_path, pki)
            async with trio.open_nursery() as first:
                await first.start(UplinkClient(settings, outbox).run)
                await outbox.wait_delivered(301)
                first.cancel_scope.cancel()
            # The gateway restarts and has forgotten what was delivered: the platform's mark rules.
            outbox.delivered_seq = 0
            outbox.extend(200)
            second = UplinkClient(settings, outbox)
            await nursery.start(second.run)
            await until(second, lambda s: s["connected"])  # its uplinkUp is recorded by now
            await outbox.wait_delivered(outbox.last_seq)
            nursery.cancel_scope.cancel()
    figures = handle.store.figures()
    assert figures["duplicates"] == 0
    assert figures["received"] == outbox.last_seq == 502
    assert_stored_once_with_valid_chain(handle, outbox)


async def test_receiver_restarted_mid_stream_everything_arrives_once(tmp_path: Path,
                                                                     pki: Pki) -> None:
    outbox = FakeOutbox()
    outbox.extend(3000)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            receiver_scope = trio.CancelScope()

            async def first_receiver(task_status: trio.TaskStatus[ReceiverHandle]) -> None:
                with receiver_scope:
                    await serve_receiver(receiver_settings(tmp_path, pki), task_status=task_status)

            handle = await nursery.start(first_receiver)
            register(handle.store, outbox, TOKEN)
            client = UplinkClient(client_settings(handle, tmp_path, pki, batch_max=10, window=2),
                                  outbox)
            await nursery.start(client.run)
            await outbox.wait_delivered(500)
            receiver_scope.cancel()  # the platform goes away mid-stream
            await until(client, lambda s: not s["connected"])
            outbox.extend(100)  # the floor keeps producing while the uplink is down
            handle = await nursery.start(serve_receiver,
                                         receiver_settings(tmp_path, pki, port=handle.port))
            await outbox.wait_delivered(outbox.last_seq)  # ... the 100 produced while down
            assert outbox.system[-1][0] == "uplinkUp"  # recorded before streaming resumed
            await outbox.wait_delivered(outbox.last_seq)  # ... and the uplinkUp itself
            stats = client.statistics()
            nursery.cancel_scope.cancel()
    assert stats["reconnects"] >= 1
    kinds = [t for t, _ in outbox.system]
    assert kinds[:3] == ["uplinkUp", "uplinkDown", "uplinkUp"]
    assert envelope_types(outbox.rows).count("uplinkDown") == kinds.count("uplinkDown")
    figures = handle.store.figures()
    assert figures["stored"] == outbox.last_seq
    assert figures["gaps"] == 0 and figures["chain_breaks"] == 0
    assert_stored_once_with_valid_chain(handle, outbox)


async def test_wrong_token_backs_off_long(tmp_path: Path, pki: Pki,
                                          autojump_clock: trio.testing.MockClock) -> None:
    # Real sockets need real time to move; virtual time only jumps after 20 ms of idleness.
    autojump_clock.autojump_threshold = 0.02
    outbox = FakeOutbox()
    outbox.extend(5)
    with trio.fail_after(2000):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve_receiver, receiver_settings(tmp_path, pki))
            register(handle.store, outbox, "the-right-token")
            client = UplinkClient(client_settings(handle, tmp_path, pki, rejected_backoff_s=300.0),
                                  outbox)
            await nursery.start(client.run)
            await trio.sleep(1000)  # virtual: ~4 attempts at 300 s, not thousands
            stats = client.statistics()
            nursery.cancel_scope.cancel()
    assert stats["state"] == "rejected"
    assert "HTTP 403" in stats["last_error"]
    assert 2 <= stats["attempts"] <= 5
    assert handle.store.figures()["received"] == 0
    # Never up is an outage from the start: recorded once when it began, not once per attempt.
    assert outbox.system == [("uplinkDown", {"reason": "never connected since start: platform "
                                             "refused the connection: HTTP 403"})]


async def test_token_of_another_gateway_is_refused_4001(tmp_path: Path) -> None:
    outbox = FakeOutbox()
    outbox.extend(3)
    other = FakeOutbox(gateway_id="gw-other")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve_receiver, receiver_settings(tmp_path, None))
            assert handle.url.startswith("ws://")
            register(handle.store, outbox, "token-of-gw-test")
            register(handle.store, other, TOKEN)  # our token file holds gw-other's token
            client = UplinkClient(client_settings(handle, tmp_path, None), outbox)
            await nursery.start(client.run)
            await until(client, lambda s: s["state"] == "rejected")
            stats = client.statistics()
            nursery.cancel_scope.cancel()
    assert "4001" in stats["last_error"]
    assert handle.store.figures()["received"] == 0


async def test_tls_verification_failure_says_so(tmp_path: Path, pki: Pki) -> None:
    outbox = FakeOutbox()
    outbox.extend(3)
    with trio.fail_after(15):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve_receiver, receiver_settings(tmp_path, pki))
            register(handle.store, outbox, TOKEN)
            wrong = client_settings(handle, tmp_path, pki, ca_file=pki.other_ca_file(tmp_path))
            bad_client = UplinkClient(wrong, outbox)
            async with trio.open_nursery() as bad:
                await bad.start(bad_client.run)
                await until(bad_client, lambda s: s["attempts"] >= 2)
                bad.cancel_scope.cancel()
            assert "TLS verification failed" in bad_client.statistics()["last_error"]
            assert handle.store.figures()["received"] == 0
            # The receiver survived the failed handshakes and serves a correct client.
            await nursery.start(UplinkClient(client_settings(handle, tmp_path, pki), outbox).run)
            await outbox.wait_delivered(outbox.last_seq)
            nursery.cancel_scope.cancel()


async def test_bad_signature_rejected_not_stored(tmp_path: Path, pki: Pki) -> None:
    outbox = FakeOutbox()
    outbox.extend(50)
    outbox.corrupt_signature(21)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve_receiver, receiver_settings(tmp_path, pki))
            register(handle.store, outbox, TOKEN)
            client = UplinkClient(client_settings(handle, tmp_path, pki, batch_max=8), outbox)
            await nursery.start(client.run)
            await until(client, lambda s: s["state"] == "rejected")
            stats = client.statistics()
            nursery.cancel_scope.cancel()
    figures = handle.store.figures()
    assert figures["bad_signatures"] == 1
    assert figures["stored"] == figures["high_water"] == 20
    assert outbox.delivered_seq == 20  # the good prefix was committed, then acked
    assert "4003" in stats["last_error"]


# -- a misbehaving platform ------------------------------------------------------------------------

async def fake_platform(behaviour: Callable[[object, FakeOutbox], Awaitable[None]],
                        outbox: FakeOutbox, closes: list[int | None], closed_twice: trio.Event,
                        request: WebSocketRequest) -> None:
    ws = await request.accept()
    await ws.get_message()  # hello
    await ws.send_message(proto.encode(proto.Welcome(outbox.epoch, 0)))
    try:
        await behaviour(ws, outbox)
        while True:
            await ws.get_message()
    except ConnectionClosed as closed:
        closes.append(closed.reason.code if closed.reason else None)
        if len(closes) >= 2:
            closed_twice.set()


async def send_garbage(ws: object, outbox: FakeOutbox) -> None:
    await ws.send_message(b"\xc1\xc1")  # type: ignore[attr-defined]


async def send_oversized(ws: object, outbox: FakeOutbox) -> None:
    await ws.send_message(b"\x00" * (200 * 1024))  # type: ignore[attr-defined]


async def send_ack_beyond(ws: object, outbox: FakeOutbox) -> None:
    await ws.send_message(proto.encode(proto.Ack(outbox.epoch, 10**9)))  # type: ignore[attr-defined]


@pytest.mark.parametrize(("behaviour", "code", "fragment"), [
    (send_garbage, proto.CLOSE_PROTOCOL, "not msgpack"),
    (send_oversized, proto.CLOSE_TOO_BIG, "1009"),
    (send_ack_beyond, proto.CLOSE_PROTOCOL, "was sent"),
])
async def test_malformed_server_frame_closes_and_reconnects(tmp_path: Path, behaviour, code: int,
                                                            fragment: str) -> None:
    outbox = FakeOutbox()
    outbox.extend(3)
    closes: list[int | None] = []
    closed_twice = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(
                serve_websocket, partial(fake_platform, behaviour, outbox, closes, closed_twice),
                "127.0.0.1", 0, None))
            settings = UplinkSettings(url=f"ws://127.0.0.1:{server.port}/v1/stream",
                                      token_file=write_token(tmp_path, TOKEN), **FAST)
            client = UplinkClient(settings, outbox)
            await nursery.start(client.run)
            await closed_twice.wait()
            stats = client.statistics()
            nursery.cancel_scope.cancel()
    assert closes[0] == code
    assert stats["attempts"] >= 2 and fragment in stats["last_error"]


async def frozen_platform(outbox: FakeOutbox, accepted: list[int],
                          stream: trio.SocketStream) -> None:
    """Completes the upgrade and the welcome, then never reads again (a hung platform)."""
    ws = WSConnection(ConnectionType.SERVER)
    hello_seen = False
    while not hello_seen:
        data = await stream.receive_some(65536)
        if not data:
            return
        ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, Request):
                await stream.send_all(ws.send(AcceptConnection()))
            elif isinstance(event, BytesMessage):
                hello_seen = True
    await stream.send_all(ws.send(Message(data=proto.encode(proto.Welcome(outbox.epoch, 0)))))
    accepted.append(1)
    await trio.sleep_forever()


async def test_dead_platform_detected_by_heartbeat(tmp_path: Path,
                                                   autojump_clock: trio.testing.MockClock) -> None:
    autojump_clock.autojump_threshold = 0.02
    outbox = FakeOutbox()
    outbox.extend(3)
    accepted: list[int] = []
    with trio.fail_after(500):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(
                trio.serve_tcp, partial(frozen_platform, outbox, accepted), 0, host="127.0.0.1"))
            port = listeners[0].socket.getsockname()[1]
            settings = UplinkSettings(url=f"ws://127.0.0.1:{port}/v1/stream",
                                      token_file=write_token(tmp_path, TOKEN),
                                      heartbeat_s=10.0, dead_after_s=30.0, **FAST)
            client = UplinkClient(settings, outbox)
            await nursery.start(client.run)
            started = trio.current_time()
            await until(client, lambda s: s["reconnects"] >= 1)
            detected_after = trio.current_time() - started
            stats = client.statistics()
            nursery.cancel_scope.cancel()
    assert 39 <= detected_after <= 42  # first ping at 10 s, no pong by 40 s
    assert "did not answer a ping within 30 s" in stats["last_error"]
    assert [t for t, _ in outbox.system][:2] == ["uplinkUp", "uplinkDown"]


@pytest.mark.parametrize(("code", "rejected"), [(errno.EMFILE, False), (errno.ENFILE, False),
                                                (errno.EACCES, True), (errno.ENOENT, True)])
def test_token_file_unreadable_for_lack_of_descriptors_is_not_a_refusal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, rejected: bool) -> None:
    """Issue 15: "Too many open files" reading the token was classed as a platform refusal and
    cost a 300 s outage. Out of descriptors is the box being full for a moment: retry soon."""
    from gateway.uplink.client import UplinkRejectedError, UplinkUnavailableError, _read_token

    def fail(self: Path, *args: object, **kwargs: object) -> str:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(Path, "read_text", fail)
    with pytest.raises(UplinkRejectedError if rejected else UplinkUnavailableError):
        _read_token(tmp_path / "token")


async def test_emfile_on_the_token_retries_soon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    outbox = FakeOutbox()
    outbox.extend(3)
    original = Path.read_text
    failures = [2]

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        if self.name == "token" and failures[0]:
            failures[0] -= 1
            raise OSError(errno.EMFILE, "Too many open files")
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", read_text)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve_receiver, receiver_settings(tmp_path, None))
            register(handle.store, outbox, TOKEN)
            client = UplinkClient(client_settings(handle, tmp_path, None,
                                                  rejected_backoff_s=300.0), outbox)
            states: list[str] = []
            await nursery.start(client.run)
            await until(client, lambda s: states.append(str(s["state"])) or bool(s["connected"]))
            nursery.cancel_scope.cancel()
    assert failures == [0] and "rejected" not in states


async def test_a_gateway_with_many_retired_keys_still_says_hello_within_the_limit(
        tmp_path: Path, pki: Pki) -> None:
    """A long run that rotated keys 20 times lists only the newest 16 kids (the hello's
    limit, P-HELLO-2): the platform welcomes it instead of refusing every connection."""
    outbox = FakeOutbox()
    outbox.kids = [f"retired-{i}" for i in range(20)] + outbox.kids
    outbox.extend(5)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve_receiver, receiver_settings(tmp_path, pki))
            register(handle.store, outbox, TOKEN)
            client = UplinkClient(client_settings(handle, tmp_path, pki), outbox)
            await nursery.start(client.run)
            await until(client, lambda s: s["state"] == "rejected"
                        or s["last_ack_seq"] == outbox.last_seq)
            stats = client.statistics()
            nursery.cancel_scope.cancel()
    assert stats["last_ack_seq"] == outbox.last_seq, stats["last_error"]
