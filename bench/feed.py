"""Staff feed benchmark: what fan-out to staff clients costs the outbox, and how fast it is.

    .venv/bin/python bench/feed.py [--clients 10] [--rate 1000] [--seconds 5] [--burst 20000]

The clients run in a child process (so their JSON parsing does not share the server's thread),
each subscribed to every channel; one more client authenticates, subscribes and never reads.
Prints, all from the same run:
  paced      at `--rate` events/s: capture -> durable p99 without and with the feed, events each
             live client got, capture -> client receipt p50/p99, whether the stalled one was dropped
  burst      `--burst` events from 64 producers as fast as the outbox takes them, without and with
             the feed (clients that cannot keep up are dropped by design: never the outbox)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import nacl.signing
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.events import system_draft
from gateway.feed.protocol import TokenEntry, hash_token
from gateway.feed.server import FeedServer, FeedSettings
from gateway.outbox import Outbox, OutboxSettings
from gateway.signing import Signer

TOKEN = "bench-token"
CHANNELS = ["game", "cash", "alerts", "system", "player"]


def draft(i: int):
    return system_draft("betPlaced", {"wager_credits": i % 50}, now=time.time(),
                        monotonic=trio.current_time())


async def burst(outbox: Outbox, count: int, producers: int = 64) -> float:
    started = trio.current_time()
    async with trio.open_nursery() as nursery:
        for p in range(producers):
            async def produce(p=p):
                for i in range(p, count, producers):
                    await outbox.append(draft(i))
            nursery.start_soon(produce)
    return count / (trio.current_time() - started)


async def paced(outbox: Outbox, rate: int, seconds: float) -> None:
    interval, next_at = 1.0 / rate, trio.current_time()
    async with trio.open_nursery() as nursery:
        for i in range(int(rate * seconds)):
            next_at += interval
            await trio.sleep_until(next_at)
            nursery.start_soon(outbox.append, draft(i))


def p99_ms(outbox: Outbox) -> float | None:
    return outbox.statistics()["durable_p99_ms"]


async def run_outbox(path: Path, signer: Signer, args: argparse.Namespace, feed: bool) -> None:
    outbox = Outbox.open(OutboxSettings(path=path, gateway_id="bench"), signer)
    label = "with feed" if feed else "no feed  "
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run_writer)
        children = None
        if feed:
            settings = FeedSettings(tokens=(TokenEntry("bench", "viewer", hash_token(TOKEN)),))
            server = FeedServer(settings, outbox, dict)
            port = await nursery.start(server.run)
            children = await nursery.start(_clients, port, args)
        await paced(outbox, args.rate, args.seconds)
        print(f"paced      {label}: capture -> durable p99 {p99_ms(outbox)} ms at {args.rate}/s")
        if feed:
            result = json.loads(await children.receive())
            print(f"           clients got {min(result['counts'])}-{max(result['counts'])} of "
                  f"{int(args.rate * args.seconds)} events; capture -> client p50 "
                  f"{result['p50_ms']} ms, p99 {result['p99_ms']} ms; stalled client dropped: "
                  f"{result['stalled_dropped']}")
        outbox.durable_latencies.clear()
        rate = await burst(outbox, args.burst)
        print(f"burst      {label}: {rate:,.0f} events/s, capture -> durable p99 "
              f"{p99_ms(outbox)} ms" + (f"; feed clients still connected: "
                                        f"{server.client_count}/{args.clients}" if feed else ""))
        nursery.cancel_scope.cancel()
    await outbox.aclose()


async def _clients(port: int, args: argparse.Namespace, *, task_status) -> None:
    """Run the client process; hand back a channel that yields its JSON report."""
    send, receive = trio.open_memory_channel[str](1)
    command = [sys.executable, __file__, "--client", str(port), "--clients", str(args.clients),
               "--expect", str(int(args.rate * args.seconds))]
    async with trio.open_nursery() as nursery:
        process = await nursery.start(partial(trio.run_process, command,
                                              stdout=subprocess.PIPE, check=False))
        buffer = b""
        while b"\n" not in buffer:
            buffer += await process.stdout.receive_some()
        assert buffer.startswith(b"ready"), buffer
        task_status.started(receive)
        while not buffer.endswith(b"}\n"):
            buffer += await process.stdout.receive_some()
        await send.send(buffer.split(b"\n", 1)[1].decode())


# -- the client process -----------------------------------------------------------------------------

async def client_main(args: argparse.Namespace) -> None:
    url = f"ws://127.0.0.1:{args.client}/feed"
    counts = [0] * args.clients
    latencies: list[float] = []
    dropped = trio.Event()
    done = trio.Event()

    async def live(index: int, ready: trio.Event) -> None:
        async with open_websocket_url(url) as ws:
            await _join(ws)
            ready.set()
            while True:
                message = json.loads(await ws.get_message())
                if message["type"] == "event":
                    counts[index] += 1
                    stamp = dt.datetime.fromisoformat(message["event"]["timestamp"]).timestamp()
                    latencies.append(time.time() - stamp)
                    if min(counts) >= args.expect:
                        done.set()

    async def stalled(ready: trio.Event) -> None:
        async with open_websocket_url(url) as ws:
            await _join(ws)
            ready.set()
            await done.wait()
            try:
                while True:
                    await ws.get_message()
            except ConnectionClosed as closed:
                if closed.reason.code == 1008:
                    dropped.set()

    async with trio.open_nursery() as nursery:
        readies = [trio.Event() for _ in range(args.clients + 1)]
        for i in range(args.clients):
            nursery.start_soon(live, i, readies[i])
        nursery.start_soon(stalled, readies[-1])
        for ready in readies:
            await ready.wait()
        print("ready", flush=True)
        with trio.move_on_after(args.expect / 100 + 30):
            await done.wait()
        with trio.move_on_after(10):
            await dropped.wait()
        latencies.sort()

        def pick(q: float) -> float | None:
            if not latencies:
                return None
            return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)

        print(json.dumps({"counts": counts, "p50_ms": pick(0.5), "p99_ms": pick(0.99),
                          "stalled_dropped": dropped.is_set()}), flush=True)
        nursery.cancel_scope.cancel()


async def _join(ws) -> None:
    await ws.send_message(json.dumps({"type": "auth", "token": TOKEN}))
    await ws.get_message()
    await ws.send_message(json.dumps({"type": "subscribe", "channels": CHANNELS}))
    while json.loads(await ws.get_message())["type"] != "subscribed":
        pass


async def main(args: argparse.Namespace) -> None:
    signer = Signer(nacl.signing.SigningKey.generate())
    with tempfile.TemporaryDirectory() as tmp:
        await run_outbox(Path(tmp) / "plain.db", signer, args, feed=False)
        await run_outbox(Path(tmp) / "feed.db", signer, args, feed=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--burst", type=int, default=20_000)
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    trio.run(client_main if parsed.client else main, parsed)
