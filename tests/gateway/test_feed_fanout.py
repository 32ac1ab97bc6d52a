"""Fan-out to many feed clients: events encoded once, coalesced into `events` frames, slow clients
dropped without slowing the pipeline. Real WebSocket clients over loopback; trio's MockClock
(running at real speed, so the outbox's own timers work) where the batch interval matters."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from functools import partial
from typing import Any

import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from gateway.feed.fanout import Batch as _Batch
from gateway.feed.fanout import live_frame as _live_frame
from gateway.feed.fanout import pause as _pause
from gateway.feed.protocol import encode_envelope, envelope_json, events_frame
from gateway.feed.server import FeedServer, FeedSettings
from gateway.signing import decode_envelope

from .test_feed_server import TOKENS, Feed, auth, recv_events, recv_type, subscribe

ALL = ["game", "cash", "alerts", "system", "player"]
BIG = "x" * 16_000


@pytest.fixture
def feed_with(make_outbox, nursery):
    """Start an outbox writer and a feed server (settings overridden by keyword)."""

    async def start(**overrides: Any) -> Feed:
        outbox = make_outbox()
        await nursery.start(outbox.run_writer)
        server = FeedServer(replace(FeedSettings(tokens=TOKENS), **overrides), outbox, dict)
        port = await nursery.start(server.run)
        return Feed(server, outbox, port, {})

    return start


async def stored(feed: Feed) -> list[dict[str, Any]]:
    """Every stored event as a client must see it."""
    rows = await feed.outbox.read_after(0, 10_000)
    return [encode_envelope(decode_envelope(body)) for _seq, body in rows]


async def test_each_event_is_encoded_once_however_many_clients_want_it(feed_with):
    with trio.fail_after(10):
        feed = await feed_with()
        async with open_websocket_url(feed.url) as a, open_websocket_url(feed.url) as b, \
                open_websocket_url(feed.url) as c, open_websocket_url(feed.url) as floor, \
                open_websocket_url(feed.url) as bets:
            for ws in (a, b, c):
                await auth(ws, "viewer-token")
                await subscribe(ws, channels=ALL)
            await auth(floor, "viewer-token")
            await subscribe(floor, channels=["alerts"])
            await auth(bets, "viewer-token")
            await subscribe(bets, events=["betPlaced"], machines=["p1/1"])
            async with trio.open_nursery() as producers:   # concurrent: several per commit
                for n in range(6):
                    producers.start_soon(feed.append, "betPlaced", {"wager_credits": n})
                    producers.start_soon(partial(feed.append, "betPlaced", {"wager_credits": n},
                                                 port="p2"))
                producers.start_soon(feed.append, "tilt", {"kind": "reel"})
                producers.start_soon(feed.append, "doorOpened", {"door": "main"})
            events = await stored(feed)
            assert len(events) == 14
            for ws in (a, b, c):
                assert await recv_events(ws, 14) == events, "whole envelopes, in seq order"
            assert await recv_events(floor, 2) == [e for e in events if e["channel"] == "alerts"]
            assert await recv_events(bets, 6) == [
                e for e in events if e["event"] == "betPlaced" and e["machine"]["port"] == "p1"]
            assert feed.server.statistics().events_encoded == 14


async def test_events_nobody_wants_are_not_encoded(feed_with):
    with trio.fail_after(10):
        feed = await feed_with()
        async with open_websocket_url(feed.url) as floor:
            await auth(floor, "viewer-token")
            await subscribe(floor, channels=["alerts"])
            for n in range(20):
                await feed.append("betPlaced", {"wager_credits": n})
            tilt = await feed.append("tilt", {"kind": "reel"})
            assert [e["seq"] for e in await recv_events(floor)] == [tilt]
            assert feed.server.statistics().events_encoded == 1


async def test_events_in_one_interval_come_in_one_frame(feed_with, mock_clock):
    mock_clock.rate = 1.0          # real speed for the outbox's commit timer; jumps for the rest
    interval = 1000.0
    feed = await feed_with(batch_interval_s=interval)
    async with open_websocket_url(feed.url) as ws:
        with trio.fail_after(10):   # never around the jump: it would expire with it
            await auth(ws, "viewer-token")
            await subscribe(ws, channels=["game"])
            first = await feed.append("betPlaced", {"wager_credits": 1})
            # After a quiet spell the first event goes out at once, in a frame of its own ...
            frame = await recv_type(ws, "events")
            assert [e["seq"] for e in frame["events"]] == [first]
            # ... and what follows within the interval waits for it to end, then comes together.
            more = [await feed.append("betPlaced", {"wager_credits": n}) for n in range(4)]
        mock_clock.jump(interval)
        with trio.fail_after(10):
            frame = await recv_type(ws, "events")
            assert [e["seq"] for e in frame["events"]] == more
            assert frame["events"] == (await stored(feed))[1:]
            stats = feed.server.statistics()
            assert (stats.flushes, stats.frames_queued, stats.events_encoded) == (2, 2, 5)


async def test_frames_are_split_at_max_frame_bytes(feed_with, mock_clock):
    mock_clock.rate = 1.0
    interval = 1000.0
    limit = 40_000
    feed = await feed_with(batch_interval_s=interval, max_frame_bytes=limit)
    async with open_websocket_url(feed.url) as ws:
        with trio.fail_after(10):
            await auth(ws, "viewer-token")
            await subscribe(ws, channels=["system"])
            await feed.append("lossMarker", {"reason": "test"}, machine=False)
            await recv_type(ws, "events")      # the fan-out now waits out its interval
            seqs = [await feed.append("lossMarker", {"reason": "test", "count": n,
                                                     "detail": BIG}, machine=False)
                    for n in range(7)]
        mock_clock.jump(interval)
        with trio.fail_after(10):
            got: list[int] = []
            sizes: list[int] = []
            while len(got) < len(seqs):
                text = await ws.get_message()
                frame = json.loads(text)
                if frame["type"] == "events":
                    got += [e["seq"] for e in frame["events"]]
                    sizes.append(len(text))
            assert got == seqs
            assert len(sizes) >= 3 and max(sizes) <= limit, sizes


async def test_a_stalled_client_is_dropped_and_the_pipeline_does_not_notice(feed_with):
    count, producers = 600, 20

    async def storm(feed: Feed) -> float:
        started = time.monotonic()
        async with trio.open_nursery() as nursery:
            for p in range(producers):
                async def produce(p: int = p) -> None:
                    for n in range(p, count, producers):
                        await feed.append("lossMarker", {"reason": "test", "count": n,
                                                         "detail": BIG}, machine=False)
                nursery.start_soon(produce)
        return time.monotonic() - started

    with trio.fail_after(60):
        feed = await feed_with(client_queue=50)
        alone = await storm(feed)    # the same work with nobody connected: the baseline
        async with open_websocket_url(feed.url) as stalled, open_websocket_url(feed.url) as ok:
            await auth(stalled, "viewer-token")
            await subscribe(stalled, channels=ALL)
            await auth(ok, "viewer-token")
            await subscribe(ok, channels=["alerts"])
            # `stalled` reads nothing from here on: ~10 MB more than the socket buffers hold.
            watched = await storm(feed)
            assert feed.outbox.last_seq == 2 * count
            # However far behind the client is, the outbox kept its pace (generous bound: the
            # feed still encodes and sends these big events to the client until it is dropped).
            assert watched < 3 * alone + 1.0, (watched, alone)
            with pytest.raises(ConnectionClosed) as caught:
                while True:
                    await stalled.get_message()
            assert (caught.value.reason.code, caught.value.reason.reason) == (1008, "too slow")
            stats = feed.server.statistics()
            assert (stats.clients, stats.dropped) == (1, 1)
            tilt = await feed.append("tilt", {"kind": "after"})
            assert [e["seq"] for e in await recv_events(ok)] == [tilt]


def test_a_lagging_client_gets_its_waiting_batches_as_one_frame_without_replayed_events():
    texts = [envelope_json({"seq": seq, "event": "betPlaced", "hash": b"\x01"})
             for seq in range(1, 6)]

    def batch(first: int, last: int) -> _Batch:
        part = texts[first - 1:last]
        return _Batch(tuple(range(first, last + 1)), tuple(part), events_frame(part))

    one = batch(1, 2)
    assert _live_frame([one], 0) is one.frame
    merged = json.loads(_live_frame([one, batch(3, 5)], 0))
    assert [e["seq"] for e in merged["events"]] == [1, 2, 3, 4, 5]
    assert merged["events"][0]["hash"] == "01"
    after_replay = json.loads(_live_frame([one, batch(3, 5)], 3))
    assert [e["seq"] for e in after_replay["events"]] == [4, 5]
    assert _live_frame([one], 2) is None


def test_the_pause_after_a_flush_keeps_the_frame_budget():
    settings = FeedSettings(batch_interval_s=0.05, max_frames_per_s=2000)
    assert _pause(0, settings) == _pause(10, settings) == 0.05
    assert _pause(400, settings) == pytest.approx(0.2)   # 200 clients: events + alert state
    with pytest.raises(ValueError, match="max_frames_per_s"):
        FeedSettings(max_frames_per_s=0)
