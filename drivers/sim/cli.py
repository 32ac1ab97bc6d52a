"""`simulate` subcommand: run simulated machines on pseudo-terminals until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys

import trio

from drivers.sim.egm import PROFILES as MACHINE_PROFILES
from drivers.sim.faults import FAULT_KINDS
from drivers.sim.fleet import serve_fleet
from drivers.sim.machine import PROFILES
from drivers.sim.readers import add_reader_arguments, start_readers

__all__ = ["add_commands"]

FAULTS = FAULT_KINDS


def _faults(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = set(names) - set(FAULTS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown faults: {', '.join(sorted(unknown))}")
    return names


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `simulate` to the gateway CLI."""
    p = subparsers.add_parser("simulate", help="run simulated SAS machines on pseudo-terminals")
    p.add_argument("--machines", type=int, default=1, metavar="N")
    p.add_argument("--rte", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate", type=float, default=2.0, metavar="EVENTS_PER_S")
    p.add_argument("--profile", choices=PROFILES, default="storm",
                   help="storm: alerts in every tenth event (load tests); floor: realistic "
                   "per-machine-hour alert rates (drivers/sim/machine.py)")
    p.add_argument("--faults", type=_faults, default=[],
                   help="comma-separated: " + ",".join(FAULTS))
    p.add_argument("--fault-probability", type=float, default=0.02, metavar="P",
                   help="chance per answer (or per exception) of each chosen fault")
    p.add_argument("--machine-profile", choices=sorted(MACHINE_PROFILES), default="default",
                   help="machine behaviours the reference leaves to the vendor (docs/sas.md)")
    p.add_argument("--realtime", action="store_true",
                   help="run at real-time priority where allowed (root): hardware answers "
                   "within SAS's 20 ms however busy the host is, and so do the simulated "
                   "machines then, on a loaded test host too")
    add_reader_arguments(p)
    p.set_defaults(func=_simulate)


def realtime_priority() -> str | None:
    """SCHED_RR at the lowest real-time priority for this process, so it runs as soon as a poll
    wakes it, ahead of every ordinary process; None, or why not. Bounded by the kernel's
    real-time throttling (sched_rt_runtime_us): a runaway simulator cannot take a whole host."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))
    except (OSError, AttributeError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _simulate(args: argparse.Namespace) -> int:
    if args.realtime and (why := realtime_priority()) is not None:
        print(f"simulate: no real-time priority ({why}); on a loaded host the machines may "
              "answer later than SAS allows", file=sys.stderr, flush=True)
    summary = trio.run(_main, args)
    print(json.dumps(summary), flush=True)
    return 0


async def _main(args: argparse.Namespace) -> dict[str, object]:
    """Run until SIGINT/SIGTERM. SIGUSR1 stops the machines' play; once every exception they
    raised is acknowledged a line `all-acknowledged` is printed, so a harness can wait on it."""
    # Listen for signals before printing the paths: whoever reads them may signal at once.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGUSR1) as signals:
        async with trio.open_nursery() as nursery:
            fleet = await nursery.start(lambda task_status: serve_fleet(
                args.machines, rte=args.rte, seed=args.seed, events_per_second=args.rate,
                faults=args.faults, fault_probability=args.fault_probability,
                profile=args.profile, machine_profile=args.machine_profile,
                task_status=task_status))
            for path in fleet.device_paths:
                print(path)
            readers = await start_readers(nursery, args, fleet.device_paths)
            sys.stdout.flush()

            async def announce_drained() -> None:
                await fleet.wait_all_acknowledged()
                print("all-acknowledged", flush=True)

            async for signum in signals:
                if signum == signal.SIGUSR1:
                    fleet.stop_play()
                    if readers is not None:
                        readers.stop_play()
                    nursery.start_soon(announce_drained)
                    continue
                break
            nursery.cancel_scope.cancel()
    summary: dict[str, object] = dict(fleet.summary())
    summary["machines"] = [
        {"device": path, "acknowledged_codes": fleet.acknowledged_codes(path),
         "pending_codes": [e.code for e in egm.ledger.pending()],
         "lost_by_overflow": sum(e.lost for e in egm.ledger.entries),
         "lost_codes": [e.code for e in egm.ledger.entries if e.lost],
         "late_answers": egm.ledger.late_answers}
        for path, egm in zip(fleet.device_paths, fleet.machines, strict=True)]
    if readers is not None:
        summary["readers"] = readers.summary()
    return summary
