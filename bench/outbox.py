"""Outbox benchmark: durable capture throughput and latency against a raw baseline, same run.

    .venv/bin/python bench/outbox.py [--events 100000] [--rate 1000] [--seconds 10]
                                     [--restart-rows 10000000]

Prints, each figure next to its target (docs/certification.md):
  raw      sign + insert in batches of 500 with synchronous=FULL, no daemon, no trio (baseline)
  outbox   the same drafts through Outbox.append from --producers (512) concurrent producers
           (group commit; Ed25519 in the outbox's signing process, as the daemon runs it)
  latency  capture -> durable p50/p95/p99 at a paced `--rate` events/s
  witness  the same throughput and paced latency with the witness's write+fdatasync switched off
           (its cost: docs/outbox.md section 3), and with the writer waiting for each flush
           before its next commit (`serial`: the design before the flusher thread), all
           interleaved with the runs above so that load on a shared box hits them alike;
           medians of the per-run ratios, and witness flushes per group commit (below 1:
           flushes coalesced while the next group commits)
  restart  time to open an outbox holding `--restart-rows` rows and be ready to append
  rss      peak resident memory of this process
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import nacl.signing
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.events import system_draft
from gateway.outbox import SCHEMA, Outbox, OutboxSettings, envelope_for
from gateway.outbox.flusher import WitnessFlusher
from gateway.outbox.migrations import SCHEMA_VERSION
from gateway.outbox.witness import Mark, Witness
from gateway.signing import GENESIS, Signer, seal


def data(i: int) -> dict:
    return {"wager_credits": i % 50, "wager": {"minor": i % 50, "currency": "USD"}}


def raw_baseline(path: Path, signer: Signer, count: int) -> float:
    """The same rows the outbox stores (full envelope, same data), sealed in-process and
    inserted in batches of 500 with synchronous=FULL: no trio, no queue, no daemon."""
    settings = OutboxSettings(path=path, gateway_id="bench")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(SCHEMA)
    prev = GENESIS
    started = time.perf_counter()
    for start in range(0, count, 500):
        rows = []
        for seq in range(start + 1, min(start + 500, count) + 1):
            draft = system_draft("machineException", data(seq), now=time.time())
            sealed, body = seal(envelope_for(settings, "0" * 16, draft, seq), prev, signer)
            prev = sealed["hash"]
            rows.append((seq, draft.type, draft.channel, None, time.time(), None, prev, body))
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return count / elapsed


async def outbox_throughput(path: Path, signer: Signer, count: int, producers: int = 512,
                            flushes: list[float] | None = None) -> float:
    outbox = Outbox.open(OutboxSettings(path=path, gateway_id="bench"), signer)
    fsyncs_before = outbox._witness.fsyncs
    per = count // producers

    async def producer(k: int) -> None:
        for i in range(per):
            await outbox.append(system_draft("machineException", data(k * per + i),
                                             now=time.time()))

    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run_writer)
        started = time.perf_counter()
        async with trio.open_nursery() as producers_nursery:
            for k in range(producers):
                producers_nursery.start_soon(producer, k)
        elapsed = time.perf_counter() - started
        nursery.cancel_scope.cancel()
    if flushes is not None:
        flushes.append((outbox._witness.fsyncs - fsyncs_before) / max(1, outbox.commits))
    await outbox.aclose()
    return per * producers / elapsed


async def paced_latency(path: Path, signer: Signer, rate: float, seconds: float) -> list[float]:
    outbox = Outbox.open(OutboxSettings(path=path, gateway_id="bench"), signer)
    latencies: list[float] = []

    async def one(i: int) -> None:
        t0 = trio.current_time()
        await outbox.append(system_draft("machineException", data(i), now=time.time(),
                                         monotonic=t0))
        latencies.append(trio.current_time() - t0)

    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run_writer)
        start = trio.current_time()
        async with trio.open_nursery() as senders:
            for i in range(int(rate * seconds)):
                await trio.sleep_until(start + i / rate)
                senders.start_soon(one, i)
        nursery.cancel_scope.cancel()
    await outbox.aclose()
    return latencies


def restart_time(path: Path, signer: Signer, rows: int) -> float:
    """Fill an outbox with `rows` rows quickly (filler bytes repeated: start-up must not read
    them) ending in a properly sealed tail of 1,000 rows (start-up checks the last rows), then
    time Outbox.open + the first durable append."""
    settings = OutboxSettings(path=path, gateway_id="bench")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.executescript(SCHEMA)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")  # the current layout: no migration
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [
        ("epoch", "0" * 16), ("gateway_id", "bench"), ("created_at", "0"),
        ("delivered_seq", "0"), ("schema", str(SCHEMA_VERSION))])
    _, body = seal({"event": "betPlaced", "seq": 0, "data": data(0)}, GENESIS, signer)
    chunk, tail = 100_000, min(rows, 1000)
    filler = rows - tail
    for start in range(0, filler, chunk):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO events VALUES (?, 'betPlaced', 'game', 'p/1', 0, 126, ?, ?)",
                         ((s, b"\0" * 32, body)
                          for s in range(start + 1, min(start + chunk, filler) + 1)))
        conn.execute("COMMIT")
    prev, sealed_rows = GENESIS, []
    for seq in range(filler + 1, rows + 1):
        env = envelope_for(settings, "0" * 16, system_draft("machineException", data(seq),
                                                            now=time.time()), seq)
        sealed, tail_body = seal(env, prev, signer)
        prev = sealed["hash"]
        sealed_rows.append((seq, prev, tail_body))
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO events VALUES (?, 'machineException', 'system', NULL, 0, NULL, "
                     "?, ?)", sealed_rows)
    conn.execute("COMMIT")
    conn.close()

    async def reopen() -> float:
        started = time.perf_counter()
        outbox = Outbox.open(settings, signer)
        assert outbox.quarantined == 0, "the sealed tail must pass the start-up check"
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            await outbox.append(system_draft("gatewayStarted", {"version": "bench"},
                                             now=time.time()))
            elapsed = time.perf_counter() - started
            nursery.cancel_scope.cancel()
        await outbox.aclose()
        return elapsed

    return trio.run(reopen)


@contextlib.contextmanager
def witness_off() -> Iterator[None]:
    """The comparison run only: the witness keeps its mark in memory, no write, no fsync."""
    original = Witness.record

    def remember(self: Witness, mark: Mark) -> None:
        self.mark = mark

    Witness.record = remember  # type: ignore[method-assign]
    try:
        yield
    finally:
        Witness.record = original  # type: ignore[method-assign]


@contextlib.contextmanager
def witness_serial() -> Iterator[None]:
    """The comparison run only: each commit waits for its own flush before the writer goes on
    to the next group (no overlap), as the writer did before the flusher thread."""
    original = WitnessFlusher.submit

    def submit_and_wait(self: WitnessFlusher, mark: Mark) -> int:
        ticket = original(self, mark)
        with self._cond:
            while self.flushed < ticket and self.failed is None:
                self._cond.wait()
        return ticket

    WitnessFlusher.submit = submit_and_wait  # type: ignore[method-assign]
    try:
        yield
    finally:
        WitnessFlusher.submit = original  # type: ignore[method-assign]


def with_context(context: Callable[[], contextlib.AbstractContextManager[None]],
                 run: Callable[[], float]) -> float:
    with context():
        return run()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--restart-rows", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="throughput runs (median quoted)")
    parser.add_argument("--producers", type=int, default=512, help="concurrent appenders")
    parser.add_argument("--latency-repeat", type=int, default=1,
                        help="paced latency runs of each kind, interleaved (samples pooled)")
    args = parser.parse_args()
    signer = Signer(nacl.signing.SigningKey.generate())
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as tmp:
        base = Path(tmp)
        raws, outs, bares, serials, flushes = [], [], [], [], []

        def settled(run: Callable[[], float]) -> float:
            # The files of the run before are written back first: on ext4 an fsync can wait
            # for other files' dirty pages, which would charge one run for another's writes.
            os.sync()
            return run()

        runs: list[tuple[list[float], Callable[[int], float]]] = [
            (raws, lambda i: raw_baseline(base / f"raw{i}.db", signer, args.events)),
            (outs, lambda i: trio.run(outbox_throughput, base / f"outbox{i}.db", signer,
                                      args.events, args.producers, flushes)),
            (bares, lambda i: with_context(witness_off, lambda: trio.run(
                outbox_throughput, base / f"bare{i}.db", signer, args.events, args.producers))),
            (serials, lambda i: with_context(witness_serial, lambda: trio.run(
                outbox_throughput, base / f"serial{i}.db", signer, args.events,
                args.producers)))]
        for i in range(args.repeat):  # interleaved, in a rotating order: load and order bias
            for k in range(len(runs)):  # hit each kind alike
                into, run = runs[(i + k) % len(runs)]
                into.append(settled(partial(run, i)))

        def ratio(runs: list[float], against: list[float]) -> str:
            each = [a / b for a, b in zip(runs, against, strict=True)]
            return f"{statistics.median(each):.0%} (runs: {', '.join(f'{r:.0%}' for r in each)})"

        raw, out, bare, serial = (statistics.median(v) for v in (raws, outs, bares, serials))
        print(f"raw sign+insert baseline : {raw:>10,.0f} events/s (median of {args.repeat})")
        print(f"outbox append ({args.producers} prod.): {out:>8,.0f} events/s  target >= 20,000  "
              f"ratio {ratio(outs, raws)} of raw (target >= 50%)")
        print(f"  without the witness    : {bare:>10,.0f} events/s ({ratio(bares, raws)} of raw); "
              f"with it {ratio(outs, bares)} of without; {statistics.median(flushes):.2f} "
              f"witness flushes per commit")
        print(f"  serial witness (before): {serial:>10,.0f} events/s ({ratio(serials, raws)} of "
              f"raw); overlapped is {ratio(outs, serials)} of serial; serial is "
              f"{ratio(serials, bares)} of without")
        lats, bare_lats, serial_lats = [], [], []
        for i in range(args.latency_repeat):
            for into, context in ((lats, contextlib.nullcontext), (bare_lats, witness_off),
                                  (serial_lats, witness_serial)):
                os.sync()
                with context():
                    into += trio.run(paced_latency, base / f"latency{i}-{len(into)}.db", signer,
                                     args.rate, args.seconds)
        print(f"capture->durable @ {args.rate:,.0f}/s : p50 {pct(lats, .5):.2f} ms  "
              f"p95 {pct(lats, .95):.2f} ms  p99 {pct(lats, .99):.2f} ms  (target p99 <= 10 ms)")
        for name, values in (("without the witness", bare_lats), ("serial witness", serial_lats)):
            print(f"  {name:<22} : p50 {pct(values, .5):.2f} ms  p95 {pct(values, .95):.2f} ms"
                  f"  p99 {pct(values, .99):.2f} ms (the witness as built adds "
                  f"{pct(lats, .5) - pct(values, .5):+.2f} ms at p50)")
        if args.restart_rows:
            elapsed = restart_time(base / "restart.db", signer, args.restart_rows)
            print(f"restart with {args.restart_rows:,} rows: {elapsed * 1000:.0f} ms to first "
                  f"durable append (target <= 2 s)")
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS                 : {rss_mb:.0f} MB (target <= 100 MB)")
        print(f"machine: {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
