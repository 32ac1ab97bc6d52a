"""The reference receiver, driven by a hand-written peer over real loopback sockets."""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, open_websocket_url

from gateway.receiver import ReceiverHandle, ReceiverSettings, ReceiverStore, serve_receiver
from gateway.receiver.cli import add_commands
from gateway.signing import canonical, decode_envelope
from gateway.uplink import protocol as proto
from tests.gateway.uplink_fakes import FakeOutbox, register, write_token

TOKEN = "receiver-test-token"
ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def receiver(tmp_path: Path) -> AsyncIterator[ReceiverHandle]:
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve_receiver, ReceiverSettings(db_path=tmp_path / "p.db"))
        yield handle
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def peer(handle: ReceiverHandle, outbox: FakeOutbox, token: str = TOKEN,
               path: str = "/v1/stream") -> AsyncIterator[object]:
    url = handle.url.replace("/v1/stream", path)
    headers = [(b"authorization", f"Bearer {token}".encode())] if token else []
    async with open_websocket_url(url, extra_headers=headers) as ws:
        await ws.send_message(proto.encode(proto.Hello(outbox.gateway_id, outbox.epoch,
                                                       tuple(outbox.kids))))
        yield ws


async def receive(ws: object) -> proto.Message:
    return proto.decode(await ws.get_message())  # type: ignore[attr-defined]


async def send_events(ws: object, rows: list[bytes]) -> proto.Message:
    await ws.send_message(proto.encode(proto.Events(tuple(rows))))  # type: ignore[attr-defined]
    return await receive(ws)


async def test_stores_acks_counts_duplicates_and_gaps(tmp_path: Path) -> None:
    outbox = FakeOutbox()
    outbox.extend(12)
    with trio.fail_after(10):
        async with receiver(tmp_path) as handle:
            register(handle.store, outbox, TOKEN)
            async with peer(handle, outbox) as ws:
                assert await receive(ws) == proto.Welcome(outbox.epoch, 0)
                assert await send_events(ws, outbox.rows[:5]) == proto.Ack(outbox.epoch, 5)
                # Redelivery is not an error: counted, discarded, acked again.
                assert await send_events(ws, outbox.rows[2:6]) == proto.Ack(outbox.epoch, 6)
                # 7 and 8 never arrive: a gap, stored anyway and reported.
                assert await send_events(ws, outbox.rows[8:12]) == proto.Ack(outbox.epoch, 12)
            async with peer(handle, outbox) as ws:
                assert await receive(ws) == proto.Welcome(outbox.epoch, 12)
    figures = handle.store.figures(outbox.gateway_id)  # reads through its own connection
    assert figures == {"received": 10, "duplicates": 3, "bad_signatures": 0, "chain_breaks": 1,
                       "gaps": 1, "high_water": 12, "stored": 10}


@pytest.mark.parametrize("tamper", ["signature", "data"])
async def test_bad_event_rejected_4003_and_not_stored(tmp_path: Path, tamper: str) -> None:
    outbox = FakeOutbox()
    outbox.extend(6)
    if tamper == "signature":
        outbox.corrupt_signature(4)
    else:  # change the payload, keep hash and signature: the hash no longer matches
        envelope = decode_envelope(outbox.rows[3])
        envelope["data"] = {"wager": {"minor": 1_000_000, "currency": "USD"}}
        outbox.rows[3] = canonical(envelope)
    with trio.fail_after(10):
        async with receiver(tmp_path) as handle:
            register(handle.store, outbox, TOKEN)
            async with peer(handle, outbox) as ws:
                await receive(ws)
                assert await send_events(ws, outbox.rows) == proto.Ack(outbox.epoch, 3)
                error = await receive(ws)
                assert isinstance(error, proto.Error) and error.code == proto.CLOSE_INTEGRITY
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
                assert closed.value.reason.code == proto.CLOSE_INTEGRITY
            figures = handle.store.figures()
    assert figures["bad_signatures"] == 1
    assert figures["stored"] == 3 and figures["high_water"] == 3


async def test_event_of_another_stream_is_a_protocol_error(tmp_path: Path) -> None:
    outbox, other = FakeOutbox(), FakeOutbox()
    other.extend(1)
    with trio.fail_after(10):
        async with receiver(tmp_path) as handle:
            register(handle.store, outbox, TOKEN)
            async with peer(handle, outbox) as ws:
                await receive(ws)
                await send_events(ws, other.rows)  # ack 0
                error = await receive(ws)
                assert isinstance(error, proto.Error) and error.code == proto.CLOSE_PROTOCOL
            assert handle.store.figures()["stored"] == 0


@pytest.mark.parametrize(("token", "path", "status"), [
    (TOKEN, "/v1/other", 404),
    ("", "/v1/stream", 401),
    ("not-the-token", "/v1/stream", 403),
])
async def test_handshake_refusals(tmp_path: Path, token: str, path: str, status: int) -> None:
    outbox = FakeOutbox()
    with trio.fail_after(10):
        async with receiver(tmp_path) as handle:
            register(handle.store, outbox, TOKEN)
            with pytest.raises(ConnectionRejected) as rejected:
                async with peer(handle, outbox, token=token, path=path):
                    pass
    assert rejected.value.status_code == status


async def test_garbage_instead_of_hello(tmp_path: Path) -> None:
    outbox = FakeOutbox()
    with trio.fail_after(10):
        async with receiver(tmp_path) as handle:
            register(handle.store, outbox, TOKEN)
            async with open_websocket_url(handle.url, extra_headers=[
                    (b"authorization", f"Bearer {TOKEN}".encode())]) as ws:
                await ws.send_message(b"\x93\x01\x02")
                error = await receive(ws)
                assert isinstance(error, proto.Error) and error.code == proto.CLOSE_PROTOCOL
                with pytest.raises(ConnectionClosed):
                    await ws.get_message()


@pytest.mark.parametrize("epoch", ["attack-epoch", "ABCDEF0123456789", "abcdef012345678",
                                   "abcdef0123456789a", "abcdef01234567.>"])
async def test_a_hello_whose_epoch_is_not_16_lowercase_hex_is_refused(tmp_path: Path,
                                                                     epoch: str) -> None:
    """docs/uplink-protocol.md P-HELLO-2: error + close 4002, nothing opened for the stream."""
    outbox = FakeOutbox(epoch=epoch)
    with trio.fail_after(10):
        async with receiver(tmp_path) as handle:
            register(handle.store, outbox, TOKEN)
            async with peer(handle, outbox) as ws:
                error = await receive(ws)
                assert isinstance(error, proto.Error) and error.code == proto.CLOSE_PROTOCOL
                assert "16 lowercase hex" in error.message
                with pytest.raises(ConnectionClosed) as closed:
                    await ws.get_message()
            assert closed.value.reason.code == proto.CLOSE_PROTOCOL
            assert handle.store.figures(outbox.gateway_id)["high_water"] == 0
            # The receiver lives on: a valid hello of the same gateway is welcomed.
            good = FakeOutbox(gateway_id=outbox.gateway_id, signer=outbox.signer)
            async with peer(handle, good) as ws:
                assert await receive(ws) == proto.Welcome(good.epoch, 0)


async def test_refused_hellos_are_logged_at_a_bounded_rate(tmp_path: Path) -> None:
    import structlog.testing

    outbox = FakeOutbox(epoch="attack-epoch")
    with trio.fail_after(20), structlog.testing.capture_logs() as logs:
        async with receiver(tmp_path) as handle:
            register(handle.store, outbox, TOKEN)
            for _ in range(20):
                async with peer(handle, outbox) as ws:
                    assert isinstance(await receive(ws), proto.Error)
                    with pytest.raises(ConnectionClosed):
                        await ws.get_message()
    lines = [entry for entry in logs if entry["event"] == "receiver refused hello"]
    assert len(lines) == 1, lines
    assert lines[0]["code"] == proto.CLOSE_PROTOCOL and "16 lowercase hex" in lines[0]["reason"]
    assert lines[0]["repeated"] == 0


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="casino-gateway")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_register_and_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outbox = FakeOutbox()
    pub = tmp_path / "gw.pub"
    pub.write_text(bytes(outbox.signer.verify_key).hex() + "\n")
    token = write_token(tmp_path, TOKEN)
    db = tmp_path / "cli.db"
    assert run_cli("receiver", "register", outbox.gateway_id, str(pub), "--token-file",
                   str(token), "--db", str(db)) == 0
    assert outbox.signer.kid in capsys.readouterr().out
    store = ReceiverStore(db)
    assert store.check_token(outbox.gateway_id, TOKEN)
    assert not store.check_token(outbox.gateway_id, TOKEN + "x")
    assert list(store.keys(outbox.gateway_id)) == outbox.kids
    outbox.extend(3)
    store.ingest(outbox.gateway_id, outbox.epoch, outbox.rows, store.keys(outbox.gateway_id))
    store.close()
    assert run_cli("receiver", "stats", "--db", str(db), "--json") == 0
    assert json.loads(capsys.readouterr().out)["received"] == 3
    assert run_cli("receiver", "stats", "--db", str(tmp_path / "missing.db")) == 1
    pub.write_text("zz\n")
    assert run_cli("receiver", "register", "gw-2", str(pub), "--token-file", str(token),
                   "--db", str(db)) == 1
    # P-KEY-1: a public key file naming a kid that is not its key's is refused.
    pub.write_text(f"{bytes(outbox.signer.verify_key).hex()} ed25519:0000000000000000\n")
    assert run_cli("receiver", "register", "gw-3", str(pub), "--token-file", str(token),
                   "--db", str(db)) == 1
    assert "is ed25519:" in capsys.readouterr().err
    pub.write_text(f"{bytes(outbox.signer.verify_key).hex()} {outbox.signer.kid}\n")
    assert run_cli("receiver", "register", "gw-3", str(pub), "--token-file", str(token),
                   "--db", str(db)) == 0


CLI_MAIN = """
import argparse, sys
from gateway.receiver.cli import add_commands
parser = argparse.ArgumentParser()
add_commands(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


async def test_cli_run_prints_url_and_stops_on_sigterm(tmp_path: Path) -> None:
    with trio.fail_after(20):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", CLI_MAIN, "receiver", "run", "--listen", "127.0.0.1:0",
             "--db", str(tmp_path / "run.db")],
            stdout=subprocess.PIPE, cwd=ROOT)
        assert process.stdout is not None
        # stdout may also carry log lines (structlog's default sink): find the URL line.
        buffer = b""
        while not buffer.startswith(b"ws://") or not buffer.endswith(b"\n"):
            if buffer.endswith(b"\n"):
                buffer = b""
            chunk = await process.stdout.receive_some(1)
            assert chunk, "receiver exited before printing its URL"
            buffer += chunk
        url = buffer.decode().strip()
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1/stream")
        with pytest.raises(ConnectionRejected) as rejected:  # nobody registered: 403
            async with open_websocket_url(url, extra_headers=[(b"authorization", b"Bearer x")]):
                pass
        assert rejected.value.status_code == 403
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0
        await process.stdout.aclose()


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--target-port", "sas0"], "go together"),
    (["--target-port", "sas0", "--target-address", "1", "--alert-seq", "3"], "exclude"),
    (["--args", "[1]"], "JSON object"),
    (["--args", "{nope"], "not JSON"),
])
def test_cli_command_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  argv: list[str], fragment: str) -> None:
    assert run_cli("receiver", "command", "gw", "requestMeters", *argv, "--db",
                   str(tmp_path / "x.db")) == 2
    assert fragment in capsys.readouterr().err


def test_cli_command_queue_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "cmd.db"
    assert run_cli("receiver", "command", "gw", "requestMeters", "--db", str(db)) == 1
    assert "no database" in capsys.readouterr().err
    outbox = FakeOutbox()
    store = ReceiverStore(db)
    register(store, outbox, TOKEN)
    store.close()
    assert run_cli("receiver", "command", "gw-unknown", "requestMeters", "--db", str(db)) == 1
    assert "not registered" in capsys.readouterr().err
    # --wait 0: queue and print the id.
    assert run_cli("receiver", "command", outbox.gateway_id, "acknowledgeAlert", "--alert-seq",
                   "7", "--args", '{"note": "x"}', "--id", "q-1", "--db", str(db),
                   "--wait", "0") == 0
    assert capsys.readouterr().out.strip() == "q-1"
    assert run_cli("receiver", "command", outbox.gateway_id, "requestMeters", "--id", "q-1",
                   "--db", str(db), "--wait", "0") == 1
    assert "already used" in capsys.readouterr().err
    # Nobody is connected: no result within --wait, the command stays queued.
    assert run_cli("receiver", "command", outbox.gateway_id, "requestMeters", "--id", "q-2",
                   "--target-port", "sas0", "--target-address", "2", "--db", str(db),
                   "--wait", "0.3") == 1
    assert "no result for q-2 within 0.3 s (status pending)" in capsys.readouterr().err
    assert run_cli("receiver", "commands", "--db", str(db), "--json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["id"], r["name"], r["target"], r["args"], r["status"]) for r in rows] == [
        ("q-1", "acknowledgeAlert", {"alert_seq": 7}, {"note": "x"}, "pending"),
        ("q-2", "requestMeters", {"port": "sas0", "address": 2}, {}, "pending")]
    assert run_cli("receiver", "commands", "--db", str(tmp_path / "none.db")) == 1


@pytest.mark.parametrize("data", [{b"key": 1}, {"a": {1: 2}}, {"n": [[[[[[[[[[[[[[[[[[[[[[[[[[[[
    [[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}, {"n": 2**64 - 1}])
async def test_command_result_with_unstorable_data_is_a_protocol_error(tmp_path: Path,
                                                                      data: dict) -> None:
    """Issue 15: a bytes map key in a command_result's data raised TypeError in the store and the
    receiver exited. Data must be JSON-shaped (gateway.bounded.check_plain), else close 4002; the
    receiver then serves the next connection."""
    import msgpack

    outbox = FakeOutbox()
    outbox.extend(1)
    with trio.fail_after(10):
        async with receiver(tmp_path) as handle:
            register(handle.store, outbox, TOKEN)
            async with peer(handle, outbox) as ws:
                await receive(ws)
                await ws.send_message(msgpack.packb({"type": "command_result", "id": "c-1",
                                                     "result": "ok", "data": data}))
                error = await receive(ws)
                assert isinstance(error, proto.Error) and error.code == proto.CLOSE_PROTOCOL
                with pytest.raises(ConnectionClosed):
                    await ws.get_message()
            async with peer(handle, outbox) as ws:
                assert await receive(ws) == proto.Welcome(outbox.epoch, 0)
                assert await send_events(ws, outbox.rows) == proto.Ack(outbox.epoch, 1)
