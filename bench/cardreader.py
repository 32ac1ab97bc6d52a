"""How fast the card reader core turns reader bytes into player events, against a raw baseline.

    .venv/bin/python bench/cardreader.py [--swipes 20000] [--repeat 7]

A reader sends a few swipes a minute, so speed is not the question for one reader; this shows the
per-byte state machine (drivers/cardreader/framing.py) and the keyed hash cost nothing beside the
serial line: 9600 baud is under 1,000 bytes a second. Baseline: splitting the same bytes into
lines with bytes.split (no validation, no hashing). Prints medians of `--repeat` runs and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from drivers.cardreader.cardid import VenueSecret
from drivers.cardreader.reader import CardReaderCore, ReaderSettings
from drivers.sim.cardreader import SimReader, swipe_bytes


def _wire(swipes: int) -> bytes:
    cards = SimReader("swipe", seed=1, cards=200).pool
    return b"".join(swipe_bytes(cards[n % len(cards)], lrc=True) for n in range(swipes))


def _core_run(wire: bytes) -> tuple[float, int]:
    core = CardReaderCore(ReaderSettings(kind="swipe", lrc=True, debounce_s=0.0),
                          VenueSecret(b"\x5a" * 32))
    start = time.perf_counter()
    for offset in range(0, len(wire), 64):  # a USB serial adapter hands over small chunks
        core.receive(wire[offset:offset + 64], 0.0)
    events = 0
    while core.next_event() is not None:
        events += 1
    return time.perf_counter() - start, events


def _baseline_run(wire: bytes) -> float:
    start = time.perf_counter()
    lines = 0
    for offset in range(0, len(wire), 64):
        lines += wire[offset:offset + 64].count(b"\n")
    sum(1 for _ in wire.split(b"\r\n"))
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--swipes", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    wire = _wire(args.swipes)
    core = [_core_run(wire) for _ in range(args.repeat)]
    base = [_baseline_run(wire) for _ in range(args.repeat)]
    assert all(events == args.swipes for _, events in core)
    core_s = statistics.median(t for t, _ in core)
    base_s = statistics.median(base)
    print(f"{len(wire):,} bytes, {args.swipes:,} swipes (tracks 1+2 with LRC), "
          f"{args.repeat} runs")
    print(f"core:     median {core_s * 1000:8.1f} ms  {len(wire) / core_s / 1e6:6.2f} MB/s  "
          f"{args.swipes / core_s:,.0f} swipes/s")
    print(f"baseline: median {base_s * 1000:8.1f} ms  (bytes.split into lines)")
    print(f"ratio core/baseline: {core_s / base_s:.0f}x; a 9600-baud reader sends < 0.001 MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
