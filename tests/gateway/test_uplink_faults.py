"""The uplink under faults, over real loopback sockets with a TCP proxy in the middle: connections
cut mid-batch at random points, acks lost, a platform that stops acknowledging. Every case ends
with the receiver holding every event exactly once in a chain that verifies."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from gateway.receiver import ReceiverHandle, ReceiverSettings, serve_receiver
from gateway.uplink.client import UplinkClient, UplinkSettings
from tests.gateway.test_uplink_client import FAST, TOKEN, until
from tests.gateway.uplink_fakes import (
    FakeOutbox,
    Proxy,
    assert_exactly_once,
    envelope_types,
    register,
    write_token,
)


@dataclass
class Link:
    outbox: FakeOutbox
    handle: ReceiverHandle
    proxy: Proxy
    client: UplinkClient

    def assert_platform_has_everything_once(self) -> None:
        keys = {self.outbox.signer.kid: self.outbox.signer.verify_key}
        assert_exactly_once(self.handle.store, self.outbox.gateway_id, self.outbox.epoch, keys,
                            self.outbox.last_seq)
        stored = self.handle.store.events(self.outbox.gateway_id, self.outbox.epoch)
        assert [body for _, body in stored] == self.outbox.rows


@asynccontextmanager
async def link(tmp_path: Path, outbox: FakeOutbox, *, cut_after: list[int] | None = None,
               command_check_s: float = 0.25, **settings: object) -> AsyncIterator[Link]:
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve_receiver, ReceiverSettings(
            db_path=tmp_path / "platform.db", command_check_s=command_check_s))
        register(handle.store, outbox, TOKEN)
        proxy = Proxy(handle.port, cut_after)
        port = await nursery.start(proxy.run)
        client = UplinkClient(UplinkSettings(
            url=f"ws://127.0.0.1:{port}/v1/stream", token_file=write_token(tmp_path, TOKEN),
            **{**FAST, **settings}), outbox)  # type: ignore[arg-type]
        await nursery.start(client.run)
        yield Link(outbox, handle, proxy, client)
        nursery.cancel_scope.cancel()


async def test_cut_mid_batch_at_random_points(tmp_path: Path) -> None:
    rng = random.Random(5)
    cuts = [rng.randrange(1, 40_000) for _ in range(15)] + [rng.randrange(1, 300) for _ in range(3)]
    rng.shuffle(cuts)
    outbox = FakeOutbox()
    outbox.extend(4000)
    with trio.fail_after(60):
        async with link(tmp_path, outbox, cut_after=cuts, batch_max=25, window=4) as up:
            # The floor keeps producing while the link flaps.
            for count in (3, 6, 9, 12):
                await up.proxy.wait_for(lambda count=count: up.proxy.cuts >= count)
                outbox.extend(40)
            await until(up.client, lambda s: s["attempts"] > len(cuts) and s["connected"])
            await outbox.wait_delivered(outbox.last_seq)
            stats = up.client.statistics()
            figures = up.handle.store.figures()
    assert up.proxy.cuts == len(cuts) and up.proxy.connections == len(cuts) + 1
    assert stats["reconnects"] >= 10  # most cuts came after the welcome
    kinds = envelope_types(outbox.rows)
    assert kinds.count("uplinkDown") == stats["reconnects"]
    assert kinds.count("uplinkUp") == stats["reconnects"] + 1
    assert figures["gaps"] == 0 and figures["chain_breaks"] == 0 and figures["bad_signatures"] == 0
    up.assert_platform_has_everything_once()


async def test_acks_lost_then_connection_dies_resumes_from_the_platform_mark(
        tmp_path: Path) -> None:
    outbox = FakeOutbox()
    outbox.extend(1000)
    with trio.fail_after(30):
        async with link(tmp_path, outbox, batch_max=20, window=4) as up:
            up.proxy.drop_acks_above = 500  # from here on the platform commits, we never hear
            await up.proxy.wait_for(lambda: up.proxy.acks_dropped >= 4)
            # The window is full of committed-but-unacknowledged frames: the client stopped.
            assert outbox.delivered_seq == 500
            assert outbox.max_read_seq - outbox.delivered_seq <= 4 * 20
            assert up.handle.store.figures()["high_water"] == 580
            up.proxy.drop_acks_above = None
            up.proxy.cut()
            await until(up.client, lambda s: s["attempts"] >= 2 and s["connected"])
            await outbox.wait_delivered(outbox.last_seq)
            figures = up.handle.store.figures()
    assert figures["duplicates"] == 0  # resumed after the platform's mark, not ours
    assert figures["stored"] == outbox.last_seq
    up.assert_platform_has_everything_once()


async def test_stalled_platform_fills_the_window_and_the_client_stops_reading(
        tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    # Real sockets need real time to move; virtual time only jumps after 20 ms of idleness.
    autojump_clock.autojump_threshold = 0.02
    window, batch_max = 3, 10
    outbox = FakeOutbox()
    outbox.extend(500)
    with trio.fail_after(1000):
        async with link(tmp_path, outbox, command_check_s=3600.0, batch_max=batch_max,
                        window=window, connect_timeout_s=60.0) as up:
            up.proxy.drop_acks_above = 0  # accepts, stores, answers pings, never acks
            await up.proxy.wait_for(lambda: up.proxy.acks_dropped >= window)
            read_then = outbox.max_read_seq
            await trio.sleep(120)  # virtual: a dozen heartbeats, all answered
            stats = up.client.statistics()
            assert outbox.max_read_seq == read_then == window * batch_max
            assert outbox.max_read_seq - outbox.delivered_seq <= window * batch_max
            assert stats["connected"] and stats["reconnects"] == 0
            assert outbox.delivered_seq == 0
            # The platform recovers (acks flow again after a reconnect).
            up.proxy.drop_acks_above = None
            up.proxy.cut()
            await until(up.client, lambda s: s["attempts"] >= 2 and s["connected"])
            await outbox.wait_delivered(outbox.last_seq)
    up.assert_platform_has_everything_once()
