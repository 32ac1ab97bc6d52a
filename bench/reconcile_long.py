"""Long run of the meter reconciliation (issue 21): simulated machine-hours, 0 false discrepancies.

    .venv/bin/python bench/reconcile_long.py [--machine-hours 10000] [--segment-hours 5] [--jobs 2]
        [--profiles silence_fresh ...]

Lines of four simulated machines (one per simulator profile, drivers/sim/egm.py PROFILES), the
"floor" play model (a cash-out ticket at 20,000 credits), line faults (crc, silence, garbage,
junk, truncate, split) plus power cycles and genuine repeats at `--fault-probability` per
answer, normal and RTE mode, LP 6F and LP 1C meter reads, through the real SAS host into the
reconciler (bench/reconcile_sim.py), on a virtual clock (sans-I/O: the figures do not depend on
the machine's load; the wall time does).
A discrepancy is false when the simulator's ledger shows nothing wrong with that machine in its
segment (drivers/sim/oracle.py: a record without data pairs only with an exception that went
out without it); on a machine where the line did lose or invent an exception (docs/sas.md,
"Residual risk") or the machine's queue overflowed, it is true and must carry an enumerated cause.
Exit status 1 on any false or unexplained discrepancy.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.reconcile_sim import Segment, SegmentResult, run_segment
from drivers.sim.egm import PROFILES

MODES = ((True, "6F"), (False, "6F"), (True, "1C"), (False, "1C"))


def segments(machine_hours: float, hours: float, probability: float, rate: float,
             poll_s: float, profiles: tuple[str, ...] = ()) -> list[Segment]:
    count = max(1, round(machine_hours / (hours * len(profiles or PROFILES))))
    return [Segment(seed=i, hours=hours, rte=MODES[i % 4][0], meter_polls=MODES[i % 4][1],
                    fault_probability=probability, rate=rate, poll_interval_s=poll_s,
                    profiles=profiles)
            for i in range(count)]


def summarise(results: list[SegmentResult], wall_s: float) -> tuple[str, bool]:
    hours = sum(r.machine_hours for r in results)
    false = [v for r in results for v in r.false_discrepancies]
    true = [v for r in results for v in r.true_discrepancies]
    unexplained = [v for r in results for v in r.unexplained]
    causes = Counter(v.data["cause"] for v in true)
    lines = [
        f"machine-hours simulated      {hours:,.0f} ({len(results)} lines)",
        f"windows                      {sum(r.windows for r in results):,}",
        f"  reconciled                 {sum(r.reconciled for r in results):,}",
        f"gaming-day closes            {sum(r.day_closes for r in results):,}",
        f"false discrepancies          {len(false)}",
        f"true discrepancies           {len(true)} on "
        f"{sum(r.dirty_machine_hours for r in results):,.0f} machine-hours where the ledger "
        f"shows a lost or invented exception; causes {dict(causes)}",
        f"without the evidence their cause needs: {len(unexplained)}",
        f"wall time                    {wall_s:,.0f} s "
        f"({hours / max(wall_s, 1e-9):,.1f} machine-hours a second)",
    ]
    for v in false[:10]:
        lines.append(f"  FALSE {v.key} {v.data}")
    return "\n".join(lines), not false and not unexplained


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machine-hours", type=float, default=10_000.0)
    parser.add_argument("--segment-hours", type=float, default=5.0)
    parser.add_argument("--fault-probability", type=float, default=0.005)
    parser.add_argument("--rate", type=float, default=0.03,
                        help="play events a second a machine (a game is two exceptions)")
    parser.add_argument("--poll-interval", type=float, default=3.0,
                        help="seconds between polls to a machine (SAS allows 0.04 to 5)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--profiles", nargs="+", choices=sorted(PROFILES), default=[],
                        help="only machines of these simulator profiles (default: every one)")
    args = parser.parse_args()
    todo = segments(args.machine_hours, args.segment_hours, args.fault_probability, args.rate,
                    args.poll_interval, tuple(args.profiles))
    start = time.perf_counter()
    results: list[SegmentResult] = []
    with ProcessPoolExecutor(args.jobs) as pool:
        for result in pool.map(run_segment, todo):
            results.append(result)
            if len(results) % max(1, len(todo) // 10) == 0:  # progress, in case it is cut short
                text, _ = summarise(results, time.perf_counter() - start)
                print(f"-- {len(results)}/{len(todo)} lines\n{text}", file=sys.stderr, flush=True)
    text, ok = summarise(results, time.perf_counter() - start)
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
