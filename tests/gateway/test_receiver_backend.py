"""A receiver whose store is unavailable for a moment (the JetStream backend during a NATS
failover) closes 1011 without an error frame before the welcome: the gateway retries with the
ordinary backoff, not the 300 s it keeps for a refusal."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import trio
from trio_websocket import serve_websocket

from gateway.receiver.backend import BackendError, SqliteBackend
from gateway.receiver.server import PATH, _Receiver
from gateway.receiver.store import ReceiverStore
from gateway.uplink.client import UplinkClient, UplinkSettings
from tests.gateway.uplink_fakes import FakeOutbox, register, write_token

TOKEN = "backend-token-0123456789"


class Unavailable(SqliteBackend):
    async def open_stream(self, gateway_id: str, epoch: str):  # type: ignore[override]
        raise BackendError(1011, "NATS unavailable: nats: timeout")


async def test_a_store_unavailable_at_hello_is_backoff_not_a_refusal(tmp_path: Path) -> None:
    outbox = FakeOutbox()
    outbox.extend(3)
    store = ReceiverStore(tmp_path / "p.db")
    register(store, outbox, TOKEN)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            receiver = _Receiver(Unavailable(store))
            server = await nursery.start(partial(
                serve_websocket, receiver.handle, "127.0.0.1", 0, None))
            client = UplinkClient(UplinkSettings(
                url=f"ws://127.0.0.1:{server.port}{PATH}",
                token_file=write_token(tmp_path, TOKEN), backoff_initial_s=0.01,
                backoff_max_s=0.05), outbox)
            await nursery.start(client.run)
            while client.statistics()["attempts"] < 3:  # retried soon, again and again
                await client.wait_changed()
            assert client.state != "rejected"
            assert "1011" in str(client.statistics()["last_error"])
            nursery.cancel_scope.cancel()
    # /metrics counts each such close under its code (docs/platform.md "Metrics").
    assert (receiver.metrics.registry.get_sample_value(
        "casino_receiver_refusals_total", {"code": "1011"}) or 0) >= 2  # a 3rd may be under way
    store.close()


class CommandsUnavailable(SqliteBackend):
    async def open_commands(self, gateway_id: str, include_sent: bool):  # type: ignore[override]
        raise BackendError(1011, "NATS unavailable: nats: timeout")


async def test_a_backend_failure_outside_ingest_does_not_stop_the_receiver(
        tmp_path: Path) -> None:
    """Commands unavailable (a NATS timeout while reading them) costs the commands, not the
    receiver: events of two connections, one after the other, are still stored and acked."""
    outbox = FakeOutbox()
    outbox.extend(3)
    store = ReceiverStore(tmp_path / "p.db")
    register(store, outbox, TOKEN)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = await nursery.start(partial(
                serve_websocket, _Receiver(CommandsUnavailable(store), 0.01).handle,
                "127.0.0.1", 0, None))
            for _ in range(2):
                client = UplinkClient(UplinkSettings(
                    url=f"ws://127.0.0.1:{server.port}{PATH}",
                    token_file=write_token(tmp_path, TOKEN)), outbox)
                async with trio.open_nursery() as inner:
                    await inner.start(client.run)
                    outbox.extend(2)
                    await outbox.wait_delivered(outbox.last_seq)
                    inner.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
    assert store.high_water(outbox.gateway_id, outbox.epoch) == outbox.last_seq
    store.close()


class TokensUnavailable(SqliteBackend):
    async def token_known(self, token: str) -> bool:
        raise BackendError(1011, "NATS unavailable: nats: timeout")


async def test_a_store_unavailable_at_the_upgrade_is_503_and_the_receiver_stays(
        tmp_path: Path) -> None:
    outbox = FakeOutbox()
    store = ReceiverStore(tmp_path / "p.db")
    register(store, outbox, TOKEN)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            receiver = _Receiver(TokensUnavailable(store))
            server = await nursery.start(partial(
                serve_websocket, receiver.handle, "127.0.0.1", 0, None))
            client = UplinkClient(UplinkSettings(
                url=f"ws://127.0.0.1:{server.port}{PATH}",
                token_file=write_token(tmp_path, TOKEN), backoff_initial_s=0.01,
                backoff_max_s=0.05), outbox)
            await nursery.start(client.run)
            while client.statistics()["attempts"] < 3:  # the same receiver answers each time
                await client.wait_changed()
            assert client.state != "rejected"
            assert "HTTP 503" in str(client.statistics()["last_error"])
            nursery.cancel_scope.cancel()
    assert (receiver.metrics.registry.get_sample_value(
        "casino_receiver_upgrade_refusals_total", {"status": "503"}) or 0) >= 2  # a 3rd may be under way
    assert receiver.metrics.registry.get_sample_value("casino_receiver_connections_total") == 0
    store.close()
