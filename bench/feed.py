"""Staff feed benchmark: what fan-out to many staff clients costs the pipeline, measured in one run.

    .venv/bin/python bench/feed.py [--clients 200] [--rate 1000] [--seconds 5] [--alert-every 100]

One outbox and one feed server in this process, as in the daemon; the clients run in a child
process at nice 10 (so their work does not share the server's thread; in a venue they run on
other machines anyway). Events are paced at `--rate`/s: bets on the `game` channel, with a door
opening or closing on the `alerts` channel every `--alert-every` events. Four phases, each
`--seconds` long, after a 1 s warm-up:

  0 clients   the baseline: the feed server is up, nobody is connected
  all         `--clients` clients subscribed to every channel
  alerts      `--clients` clients subscribed to the `alerts` channel only (the floor's case)
  0 again     the baseline again, to show how much the machine's other load drifted

In the `all` and `alerts` phases one more client subscribes to everything and never reads: the
gateway must drop it, never slow down. For each phase it prints capture -> durable p50/p95/p99
(the outbox's own figure), this process's CPU seconds per wall second (all threads, and the trio
thread alone), and for the client phases capture -> feed client p50/p95/p99 (the client's receive
time minus the event's timestamp, which has millisecond resolution; measured on `--probes`
clients, the others only count), the latency the feed adds over capture -> durable, events/s
delivered, frames/s, and how many clients were dropped and why.

    .venv/bin/python bench/feed.py --board [--clients 200] [--rate 200] [--alerts-per-s 5]

The floor's case instead: `--clients` alert boards (subscribed to no events: the welcome's
snapshot, then `alerts_delta` messages) on a board preloaded with `--open` (520) open alerts, while
`--rate` events/s are paced of which `--alerts-per-s` open or close an alert. It prints, per board
change, capture -> client p50/p95/p99 (the change's own timestamp to its arrival, on `--probes`
clients) and the bytes per second each client received (mean and max).
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import nacl.signing
import structlog
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.base import MachineRef
from gateway.events import system_draft
from gateway.feed.protocol import TokenEntry, hash_token
from gateway.feed.server import FeedServer, FeedSettings
from gateway.outbox import Outbox, OutboxSettings
from gateway.signing import Signer

TOKEN = "bench-token"
CHANNELS = {"all": ["game", "cash", "alerts", "system", "player"], "alerts": ["alerts"],
            "board": []}


def draft(i: int, alert_every: int):
    machine = MachineRef(f"bank-{i % 8:02d}", 1 + i % 16)
    if alert_every and i % alert_every == 0:
        event = "doorOpened" if (i // alert_every) % 2 == 0 else "doorClosed"
        return system_draft(event, {"door": "main"}, now=time.time(),
                            monotonic=trio.current_time(), machine=MachineRef("bank-00", 1))
    return system_draft("betPlaced", {"wager_credits": i % 50}, now=time.time(),
                        monotonic=trio.current_time(), machine=machine)


async def paced(outbox: Outbox, rate: int, seconds: float, alert_every: int,
                first: int = 0) -> int:
    """Append `rate * seconds` events on a fixed schedule; return how many alert events."""
    interval, next_at, alerts = 1.0 / rate, trio.current_time(), 0
    async with trio.open_nursery() as nursery:
        for i in range(first, first + int(rate * seconds)):
            next_at += interval
            await trio.sleep_until(next_at)
            alerts += bool(alert_every) and i % alert_every == 0
            nursery.start_soon(outbox.append, draft(i, alert_every))
    return alerts


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def fmt3(values: list[float]) -> str:
    return "/".join(f"{pct(values, q):.1f}" for q in (0.5, 0.95, 0.99))


async def phase(name: str, outbox: Outbox, server: FeedServer, port: int,
                args: argparse.Namespace, first: int) -> dict[str, Any]:
    child = None
    async with trio.open_nursery() as nursery:
        if name in CHANNELS:
            child = await nursery.start(_client_process, port, args, name)
        outbox.durable_latencies.clear()
        before = server.statistics()
        wall, cpu, trio_cpu = time.monotonic(), time.process_time(), time.thread_time()
        alerts = await paced(outbox, args.rate, args.seconds, args.alert_every, first)
        wall, cpu, trio_cpu = (time.monotonic() - wall, time.process_time() - cpu,
                               time.thread_time() - trio_cpu)
        durable = sorted(v * 1000 for v in outbox.durable_latencies)
        after = server.statistics()
        report = None
        if child is not None:
            events = int(args.rate * args.seconds)
            await child.send(f"{events if name == 'all' else alerts}\n")
            report = json.loads(await child.receive())
    print(f"{name:<9}: capture->durable p50/p95/p99 {fmt3(durable)} ms; CPU {cpu / wall:.2f} s/s "
          f"(trio thread {trio_cpu / wall:.2f}); {args.rate:,}/s paced, {alerts} alert events")
    if report is not None:
        feed = report["latencies_ms"]
        added = "/".join(f"{pct(feed, q) - pct(durable, q):+.1f}" for q in (0.5, 0.95, 0.99))
        reasons = ", ".join(f"{n} x {why}" for why, n in sorted(report["closed"].items())) or "none"
        frames = after.frames_sent - before.frames_sent
        print(f"           capture->client p50/p95/p99 {fmt3(feed)} ms (added over durable "
              f"{added} ms; {len(feed):,} samples on {report['probes']} clients)")
        print(f"           delivered {report['events']:,} events to {args.clients} clients: "
              f"{report['events_per_s']:,.0f} events/s; {frames / wall:,.0f} frames/s; "
              f"encoded {after.events_encoded - before.events_encoded:,} events once each")
        print(f"           client process CPU {report['cpu_per_s']:.2f} s/s (shares the machine)")
        print(f"           live clients complete: {report['complete']}/{args.clients}; dropped by "
              f"the gateway: {after.dropped - before.dropped} (client side: {reasons}); "
              f"never-reading client closed with: {report['stalled']}")
    return {"durable": durable, "cpu": cpu / wall}


def board_draft(i: int, rate: int, alerts_per_s: int, opened: list[tuple[str, int]]):
    """Event `i` of the busy floor: every (rate / alerts_per_s)-th an alert event (four in five
    open a door on a machine with none open, one in five closes the oldest), the rest bets."""
    every = max(1, rate // alerts_per_s)
    if i % every:
        return system_draft("betPlaced", {"wager_credits": i % 50}, now=time.time(),
                            monotonic=trio.current_time(),
                            machine=MachineRef(f"bank-{i % 8:02d}", 1 + i % 16))
    n = i // every
    if n % 5 == 4 and opened:
        port, address = opened.pop(0)
        return system_draft("doorClosed", {"door": "main"}, now=time.time(),
                            monotonic=trio.current_time(), machine=MachineRef(port, address))
    machine = (f"bank-{chr(97 + n % 8)}-{n // 8 % 100:02d}", 1 + n // 800)
    opened.append(machine)
    return system_draft("doorOpened", {"door": "main"}, now=time.time(),
                        monotonic=trio.current_time(), machine=MachineRef(*machine))


async def board_main(args: argparse.Namespace) -> None:
    """The floor's case: alert boards on a busy floor (see the module docstring)."""
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    signer = Signer(nacl.signing.SigningKey.generate())
    with tempfile.TemporaryDirectory() as tmp:
        outbox = Outbox.open(OutboxSettings(path=Path(tmp) / "feed.db", gateway_id="bench"),
                             signer)
        # Every client connects from 127.0.0.1: lift the per-address caps (gateway/feed/guard.py).
        settings = FeedSettings(tokens=(TokenEntry("bench", "viewer", hash_token(TOKEN)),),
                                max_connections=1024, max_connections_per_address=1024,
                                max_unauthenticated=1024, max_unauthenticated_per_address=1024,
                                auth_failures_per_minute=10_000)
        server = FeedServer(settings, outbox, dict)
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            for n in range(args.open):   # the open alerts already on the board
                await outbox.append(system_draft(
                    "tilt", {"kind": "bill_jam"}, now=time.time(), monotonic=trio.current_time(),
                    machine=MachineRef(f"pit-{n % 40:02d}", 1 + n // 40)))
            port = await nursery.start(server.run)
            print(f"board benchmark: {args.clients} boards, {len(server.board.alerts)} open "
                  f"alerts, {args.rate}/s events of which {args.alerts_per_s}/s alert events, "
                  f"{args.seconds:g} s; {os.cpu_count()} cores, load average "
                  f"{os.getloadavg()[0]:.1f} at start")
            child = await nursery.start(_client_process, port, args, "board")
            version = server.board.version
            opened: list[tuple[str, int]] = []
            interval, next_at = 1.0 / args.rate, trio.current_time()
            wall, cpu = time.monotonic(), time.process_time()
            outbox.durable_latencies.clear()
            async with trio.open_nursery() as pacing:
                for i in range(int(args.rate * args.seconds)):
                    next_at += interval
                    await trio.sleep_until(next_at)
                    pacing.start_soon(outbox.append,
                                      board_draft(i, args.rate, args.alerts_per_s, opened))
            wall, cpu = time.monotonic() - wall, time.process_time() - cpu
            durable = sorted(v * 1000 for v in outbox.durable_latencies)
            await trio.sleep(0.5)   # let the last flush go out before asking for the count
            changes = server.board.version - version
            await child.send(f"{changes}\n")
            report = json.loads(await child.receive())
            nursery.cancel_scope.cancel()
        await outbox.aclose()
    lat = report["latencies_ms"]
    rates = sorted(report["bytes_per_s"])
    print(f"board changes {changes} in {wall:.1f} s ({changes / wall:.1f}/s), "
          f"{len(server.board.alerts)} open at the end; gateway CPU {cpu / wall:.2f} s/s")
    print(f"capture->durable p50/p95/p99 {fmt3(durable)} ms (the outbox alone, all events)")
    print(f"capture->board p50/p95/p99 {fmt3(lat)} ms ({len(lat):,} samples on "
          f"{report['probes']} boards); complete {report['complete']}/{args.clients}; "
          f"closed: {report['closed'] or 'none'}")
    if rates:
        print(f"bytes per board: mean {sum(rates) / len(rates) / 1024:.2f} KiB/s, max "
              f"{rates[-1] / 1024:.2f} KiB/s (welcome snapshot of "
              f"{report['welcome_bytes'] / 1024:.0f} KiB not counted)")


async def main(args: argparse.Namespace) -> None:
    # Not measured here: 200 "client joined" lines and one "too slow" warning per dropped client.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    signer = Signer(nacl.signing.SigningKey.generate())
    with tempfile.TemporaryDirectory() as tmp:
        outbox = Outbox.open(OutboxSettings(path=Path(tmp) / "feed.db", gateway_id="bench"),
                             signer)
        # Every client connects from 127.0.0.1: lift the per-address caps (gateway/feed/guard.py).
        settings = FeedSettings(tokens=(TokenEntry("bench", "viewer", hash_token(TOKEN)),),
                                max_connections=1024, max_connections_per_address=1024,
                                max_unauthenticated=1024, max_unauthenticated_per_address=1024,
                                auth_failures_per_minute=10_000)
        server = FeedServer(settings, outbox, dict)
        print(f"feed benchmark: {args.clients} clients, {args.rate:,} events/s for "
              f"{args.seconds:g} s per phase, one frame per client per "
              f"{settings.batch_interval_s * 1000:g} ms at most; {os.cpu_count()} cores, load "
              f"average {os.getloadavg()[0]:.1f} at start")
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            port = await nursery.start(server.run)
            await paced(outbox, args.rate, 1.0, args.alert_every)   # warm-up, not measured
            first = args.rate
            results = {}
            for name in ("0 clients", "all", "alerts", "0 again"):
                results[name] = await phase(name, outbox, server, port, args, first)
                first += int(args.rate * args.seconds)
            # The baseline is the better of the two 0-client phases (before and after): the
            # machine's other load drifts, and the feed should be judged against its best.
            base = min(results["0 clients"], results["0 again"],
                       key=lambda r: pct(r["durable"], 0.99))
            for name in ("all", "alerts"):
                extra = pct(results[name]["durable"], 0.99) - pct(base["durable"], 0.99)
                print(f"summary {name:<6}: capture->durable p99 {pct(results[name]['durable'], .99):.1f}"
                      f" ms, {extra:+.1f} ms and CPU {results[name]['cpu'] - base['cpu']:+.2f} s/s "
                      f"against 0 clients (design target p99 <= 10 ms)")
            nursery.cancel_scope.cancel()
        await outbox.aclose()


async def _client_process(port: int, args: argparse.Namespace, mode: str, *,
                          task_status: trio.TaskStatus[Any]) -> None:
    """Run the clients in a child process until they are all subscribed; hand back a channel:
    send it the number of events each live client should get, receive the JSON report."""
    to_child, from_parent = trio.open_memory_channel[str](1)
    to_parent, report = trio.open_memory_channel[str](1)

    class Link:
        async def send(self, line: str) -> None:
            await to_child.send(line)

        async def receive(self) -> str:
            return await report.receive()

    command = [sys.executable, __file__, "--client", str(port), "--mode", mode,
               "--clients", str(args.clients), "--probes", str(args.probes),
               "--stalled" if args.stalled else "--no-stalled"]
    async with trio.open_nursery() as nursery:
        process = await nursery.start(partial(trio.run_process, command, stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, check=True))
        buffer = b""
        while b"\n" not in buffer:
            chunk = await process.stdout.receive_some()
            if not chunk:
                raise RuntimeError("client process exited before it was ready")
            buffer += chunk
        assert buffer.startswith(b"ready"), buffer
        buffer = buffer.split(b"\n", 1)[1]
        task_status.started(Link())
        await process.stdin.send_all((await from_parent.receive()).encode())
        while not buffer.endswith(b"\n"):
            chunk = await process.stdout.receive_some()
            if not chunk:
                raise RuntimeError("client process exited without a report")
            buffer += chunk
        await to_parent.send(buffer.decode())


# -- the client process -----------------------------------------------------------------------------
#
# 200 clients taking 1,000 events/s each is ~120 MB/s of JSON: more than one Python process can
# push through trio-websocket (it reads 4 KiB at a time) on the 2 cores it shares with the
# gateway. So these clients speak the few bits of RFC 6455 they need over a plain socket: the
# upgrade, masked text frames out, unmasked frames in, read 256 KiB at a time. Non-probe clients
# only count events (bytes.count); probes find every event's timestamp.

_TIMESTAMP = re.compile(rb'"timestamp":"([^"]+)"')


class LeanSocket:
    """A minimal WebSocket client connection: enough to join the feed and read frames fast."""

    def __init__(self, stream: trio.SocketStream, rest: bytes) -> None:
        self.stream = stream
        self.buffer = bytearray(rest)
        self.offset = 0

    @classmethod
    async def connect(cls, port: int) -> LeanSocket:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16))
        await stream.send_all(
            b"GET /feed HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"
            b"\r\n" % (port, key))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise OSError("closed during the upgrade")
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise OSError(head.split(b"\r\n", 1)[0].decode())
        return cls(stream, rest)

    async def send_text(self, text: str) -> None:
        payload = text.encode()
        # Masked, as a client must; an all-zero mask leaves the payload as it is.
        size = bytes([0x80 | len(payload)]) if len(payload) < 126 else \
            bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
        await self.stream.send_all(b"\x81" + size + b"\0\0\0\0" + payload)

    async def receive(self) -> tuple[int, bytes]:
        """The next frame as (opcode, payload); (-1, b"") when the connection ends."""
        while True:
            buf, at = self.buffer, self.offset
            if len(buf) - at >= 2:
                opcode, size, start = buf[at] & 0x0F, buf[at + 1] & 0x7F, at + 2
                if size == 126:
                    size, start = int.from_bytes(buf[at + 2:at + 4], "big"), at + 4
                elif size == 127:
                    size, start = int.from_bytes(buf[at + 2:at + 10], "big"), at + 10
                if len(buf) >= start + size:
                    self.offset = start + size
                    return opcode, bytes(buf[start:start + size])
            if self.offset:
                del self.buffer[:self.offset]
                self.offset = 0
            try:
                chunk = await self.stream.receive_some(262144)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            if not chunk:
                return -1, b""
            self.buffer += chunk

    async def receive_json(self) -> dict[str, Any]:
        opcode, payload = await self.receive()
        if opcode != 1:
            raise ConnectionError(_close_reason(opcode, payload))
        return json.loads(payload)


def _close_reason(opcode: int, payload: bytes) -> str:
    if opcode == 8 and len(payload) >= 2:
        return f"{int.from_bytes(payload[:2], 'big')} {payload[2:].decode(errors='replace')}"
    return "1006 connection cut" if opcode in (-1, 8) else f"opcode {opcode}"


async def _join(ws: LeanSocket, channels: list[str], sizes: list[int] | None = None) -> None:
    await ws.send_text(json.dumps({"type": "auth", "token": TOKEN}))
    opcode, payload = await ws.receive()
    if opcode != 1:
        raise ConnectionError(_close_reason(opcode, payload))
    if sizes is not None:
        sizes[0] = len(payload)
    await ws.send_text(json.dumps({"type": "subscribe", "channels": channels}))
    while (await ws.receive_json())["type"] != "subscribed":
        pass


async def client_main(args: argparse.Namespace) -> None:
    # In a venue the browsers run elsewhere; here they share 2 cores with the gateway they
    # measure, so they take the CPU only when the gateway does not want it.
    os.nice(10)
    channels = CHANNELS[args.mode]
    board = args.mode == "board"
    received = [0] * args.clients
    welcome_bytes = [0]
    counts = [0] * args.clients
    connected = [False] * args.clients
    latencies: list[float] = []
    stamps: dict[bytes, float] = {}   # timestamps repeat across clients: parse each once
    closed: Counter[str] = Counter()
    first_at: list[float] = []
    last_at = [0.0]
    stalled_closed = ["still open"]
    expect: list[int | None] = [None]
    changed = trio.Event()

    def stamp(text: bytes) -> float:
        value = stamps.get(text)
        if value is None:
            value = stamps[text] = dt.datetime.fromisoformat(text.decode()).timestamp()
        return value

    async def live(index: int, ready: trio.Event) -> None:
        probe = index < args.probes
        try:
            ws = await LeanSocket.connect(args.client)
            async with ws.stream:
                await _join(ws, channels, welcome_bytes)
                connected[index] = True
                ready.set()
                while True:
                    opcode, payload = await ws.receive()
                    if opcode != 1:
                        closed[_close_reason(opcode, payload)] += 1
                        return
                    if board:
                        received[index] += len(payload)
                        if not payload.startswith(b'{"type":"alerts_delta"'):
                            continue
                        now = time.time()
                        delta = json.loads(payload)
                        for change in delta["changes"]:
                            if probe:
                                alert = change.get("alert") or {}
                                at = change.get("at") or alert.get("acknowledged_at") \
                                    if change["op"] in ("closed", "acknowledged") else \
                                    alert.get("last") or alert.get("opened")
                                latencies.append((now - stamp(at.encode())) * 1000)
                        counts[index] += len(delta["changes"])
                        if not first_at:
                            first_at.append(now)
                        last_at[0] = now
                        if expect[0] is not None and counts[index] >= expect[0]:
                            changed.set()
                        continue
                    if not payload.startswith(b'{"type":"events"'):
                        continue
                    now = time.time()
                    if probe:
                        found = _TIMESTAMP.findall(payload)
                        latencies.extend([(now - stamp(s)) * 1000 for s in found])
                        counts[index] += len(found)
                    else:
                        counts[index] += payload.count(b'"timestamp":')
                    if not first_at:
                        first_at.append(now)
                    last_at[0] = now
                    if expect[0] is not None and counts[index] >= expect[0]:
                        changed.set()
        except (OSError, ConnectionError) as err:
            closed[f"failed: {err}"] += 1
        finally:
            connected[index] = False
            ready.set()
            changed.set()

    async def stalled(ready: trio.Event, report_wanted: trio.Event, done: trio.Event) -> None:
        try:
            ws = await LeanSocket.connect(args.client)
            async with ws.stream:
                await _join(ws, CHANNELS["all"])
                ready.set()
                await report_wanted.wait()
                with trio.move_on_after(10):
                    while True:
                        opcode, payload = await ws.receive()
                        if opcode != 1:
                            stalled_closed[0] = _close_reason(opcode, payload)
                            break
        except (OSError, ConnectionError) as err:
            stalled_closed[0] = f"failed: {err}"
        finally:
            ready.set()
            done.set()

    async with trio.open_nursery() as nursery:
        readies = [trio.Event() for _ in range(args.clients + 1)]
        report_wanted, stalled_done = trio.Event(), trio.Event()
        for i in range(args.clients):
            nursery.start_soon(live, i, readies[i])
        if args.stalled:
            nursery.start_soon(stalled, readies[-1], report_wanted, stalled_done)
        else:
            readies[-1].set()
            stalled_done.set()
        for ready in readies:
            await ready.wait()
        print("ready", flush=True)
        cpu_ready, wall_ready = time.process_time(), time.monotonic()
        stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
        line = b""
        while not line.endswith(b"\n"):
            line += await stdin.receive_some()
        wanted = expect[0] = int(line)
        cpu_paced = (time.process_time() - cpu_ready) / (time.monotonic() - wall_ready)
        with trio.move_on_after(5):   # until every live client has got everything, or 5 s
            while any(connected[i] and counts[i] < wanted for i in range(args.clients)):
                await changed.wait()
                changed = trio.Event()
        report_wanted.set()
        with trio.move_on_after(12):
            await stalled_done.wait()
        latencies.sort()
        events = sum(counts)
        span = (last_at[0] - first_at[0]) if first_at else 0.0
        print(json.dumps({
            "cpu_per_s": cpu_paced,
            "events": events, "events_per_s": events / span if span > 0 else 0.0,
            "complete": sum(1 for c in counts if c >= wanted), "closed": dict(closed),
            "latencies_ms": latencies, "probes": min(args.probes, args.clients),
            "bytes_per_s": [r / span for r in received] if span > 0 else [],
            "welcome_bytes": welcome_bytes[0],
            "stalled": stalled_closed[0]}), flush=True)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--alert-every", type=int, default=100,
                        help="one door event (alerts channel) every N events; 0 for none")
    parser.add_argument("--probes", type=int, default=20,
                        help="clients that time every event they get (the rest only count)")
    parser.add_argument("--stalled", action=argparse.BooleanOptionalAction, default=True,
                        help="also connect one client that never reads (default: yes)")
    parser.add_argument("--board", action="store_true",
                        help="the floor's case: alert boards on a busy floor (see above)")
    parser.add_argument("--alerts-per-s", type=int, default=5)
    parser.add_argument("--open", type=int, default=520, help="open alerts before the run")
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=sorted(CHANNELS), help=argparse.SUPPRESS)
    parsed = parser.parse_args()
    if parsed.board and not parsed.client:
        parsed.stalled = False
    trio.run(client_main if parsed.client else board_main if parsed.board else main, parsed)
