"""The JetStream receiver keeps the uplink spec's platform rules, also across receivers: the
conformance kit passes against it, a second connection on another receiver takes over
(P-TAKEOVER-1: the old one closed 4004, the new welcome includes every acked event), and a
command reaches the gateway on whichever receiver it is connected to."""

from __future__ import annotations

from pathlib import Path

import trio

from gateway.conformance import run_kit
from gateway.conformance.kit import Settings
from gateway.conformance.run import kit_signer
from gateway.platform.store import NatsSettings
from gateway.receiver import ReceiverSettings, serve_receiver
from gateway.uplink.client import UplinkClient, UplinkSettings
from tests.gateway.uplink_fakes import FakeOutbox, write_token
from tests.platform.conftest import register

TOKEN = "platform-rules-token-0123456789"


async def test_the_conformance_kit_passes_against_the_jetstream_receiver(
        nats_settings: NatsSettings) -> None:
    public = bytes(kit_signer().verify_key).hex()
    await register(nats_settings, "kit-gw-1", "kit-token-one-0123456789abcdef", public)
    await register(nats_settings, "kit-gw-2", "kit-token-two-0123456789abcdef", public)
    with trio.fail_after(80):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve_receiver, ReceiverSettings(jetstream=nats_settings))
            await handle.submit_command("kit-gw-1", "requestMeters",
                                        {"port": "sas0", "address": 1})
            results = await run_kit(Settings(
                handle.url, "kit-gw-1", "kit-token-one-0123456789abcdef", "kit-gw-2",
                "kit-token-two-0123456789abcdef", command_pending=True, timeout_s=2.0))
            nursery.cancel_scope.cancel()
    report = "\n".join(f"{r.status} {r.rule} {r.detail}" for r in results)
    assert all(r.status == "PASS" for r in results), report
    assert len({r.rule for r in results}) == len(results) >= 25


async def test_a_newer_connection_on_another_receiver_takes_over(
        tmp_path: Path, nats_settings: NatsSettings) -> None:
    from trio_websocket import open_websocket_url

    from gateway.uplink import protocol as proto

    outbox = FakeOutbox(gateway_id="gw-takeover")
    outbox.extend(300)
    await register(nats_settings, outbox.gateway_id, TOKEN,
                   bytes(outbox.signer.verify_key).hex())
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            a = await nursery.start(serve_receiver, ReceiverSettings(jetstream=nats_settings))
            b = await nursery.start(serve_receiver, ReceiverSettings(jetstream=nats_settings))
            client = UplinkClient(UplinkSettings(
                url=a.url, token_file=write_token(tmp_path, TOKEN), backoff_initial_s=30.0,
                backoff_max_s=30.0), outbox, random=lambda: 1.0)  # not back during the test
            await nursery.start(client.run)
            await outbox.wait_delivered(outbox.last_seq)
            acked = outbox.delivered_seq
            async with open_websocket_url(
                    b.url, extra_headers=[(b"authorization", f"Bearer {TOKEN}".encode())]) as ws:
                await ws.send_message(proto.encode(proto.Hello(
                    outbox.gateway_id, outbox.epoch, tuple(outbox.kids))))
                with trio.fail_after(3):  # A confirmed the stop (no 5 s request timeout)
                    welcome = proto.decode(await ws.get_message())
                # The old connection (on receiver A) was closed before this mark was read.
                while "4004" not in str(client.statistics()["last_error"]):
                    await client.wait_changed()
            nursery.cancel_scope.cancel()
    assert isinstance(welcome, proto.Welcome) and welcome.high_water == acked


async def test_a_command_reaches_the_gateway_on_whichever_receiver(
        tmp_path: Path, nats_settings: NatsSettings) -> None:
    outbox = FakeOutbox(gateway_id="gw-command")
    outbox.extend(5)
    await register(nats_settings, outbox.gateway_id, TOKEN,
                   bytes(outbox.signer.verify_key).hex())

    async def handler(request: dict[str, object], source: str) -> dict[str, object]:
        return {"id": request["id"], "result": "ok", "reason": "", "data": {"seen": source}}

    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            a = await nursery.start(serve_receiver, ReceiverSettings(jetstream=nats_settings))
            b = await nursery.start(serve_receiver, ReceiverSettings(jetstream=nats_settings))
            client = UplinkClient(UplinkSettings(
                url=b.url, token_file=write_token(tmp_path, TOKEN)), outbox,
                command_handler=handler)
            await nursery.start(client.run)
            await outbox.wait_delivered(outbox.last_seq)
            # Queued through receiver A (any writer of the commands bucket would do).
            command_id = await a.submit_command(outbox.gateway_id, "requestMeters",
                                                {"port": "sas0", "address": 1})
            row = await a.wait_command(command_id)
            nursery.cancel_scope.cancel()
    assert row["status"] == "done" and row["result"] == "ok"
    assert row["data"] == {"seen": "platform"}


def test_a_chain_key_is_never_built_from_a_malformed_epoch() -> None:
    """The hello refuses such an epoch (P-HELLO-2); the key builder refuses it again, as it
    would otherwise address another stream's key or a wildcard."""
    import pytest

    from gateway.platform import names

    assert names.chain_key("gw.1", "0123456789abcdef") == "gw=2E1.0123456789abcdef"
    for epoch in ("attack-epoch", "0123456789abcde.", "0123456789abcd.>", "0123456789ABCDEF"):
        with pytest.raises(ValueError):
            names.chain_key("gw", epoch)
