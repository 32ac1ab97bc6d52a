"""The JetStream receiver's /metrics against the real 3-node cluster: after a gateway streamed
N events the counters equal N (and the stream's own count agrees), a takeover counts under
4004, a compare-and-set lost to another connection counts as a KV conflict, and every metric
docs/platform.md lists is in the scrape."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import trio
from trio_websocket import open_websocket_url

from gateway.config import MonitorSection
from gateway.platform import names
from gateway.platform.store import NatsSettings, Platform
from gateway.receiver import ReceiverSettings, serve_receiver
from gateway.receiver.backend import BackendError
from gateway.receiver.store import verify_events
from gateway.uplink import protocol as proto
from gateway.uplink.client import UplinkClient, UplinkSettings
from tests.gateway.test_receiver_metrics import documented_metrics, exposed, scrape, value
from tests.gateway.uplink_fakes import FakeOutbox, write_token
from tests.platform.conftest import register

TOKEN = "receiver-metrics-token-0123456789"
N = 300


def stream_messages(settings: NatsSettings) -> int:
    async def main() -> int:
        platform = await Platform.open(settings)
        try:
            info = await platform.js.stream_info(names.EVENTS_STREAM)
            return int(info.state.messages)
        finally:
            await platform.close()
    return asyncio.run(main())


async def test_jetstream_counters_refusals_and_conflicts(tmp_path: Path,
                                                         nats_settings: NatsSettings) -> None:
    outbox = FakeOutbox(gateway_id="gw-metrics")
    outbox.extend(N)
    await register(nats_settings, outbox.gateway_id, TOKEN,
                   bytes(outbox.signer.verify_key).hex())
    auth = [(b"authorization", f"Bearer {TOKEN}".encode())]
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve_receiver, ReceiverSettings(
                jetstream=nats_settings, metrics=MonitorSection(port=0)))
            port = handle.metrics_port
            assert port is not None
            client = UplinkClient(UplinkSettings(
                url=handle.url, token_file=write_token(tmp_path, TOKEN), backoff_initial_s=30.0,
                backoff_max_s=30.0), outbox, random=lambda: 1.0)  # not back during the test
            await nursery.start(client.run)
            await outbox.wait_delivered(N)
            sent = outbox.last_seq  # N, and what the client itself adds (its uplink events)
            streamed, _ = await scrape(port)
            # A second connection of the gateway takes over: the client's is closed 4004.
            async with open_websocket_url(handle.url, extra_headers=auth) as ws:
                await ws.send_message(proto.encode(proto.Hello(
                    outbox.gateway_id, outbox.epoch, tuple(outbox.kids))))
                assert isinstance(proto.decode(await ws.get_message()), proto.Welcome)
                while "4004" not in str(client.statistics()["last_error"]):
                    await client.wait_changed()
            # Two connections' views of one stream: the one that commits second (another
            # head: 3 of the first's events) loses the compare-and-set of the mark; its
            # publishes were duplicates of the first's.
            outbox.extend(5)
            backend = handle.receiver.backend
            first = await backend.open_stream(outbox.gateway_id, outbox.epoch)
            second = await backend.open_stream(outbox.gateway_id, outbox.epoch)
            fresh = outbox.rows[sent:]  # the 5, and what the client added when it went down
            await first.ingest([verify_events(fresh, first.keys)])
            with pytest.raises(BackendError) as lost:
                await second.ingest([verify_events(fresh[:3], second.keys)])
            after, families = await scrape(port)
            nursery.cancel_scope.cancel()
    assert lost.value.code == proto.CLOSE_SUPERSEDED
    assert sent >= N and value(streamed, "casino_receiver_events_total") == sent
    assert value(streamed, "casino_receiver_jetstream_publishes_total") == sent
    assert value(streamed, "casino_receiver_jetstream_duplicate_publishes_total") == 0
    assert value(streamed, "casino_receiver_jetstream_publishes_in_flight") == 0
    assert value(streamed, "casino_receiver_connections_open") == 1
    assert value(streamed, "casino_receiver_nats_connection_state", state="up") == 1
    assert value(streamed, "casino_receiver_nats_connection_state", state="reconnecting") == 0
    assert value(streamed, "casino_receiver_build_info", backend="jetstream") == 1
    batches = value(streamed, "casino_receiver_batches_total")
    assert 1 <= batches <= sent
    assert 1 <= value(streamed, "casino_receiver_jetstream_publish_ack_seconds_count") <= batches
    assert value(streamed, "casino_receiver_kv_cas_conflicts_total") == 0
    assert value(streamed, "casino_receiver_refusals_total", code="4004") == 0
    assert value(after, "casino_receiver_refusals_total", code="4004") == 1
    assert value(after, "casino_receiver_takeovers_total") == 1
    assert value(after, "casino_receiver_kv_cas_conflicts_total") == 1
    assert value(after, "casino_receiver_jetstream_duplicate_publishes_total") == 3
    assert value(after, "casino_receiver_jetstream_publishes_total") == sent + len(fresh) + 3
    # The stream's own count: every event once, the second view's publishes de-duplicated.
    assert await trio.to_thread.run_sync(stream_messages, nats_settings) == sent + len(fresh)
    missing = [name for name in documented_metrics() if not exposed(name, after, families)]
    assert not missing
