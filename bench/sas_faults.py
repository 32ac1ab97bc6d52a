"""Benchmark: the SAS fault matrix (issue 13), the simulator's ledger against the host's record.

    .venv/bin/python bench/sas_faults.py [--seconds 60] [--seeds 3] [--per-case]
                                         [--rte-repeat-spacing 0.04]

Every fault kind alone and all together (drivers/sim/matrix.py ALL_KINDS), at 2 %, 10 % and
30 % per answer (per raised exception for power, duplicate, overflow), normal and RTE mode,
each simulator profile (drivers/sim/egm.py PROFILES), `--seeds` seeds each; sans-I/O on a virtual
clock, so the figures do not depend on the machine's load. Prints a Markdown table summed over
modes, profiles and seeds (the one in docs/sas.md), or one row per case with `--per-case`.
Columns: raised, recorded, invented (beyond lone bytes), duplicates of exceptions with data,
data-less duplicates (re-sent after a power cycle), data-less exceptions the host took for such
a re-send, acknowledged but missing without an explanation, loss markers, spurious markers,
lost by the machine's own overflow, lone bytes (the residual risk), cases not ok.
Exit status 1 if any case has an invention, a duplicate with data, an unexplained missing
exception or a spurious marker.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time
from collections import defaultdict

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from drivers.sim.egm import PROFILES
from drivers.sim.matrix import ALL_KINDS, Case, Outcome, run_case

PROBABILITIES = (0.02, 0.10, 0.30)
_COLUMNS = ("raised", "recorded", "invented", "dup data", "dup data-less", "re-send calls",
            "missing unexplained", "loss markers", "spurious markers", "overflow lost",
            "lone bytes", "cases not ok")


def cases(seconds: float, seeds: int, spacing: float | None = None) -> list[Case]:
    out = []
    for kinds in [(k,) for k in ALL_KINDS] + [ALL_KINDS]:
        for p in PROBABILITIES:
            for rte in (False, True):
                for profile in PROFILES:
                    out += [Case(kinds, p, rte, profile, seconds=seconds, seed=s,
                                 rte_repeat_spacing_s=spacing)
                            for s in range(1, seeds + 1)]
    return out


def _row(outcomes: list[Outcome]) -> list[int]:
    v = [o.verdict for o in outcomes]
    return [sum(x.raised for x in v), sum(x.recorded for x in v),
            sum(x.invented_unexplained for x in v), sum(x.duplicates_with_data for x in v),
            sum(x.duplicates_dataless for x in v), sum(x.resent_dataless for x in v),
            sum(x.missing_unmarked for x in v), sum(x.loss_markers for x in v),
            sum(x.spurious_markers for x in v), sum(x.lost_by_overflow for x in v),
            sum(x.lone_bytes for x in v), sum(not o.ok for o in outcomes)]


def table(outcomes: list[Outcome], *, per_case: bool) -> str:
    groups: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        c = o.case
        kinds = "all" if set(c.kinds) == set(ALL_KINDS) else "+".join(c.kinds)
        key = (f"{c.name} seed {c.seed}" if per_case else f"{kinds} {c.probability:.0%}")
        groups[key].append(o)
    lines = ["| faults | " + " | ".join(_COLUMNS) + " |",
             "|---" * (len(_COLUMNS) + 1) + "|"]
    for key, group in groups.items():
        lines.append(f"| {key} | " + " | ".join(str(n) for n in _row(group)) + " |")
    lines.append("| **total** | " + " | ".join(str(n) for n in _row(outcomes)) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--per-case", action="store_true")
    ap.add_argument("--rte-repeat-spacing", type=float, default=None,
                    help="HostConfig.rte_repeat_spacing_s (s); default: the poll interval")
    args = ap.parse_args()
    started = time.perf_counter()
    outcomes = [run_case(c) for c in cases(args.seconds, args.seeds, args.rte_repeat_spacing)]
    print(table(outcomes, per_case=args.per_case))
    bad = [o for o in outcomes if not o.ok]
    print(f"\n{len(outcomes)} cases ({args.seconds:g} s of play each, {args.seeds} seeds, "
          f"{len(PROFILES)} profiles, normal and RTE) in {time.perf_counter() - started:.0f} s; "
          f"{len(bad)} not ok" + "".join(f"\n  {o.case.name} seed {o.case.seed}: {o.verdict}"
                                           for o in bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
