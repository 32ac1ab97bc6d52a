"""Uplink benchmark: backlog drain and capture -> platform-ack latency, real processes (targets in
docs/certification.md).

    .venv/bin/python bench/uplink.py [--events 1000000] [--rate 1000] [--seconds 10]
                                     [--plain] [--batch 200] [--window 8] [--quick]

Three processes, as deployed: this one (prepares, measures), a gateway process (the real
`Outbox` + `UplinkClient`) and the reference receiver (`casino-gateway receiver run`, TLS), which
verifies every hash, signature and chain link and commits with synchronous=FULL before each ack.

  fill      an outbox created by gateway.outbox, filled with --events events sealed by the real
            `gateway.signing.seal` (one chain; the Ed25519 signatures come from worker processes)
  baseline  single-core verify of the same events (decode + check_event + link), no network, no
            database: what one core of the receiver could do at best
  drain     the whole pre-filled outbox, gateway -> receiver: events/s (target >= 15,000), CPU per
            event of each process, peak RSS of each process (target <= 100 MB)
  latency   paced `--rate` events/s for `--seconds` through Outbox.append -> uplink -> receiver
            commit -> ack -> mark_delivered: p50/p95/p99 (target p99 <= 25 ms)

`--quick` is 100,000 events and 5 s of latency; `make bench` runs the full 1,000,000.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

import nacl.signing
import trio
import trustme

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.base import MachineRef  # noqa: E402
from gateway.events import system_draft  # noqa: E402
from gateway.outbox import Outbox, OutboxSettings, envelope_for  # noqa: E402
from gateway.receiver import ReceiverStore  # noqa: E402
from gateway.signing import (  # noqa: E402
    GENESIS,
    Signer,
    check_event,
    decode_envelope,
    load_signing_key,
    seal,
    write_signing_key,
)
from gateway.uplink.client import UplinkClient, UplinkSettings  # noqa: E402

GATEWAY_ID = "gw-bench"
TOKEN = "bench-token"
BASELINE_EVENTS = 100_000
FILL_CHUNK = 5_000
PLACEHOLDER = b"\xee" * 64  # where the signature goes once a worker process has made it


def data(i: int) -> dict[str, Any]:
    return {"code": 0x51, "wager_credits": i % 50, "wager": {"minor": i % 50, "currency": "USD"}}


def draft(i: int) -> Any:
    return system_draft("machineException", data(i), now=time.time(),
                        machine=MachineRef("sas0", 1 + i % 32, f"SN{i % 32:06d}", None))


# -- fill ------------------------------------------------------------------------------------------

class _DeferredKey:
    """Stands in for the SigningKey inside `seal`: the chain (hashes) is built here, in order,
    while the Ed25519 signatures, which need nothing but the digest, are made by worker processes
    and put in place of PLACEHOLDER (the signature is not part of the hash)."""

    class _Signed:
        signature = PLACEHOLDER

    def sign(self, digest: bytes) -> _DeferredKey._Signed:
        return self._Signed()


class _DeferredSigner:
    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.key = _DeferredKey()


_worker_key: nacl.signing.SigningKey | None = None


def _init_worker(seed: bytes) -> None:
    global _worker_key
    _worker_key = nacl.signing.SigningKey(seed)


def _sign_all(digests: list[bytes]) -> list[bytes]:
    assert _worker_key is not None
    sign = _worker_key.sign
    return [sign(d).signature for d in digests]


def fill_outbox(path: Path, signer: Signer, count: int) -> float:
    """Create the outbox with gateway.outbox, append `count` sealed events; return events/s."""
    settings = OutboxSettings(path=path, gateway_id=GATEWAY_ID, venue="bench", region="bench")
    Outbox.open(settings, signer).close()  # schema, epoch, lock: the real thing
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # preparation, not the figure under test
    (epoch,) = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
    deferred = _DeferredSigner(signer.kid)
    started = time.perf_counter()
    prev = GENESIS
    in_flight: deque[tuple[list[tuple[Any, ...]], Future[list[bytes]]]] = deque()

    def store(rows: list[tuple[Any, ...]], sigs: list[bytes]) -> None:
        out = []
        for (seq, kind, channel, machine, captured, digest, body), sig in zip(rows, sigs,
                                                                             strict=True):
            at = body.rindex(PLACEHOLDER)
            out.append((seq, kind, channel, machine, captured, None, digest,
                        body[:at] + sig + body[at + 64:]))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO events (seq, type, channel, machine, captured_at, "
                         "source_code, hash, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", out)
        conn.execute("COMMIT")

    workers = max(1, (os.cpu_count() or 1))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                             initializer=_init_worker, initargs=(bytes(signer.key),)) as pool:
        for start in range(1, count + 1, FILL_CHUNK):
            rows = []
            for seq in range(start, min(start + FILL_CHUNK, count + 1)):
                d = draft(seq)
                sealed, body = seal(envelope_for(settings, epoch, d, seq), prev,
                                    deferred)  # type: ignore[arg-type]
                prev = sealed["hash"]
                machine = f"{d.machine['port']}/{d.machine['address']}" if d.machine else None
                rows.append((seq, d.type, d.channel, machine, time.time(), prev, body))
            in_flight.append((rows, pool.submit(_sign_all, [r[5] for r in rows])))
            while len(in_flight) > 2 * workers:
                done_rows, sigs = in_flight.popleft()
                store(done_rows, sigs.result())
        while in_flight:
            done_rows, sigs = in_flight.popleft()
            store(done_rows, sigs.result())
    elapsed = time.perf_counter() - started
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return count / elapsed


def verify_baseline(path: Path, signer: Signer, count: int) -> float:
    """Single core, no network, no database in the timed loop: decode, hash, signature, link."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = [body for (body,) in conn.execute(
        "SELECT body FROM events ORDER BY seq LIMIT ?", (count,))]
    conn.close()
    keys = {signer.kid: signer.verify_key}
    started = time.perf_counter()
    prev = GENESIS
    for raw in rows:
        prev = check_event(decode_envelope(raw), keys, prev)
    return len(rows) / (time.perf_counter() - started)


# -- the gateway process -----------------------------------------------------------------------------

class _Watched:
    """The real Outbox, with mark_delivered (called on every ack) watched and, if `timed`, the
    time each seq was acknowledged recorded (not in the drain: that would grow with the backlog)."""

    def __init__(self, outbox: Outbox, *, timed: bool) -> None:
        self._outbox = outbox
        self.timed = timed
        self.acked_at: dict[int, float] = {}
        self.acked = 0
        self.changed = trio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._outbox, name)

    async def mark_delivered(self, seq: int) -> None:
        if self.timed:
            now = trio.current_time()
            for s in range(self.acked + 1, seq + 1):
                self.acked_at[s] = now
        self.acked = max(self.acked, seq)
        await self._outbox.mark_delivered(seq)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_acked(self, seq: int) -> None:
        while self.acked < seq:
            await self.changed.wait()


async def gateway_main(args: argparse.Namespace) -> dict[str, Any]:
    signer = load_signing_key(args.key)
    outbox = Outbox.open(OutboxSettings(path=args.db, gateway_id=GATEWAY_ID, venue="bench",
                                        region="bench"), signer)
    watched = _Watched(outbox, timed=args.mode == "latency")
    settings = UplinkSettings(url=args.url, token_file=args.token_file, ca_file=args.ca_file,
                              batch_max=args.batch, window=args.window)
    client = UplinkClient(settings, watched)  # type: ignore[arg-type]
    result: dict[str, Any] = {}
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            if args.mode == "drain":
                target = outbox.last_seq
                cpu0, t0 = time.process_time(), time.perf_counter()
                await nursery.start(client.run)
                await watched.wait_acked(target)
                result.update(events=target, elapsed=time.perf_counter() - t0,
                              cpu=time.process_time() - cpu0)
            else:
                await nursery.start(client.run)
                await watched.wait_acked(await outbox.append_system("gatewayStarted",
                                                                    {"version": "bench"}))
                result.update(await paced(outbox, watched, args.rate, args.seconds))
            nursery.cancel_scope.cancel()
    finally:
        outbox.close()
    # VmHWM, not getrusage's ru_maxrss: after fork + exec Linux reports the parent's peak there.
    result["rss_mb"] = _proc_hwm_mb(os.getpid())
    return result


async def paced(outbox: Outbox, watched: _Watched, rate: float, seconds: float
                ) -> dict[str, Any]:
    """Append at `rate`/s; the latency of each event is (its ack) - (just before append)."""
    captured: dict[int, float] = {}
    durable: list[float] = []

    async def one(i: int) -> None:
        t0 = trio.current_time()
        seq = await outbox.append(draft(i))
        durable.append(trio.current_time() - t0)
        captured[seq] = t0

    start = trio.current_time()
    async with trio.open_nursery() as senders:
        for i in range(int(rate * seconds)):
            await trio.sleep_until(start + i / rate)
            senders.start_soon(one, i)
    await watched.wait_acked(max(captured))
    to_ack = [watched.acked_at[seq] - t0 for seq, t0 in captured.items()]
    return {"count": len(to_ack), "ack": sorted(to_ack), "durable": sorted(durable)}


# -- orchestration ---------------------------------------------------------------------------------

def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, seconds some task waited for a CPU: PSI)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    try:
        some = Path("/proc/pressure/cpu").read_text().split("\n", 1)[0]
        waited = int(some.rsplit("total=", 1)[1]) / 1e6
    except (OSError, IndexError, ValueError):
        waited = float("nan")
    return busy, waited


def _proc_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _pct(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def run_gateway(args: argparse.Namespace, mode: str, db: Path, url: str, work: Path,
                ca_file: Path | None) -> dict[str, Any]:
    out = work / f"gateway-{mode}.json"
    command = [sys.executable, __file__, "--gateway", mode, "--db", str(db), "--url", url,
               "--key", str(work / "gw.key"), "--token-file", str(work / "token"),
               "--result", str(out), "--batch", str(args.batch), "--window", str(args.window),
               "--rate", str(args.rate), "--seconds", str(args.seconds)]
    if ca_file is not None:
        command += ["--ca-file", str(ca_file)]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="backlog to drain")
    parser.add_argument("--rate", type=float, default=1000.0, help="latency run: events/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency run: duration")
    parser.add_argument("--batch", type=int, default=200, help="uplink batch_max")
    parser.add_argument("--window", type=int, default=8, help="uplink window")
    parser.add_argument("--plain", action="store_true", help="ws:// instead of wss://")
    parser.add_argument("--quick", action="store_true", help="100,000 events, 5 s of latency")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    # The gateway process (this file, run by itself):
    parser.add_argument("--gateway", choices=("drain", "latency"), help=argparse.SUPPRESS)
    for name in ("--db", "--key", "--token-file", "--ca-file", "--result"):
        parser.add_argument(name, type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gateway:
        args.mode = args.gateway
        result = trio.run(gateway_main, args)
        args.result.write_text(json.dumps(result))
        return
    if args.quick:
        args.events, args.seconds = min(args.events, 100_000), min(args.seconds, 5.0)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        bench(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-uplink-") as tmp:
            bench(args, Path(tmp))


def bench(args: argparse.Namespace, work: Path) -> None:
    signer = write_signing_key(work / "gw.key")
    (work / "token").write_text(TOKEN + "\n")
    scheme = "ws" if args.plain else "wss"
    print(f"machine: {os.cpu_count()} cores; uplink {scheme}, batch {args.batch}, "
          f"window {args.window}; gateway and receiver in their own processes", flush=True)

    outbox_db = work / "outbox.db"
    fill_rate = fill_outbox(outbox_db, signer, args.events)
    print(f"fill     : {args.events:,} sealed events in a gateway.outbox file "
          f"({fill_rate:,.0f} events/s)", flush=True)
    baseline = verify_baseline(outbox_db, signer, min(args.events, BASELINE_EVENTS))
    print(f"baseline : single-core verify of the same events (decode + hash + signature + link): "
          f"{baseline:,.0f} events/s", flush=True)

    rx_db = work / "platform.db"
    store = ReceiverStore(rx_db)
    store.register(GATEWAY_ID, TOKEN, bytes(signer.verify_key).hex())
    store.close()
    tls: list[str] = []
    ca_file = None
    if not args.plain:
        ca = trustme.CA()
        ca_file, server_pem = work / "ca.pem", work / "server.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server_pem))
        tls = ["--cert", str(server_pem), "--key", str(server_pem)]
    receiver = subprocess.Popen(
        [sys.executable, "-m", "gateway", "receiver", "run", "--listen", "127.0.0.1:0",
         "--db", str(rx_db), *tls], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        assert receiver.stdout is not None
        url = ""
        for line in receiver.stdout:
            if line.startswith((b"ws://", b"wss://")):
                url = line.decode().strip()
                break
        if not url:
            raise SystemExit("the receiver exited before printing its URL")
        threading.Thread(target=lambda: receiver.stdout.read(), daemon=True).start()  # type: ignore[union-attr]

        rx_cpu0, (busy0, waited0), t0 = _proc_cpu(receiver.pid), _machine_cpu(), time.time()
        drain = run_gateway(args, "drain", outbox_db, url, work, ca_file)
        rx_cpu = _proc_cpu(receiver.pid) - rx_cpu0
        busy, waited = (b - a for a, b in zip((busy0, waited0), _machine_cpu(), strict=True))
        wall = time.time() - t0
        rx_rss = _proc_hwm_mb(receiver.pid)
        figures = ReceiverStore(rx_db).figures(GATEWAY_ID)
        n, rate = drain["events"], drain["events"] / drain["elapsed"]
        ok = "ok" if rate >= 15_000 else "MISSED"
        print(f"drain    : {n:,} events in {drain['elapsed']:.1f} s = {rate:,.0f} events/s  "
              f"(target >= 15,000: {ok})  {rate / baseline:.2f}x the single-core baseline",
              flush=True)
        clean = (figures["stored"] >= n and figures["high_water"] >= n
                 and figures["bad_signatures"] == figures["chain_breaks"] == figures["gaps"] == 0)
        print(f"           receiver: stored {figures['stored']:,}, high water "
              f"{figures['high_water']:,}, bad signatures {figures['bad_signatures']}, chain "
              f"breaks {figures['chain_breaks']}, gaps {figures['gaps']}"
              f"{'' if clean else '  <-- NOT CLEAN'}")
        print(f"           CPU per event: gateway {drain['cpu'] / n * 1e6:.0f} us, receiver "
              f"{rx_cpu / n * 1e6:.0f} us (both processes: "
              f"{(drain['cpu'] + rx_cpu) / drain['elapsed']:.2f} cores busy)")
        # The figure is CPU-bound: say how much of the machine other processes took meanwhile.
        print(f"           machine meanwhile: {max(0.0, busy - rx_cpu - drain['cpu']) / wall:.2f} "
              f"cores used by other processes; some task waiting for a CPU "
              f"{waited / wall:.0%} of the time")
        ok = "ok" if max(drain["rss_mb"], rx_rss) <= 100 else "MISSED"
        print(f"peak RSS : gateway {drain['rss_mb']:.0f} MB, receiver {rx_rss:.0f} MB "
              f"(target <= 100 MB each: {ok})", flush=True)

        lat = run_gateway(args, "latency", work / "latency.db", url, work, ca_file)
        ack, durable = lat["ack"], lat["durable"]
        ok = "ok" if _pct(ack, .99) <= 25 else "MISSED"
        print(f"latency  : capture -> platform ack @ {args.rate:,.0f}/s for {args.seconds:g} s "
              f"({lat['count']:,} events): p50 {_pct(ack, .5):.1f} ms  p95 {_pct(ack, .95):.1f} ms"
              f"  p99 {_pct(ack, .99):.1f} ms  (target p99 <= 25 ms: {ok})")
        print(f"           of which capture -> durable in the outbox: p50 "
              f"{_pct(durable, .5):.1f} ms  p99 {_pct(durable, .99):.1f} ms")
        print(f"peak RSS : receiver {_proc_hwm_mb(receiver.pid):.0f} MB at the end, gateway "
              f"(latency run) {lat['rss_mb']:.0f} MB")
        if not clean:
            raise SystemExit("the receiver did not get the whole chain intact")
    finally:
        receiver.send_signal(signal.SIGTERM)
        receiver.wait()


if __name__ == "__main__":
    main()
