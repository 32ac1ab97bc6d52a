"""Platform benchmark: the receiver into NATS JetStream R3 against the receiver into SQLite, same run.

(Issue 20 calls it bench/platform.py: a script of that name in bench/ would shadow the standard
library's `platform` module for every other bench script, e.g. certify.py.)

    .venv/bin/python bench/jetstream.py [--gateways 4] [--events 15000] [--rate 1000]
                                        [--seconds 10] [--quick]

Processes (each pinned with `taskset`, so CPU figures are per core): this one (the gateways:
`UplinkClient`s over in-memory outboxes of really signed events, and the measurements) and
three nats-server nodes on core 0; the receiver (`casino-gateway receiver run`) alone on core 1.

  bridge    trio -> asyncio thread -> trio round trips (the receiver's way into nats-py):
            us per crossing, and per event at the batch size
  sqlite    drain every gateway's backlog into `receiver run --db`: events/s, receiver CPU us/event
  jetstream the same backlog into `receiver run --jetstream` (R3 stream, KV marks): events/s,
            receiver CPU us/event split into the receiver's own threads (WebSocket, verify) and
            the nats-asyncio thread (publish, acks, marks), and each nats-server's us/event
  scaling   what follows for N receivers and for the NATS cluster, at the measured per-core rates
  latency   one gateway paced at --rate events/s: capture (append) -> gateway ack p50/p99; the
            receiver acks only after JetStream acknowledged, so this bounds capture -> stream-ack

Target (issue 20): receiver CPU per event on the JetStream path <= 1.25x the SQLite path's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nacl.signing
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.events import CATALOGUE, rfc3339  # noqa: E402
from gateway.platform.bridge import AsyncioThread  # noqa: E402
from gateway.platform.localcluster import LocalCluster  # noqa: E402
from gateway.platform.store import NatsSettings, Platform, StreamLimits  # noqa: E402
from gateway.receiver.store import ReceiverStore, token_digest  # noqa: E402
from gateway.signing import GENESIS, Signer, seal  # noqa: E402
from gateway.uplink.client import UplinkClient, UplinkSettings  # noqa: E402

CLI = [sys.executable, "-m", "gateway"]
BATCH = 200


class MemoryOutbox:
    """Pre-sealed events in memory; `append` seals one more now (the latency run)."""

    def __init__(self, index: int, count: int) -> None:
        self.signer = Signer(nacl.signing.SigningKey.generate())
        self.gateway_id = f"bench-gw-{index}"
        self.epoch = os.urandom(8).hex()
        self.kids = [self.signer.kid]
        self.rows: list[bytes] = []
        self.appended_at: dict[int, float] = {}
        self.acked_at: dict[int, float] = {}
        self.delivered_seq = 0
        self._hash = GENESIS
        self._changed = trio.Event()
        for _ in range(count):
            self._seal("betPlaced", {"wager": {"minor": 100, "currency": "USD"}})

    def _seal(self, event: str, data: dict[str, Any]) -> int:
        seq = len(self.rows) + 1
        envelope = {
            "event": event, "channel": CATALOGUE[event].channel,
            "schema_version": CATALOGUE[event].version,
            "id": f"{self.gateway_id}:{self.epoch}:{seq}", "seq": seq, "epoch": self.epoch,
            "gateway_id": self.gateway_id, "venue": "bench", "region": "bench",
            "machine": {"port": "sas0", "address": 1} if event == "betPlaced" else None,
            "timestamp": rfc3339(time.time()), "trace_id": os.urandom(8).hex(), "data": data}
        sealed, raw = seal(envelope, self._hash, self.signer)
        self._hash = sealed["hash"]
        self.rows.append(raw)
        self._changed.set()
        self._changed = trio.Event()
        return seq

    @property
    def last_seq(self) -> int:
        return len(self.rows)

    async def read_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        await trio.lowlevel.checkpoint()
        return [(i + 1, self.rows[i]) for i in range(seq, min(len(self.rows), seq + limit))]

    async def wait_appended(self, after_seq: int) -> None:
        while len(self.rows) <= after_seq:
            await self._changed.wait()

    async def mark_delivered(self, seq: int) -> None:
        now = time.perf_counter()
        for s in range(self.delivered_seq + 1, seq + 1):
            if s in self.appended_at:
                self.acked_at[s] = now
        self.delivered_seq = max(self.delivered_seq, seq)
        self._changed.set()
        self._changed = trio.Event()

    async def append_system(self, event: str, data: dict[str, Any]) -> None:
        await trio.lowlevel.checkpoint()
        self._seal(event, data)

    async def wait_delivered(self, seq: int) -> None:
        while self.delivered_seq < seq:
            await self._changed.wait()


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _threads_cpu(pid: int) -> dict[str, float]:
    """CPU seconds by thread name (the bridge names its thread nats-asyncio)."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            out[name] = out.get(name, 0.0) + _cpu_of(task / "stat")
        except OSError:
            continue
    return out


def _cpu_of(stat: Path) -> float:
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def start_receiver(args: list[str], cpu: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    process = subprocess.Popen(["taskset", "-c", cpu, *CLI, "receiver", "run", "--listen",
                                "127.0.0.1:0", *args], stdout=subprocess.PIPE,
                               stderr=log.open("wb"), stdin=subprocess.DEVNULL)
    assert process.stdout is not None
    url = process.stdout.readline().decode().strip()
    if not url.startswith("ws"):
        raise SystemExit(f"receiver did not start: {log.read_text()[-2000:]}")
    return process, url


async def drain(url: str, outboxes: list[MemoryOutbox], token_dir: Path) -> float:
    """Every outbox's backlog through its own UplinkClient; seconds until the last ack."""
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for box in outboxes:
            token = token_dir / f"{box.gateway_id}.token"
            client = UplinkClient(UplinkSettings(url=url, token_file=token, batch_max=BATCH,
                                                 window=8), box)  # type: ignore[arg-type]
            await nursery.start(client.run)
        for box in outboxes:
            await box.wait_delivered(box.last_seq)
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    return elapsed


async def paced(url: str, box: MemoryOutbox, token_dir: Path, rate: float,
                seconds: float) -> tuple[float, float]:
    async with trio.open_nursery() as nursery:
        client = UplinkClient(UplinkSettings(url=url, token_file=token_dir /
                                             f"{box.gateway_id}.token"), box)  # type: ignore[arg-type]
        await nursery.start(client.run)
        await box.wait_delivered(box.last_seq)
        start = trio.current_time()
        for i in range(int(rate * seconds)):
            await trio.sleep_until(start + i / rate)
            seq = box._seal("betPlaced", {"wager": {"minor": 100, "currency": "USD"}})
            box.appended_at[seq] = time.perf_counter()
        await box.wait_delivered(box.last_seq)
        nursery.cancel_scope.cancel()
    waits = [box.acked_at[s] - t for s, t in box.appended_at.items()]
    return _pct(waits, 0.5), _pct(waits, 0.99)


async def bridge_cost(rounds: int = 20_000) -> float:
    bridge = AsyncioThread()

    async def nothing() -> None:
        return None

    try:
        await bridge.run(nothing)
        started = time.perf_counter()
        for _ in range(rounds):
            await bridge.run(nothing)
        return (time.perf_counter() - started) / rounds * 1e6
    finally:
        bridge.close()


async def register_all(settings: NatsSettings, outboxes: list[MemoryOutbox]) -> None:
    platform = await Platform.open(settings)
    try:
        for box in outboxes:
            await platform.register(box.gateway_id, token_digest(f"{box.gateway_id}-token-bench"),
                                    bytes(box.signer.verify_key).hex(), "bench", "venue")
    finally:
        await platform.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gateways", type=int, default=4)
    parser.add_argument("--events", type=int, default=15_000, help="per gateway")
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="4 x 5,000 events, 5 s latency")
    args = parser.parse_args()
    if args.quick:
        args.events, args.seconds = 5_000, 5.0
    cores = os.cpu_count() or 1
    rx_cpu, other_cpu = ("1", "0") if cores >= 2 else ("0", "0")
    os.sched_setaffinity(0, {int(other_cpu)})
    print(f"machine: {cores} cores (shared; figures are medians of one short run); receiver "
          f"pinned to core {rx_cpu}, nats-servers and gateways to core {other_cpu}")
    with tempfile.TemporaryDirectory(prefix="bench-platform-") as tmp:
        work = Path(tmp)
        trio.run(bench, args, work, rx_cpu, other_cpu)


async def bench(args: argparse.Namespace, work: Path, rx_cpu: str, other_cpu: str) -> None:
    hop = await bridge_cost()
    print(f"bridge     {hop:.1f} us per trio->asyncio->trio crossing; one per batch of "
          f"{BATCH}: {hop / BATCH:.2f} us per event")

    def fresh() -> list[MemoryOutbox]:
        boxes = [MemoryOutbox(i, args.events) for i in range(args.gateways)]
        for box in boxes:
            (work / f"{box.gateway_id}.token").write_text(f"{box.gateway_id}-token-bench")
        return boxes

    total = args.gateways * args.events

    # -- SQLite ----------------------------------------------------------------------------------
    boxes = fresh()
    store = ReceiverStore(work / "receiver.db")
    for box in boxes:
        store.register(box.gateway_id, f"{box.gateway_id}-token-bench",
                       bytes(box.signer.verify_key).hex())
    store.close()
    rx, url = start_receiver(["--db", str(work / "receiver.db")], rx_cpu, work / "sqlite.log")
    try:
        cpu0 = _cpu(rx.pid)
        elapsed = await drain(url, boxes, work)
        sqlite_us = (_cpu(rx.pid) - cpu0) / total * 1e6
        box = MemoryOutbox(98, 0)
        (work / f"{box.gateway_id}.token").write_text(f"{box.gateway_id}-token-bench")
        store = ReceiverStore(work / "receiver.db")
        store.register(box.gateway_id, f"{box.gateway_id}-token-bench",
                       bytes(box.signer.verify_key).hex())
        store.close()
        sqlite_latency = await paced(url, box, work, args.rate, args.seconds)
    finally:
        rx.terminate()
        rx.wait()
    sqlite_rate = total / elapsed
    print(f"sqlite     {total} events in {elapsed:.2f} s: {sqlite_rate:,.0f} ev/s; receiver "
          f"{sqlite_us:.1f} us CPU/event")

    # -- JetStream R3 ----------------------------------------------------------------------------
    cluster = LocalCluster(work / "nats", nodes=3, cpu_list=[other_cpu] * 3)
    with cluster:
        settings = NatsSettings(servers=tuple(cluster.urls))
        await trio.to_thread.run_sync(asyncio.run, Platform.init(settings, StreamLimits()))
        boxes = fresh()
        await trio.to_thread.run_sync(asyncio.run, register_all(settings, boxes))
        rx, url = start_receiver(["--jetstream", ",".join(cluster.urls)], rx_cpu,
                                 work / "jetstream.log")
        try:
            threads0 = _threads_cpu(rx.pid)
            nodes0 = [_cpu(cluster.pid(i)) for i in range(3)]
            elapsed = await drain(url, boxes, work)
            threads = {k: v - threads0.get(k, 0.0) for k, v in _threads_cpu(rx.pid).items()}
            nodes = [(_cpu(cluster.pid(i)) - nodes0[i]) / total * 1e6 for i in range(3)]
            js_rate = total / elapsed
            js_us = sum(threads.values()) / total * 1e6
            publish_us = threads.get("nats-asyncio", 0.0) / total * 1e6
            print(f"jetstream  {total} events in {elapsed:.2f} s: {js_rate:,.0f} ev/s into R3 "
                  f"({js_rate / sqlite_rate:.2f}x the SQLite rate); receiver {js_us:.1f} us "
                  f"CPU/event = {js_us - publish_us:.1f} verify + WebSocket + "
                  f"{publish_us:.1f} publish (nats-asyncio thread)")
            print("           nats-server us CPU/event: "
                  + ", ".join(f"n{i} {us:.1f}" for i, us in enumerate(nodes))
                  + " (R3: every node stores every event; the stream leader does most)")
            ratio = js_us / sqlite_us
            print(f"target     receiver CPU/event JetStream / SQLite = {ratio:.2f} "
                  f"(target <= 1.25: {'MET' if ratio <= 1.25 else 'NOT MET'})")

            # -- scaling ---------------------------------------------------------------------
            per_receiver = 1e6 / js_us
            per_cluster = 1e6 / max(nodes)
            print(f"scaling    one receiver core: {per_receiver:,.0f} ev/s; the cluster (busiest "
                  f"node on one core): {per_cluster:,.0f} ev/s")
            for n in (1, 2, 4, 8):
                bound = n * per_receiver > per_cluster
                print(f"           {n} receiver core(s): {min(n * per_receiver, per_cluster):,.0f} "
                      f"ev/s{' (NATS-bound: more cores per node, or streams)' if bound else ''}")

            # -- latency ---------------------------------------------------------------------
            box = MemoryOutbox(99, 0)
            (work / f"{box.gateway_id}.token").write_text(f"{box.gateway_id}-token-bench")
            await trio.to_thread.run_sync(asyncio.run, register_all(settings, [box]))
            p50, p99 = await paced(url, box, work, args.rate, args.seconds)
            print(f"latency    {args.rate:g} ev/s for {args.seconds:g} s, capture -> gateway ack "
                  f"(after the stream ack): p50 {p50:.1f} ms, p99 {p99:.1f} ms; the SQLite "
                  f"receiver (after its fsync): p50 {sqlite_latency[0]:.1f} ms, "
                  f"p99 {sqlite_latency[1]:.1f} ms")
        finally:
            rx.terminate()
            rx.wait()


if __name__ == "__main__":
    main()
