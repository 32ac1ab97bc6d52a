"""Benchmark: CPU cost of the sans-I/O SAS host + simulated EGM, and end-to-end over ptys.

    .venv/bin/python bench/sas_poll.py [--virtual-seconds 600] [--pty-machines 4 --pty-seconds 5]

Prints polls and exceptions per CPU second for the pure core (virtual clock, no I/O), then the
figures of a real run over pseudo-terminals (SasDriver <-> simulated fleet).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import trio

from drivers.link import open_link
from drivers.sas.driver import SasDriver, SasSettings
from drivers.sas.host import Acknowledged, HostConfig, Report, SasHost
from drivers.sim.egm import SasEgm
from drivers.sim.fleet import serve_fleet
from drivers.sim.ledger import Ledger
from drivers.sim.machine import PlayModel


def bench_core(virtual_seconds: float, rate: float) -> dict[str, float]:
    host = SasHost("bench", [1], HostConfig())
    egm = SasEgm(1, Ledger(), play=PlayModel(1, rate))
    now, recorded = 0.0, 0
    start = time.process_time()
    while now < virtual_seconds:
        host.handle_timer(now)
        for frame in host.frames_to_send():
            reply = egm.receive_words([frame.data[0] | 0x100, *frame.data[1:]], now)
            if reply:
                host.receive_data(reply, now + 0.002)
        while (event := host.next_event()) is not None:
            if isinstance(event, Report) and event.token is not None:
                recorded += 1
                host.durable(event.token)
            elif isinstance(event, Acknowledged):
                pass
        timers = [t for t in (host.get_timer(), egm.get_timer()) if t is not None]
        now = max(now, min(timers))
        egm.handle_timer(now)
    cpu = time.process_time() - start
    polls = host.statistics()[1]["polls"]
    return {"virtual_s": virtual_seconds, "cpu_s": round(cpu, 3), "polls": polls,
            "exceptions": recorded, "polls_per_cpu_s": round(polls / cpu),
            "exceptions_per_cpu_s": round(recorded / cpu)}


class _CountingSink:
    def __init__(self) -> None:
        self.recorded = 0

    async def record(self, event: object) -> None:
        self.recorded += 1

    def acknowledged(self, event: object) -> None:
        pass

    def is_redelivery(self, machine: object, source: object) -> bool:
        return False


async def bench_pty(machines: int, seconds: float, rate: float) -> dict[str, object]:
    sink = _CountingSink()
    settings = SasSettings(poll_interval_s=0.04, response_timeout_s=0.1)
    async with trio.open_nursery() as nursery:
        fleet = await nursery.start(lambda task_status: serve_fleet(
            machines, events_per_second=rate, task_status=task_status))
        drivers = [SasDriver(f"pty{n}", lambda p=p: open_link(p), [1], settings)
                   for n, p in enumerate(fleet.device_paths)]
        for driver in drivers:
            await nursery.start(driver.run, sink)
        start = time.process_time()
        await trio.sleep(seconds)
        cpu = time.process_time() - start
        stats = [d.statistics().machines[1] for d in drivers]
        nursery.cancel_scope.cancel()
    return {"machines": machines, "wall_s": seconds, "cpu_s": round(cpu, 3),
            "recorded": sink.recorded, "ledger": fleet.summary(),
            "latency_p50_ms": [round((s["latency_p50_s"] or 0) * 1000, 2) for s in stats],
            "latency_p99_ms": [round((s["latency_p99_s"] or 0) * 1000, 2) for s in stats],
            "timeouts": sum(s["timeouts"] for s in stats)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--virtual-seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--pty-machines", type=int, default=4)
    parser.add_argument("--pty-seconds", type=float, default=5.0)
    args = parser.parse_args()
    print(json.dumps({"core": bench_core(args.virtual_seconds, args.rate)}))
    if args.pty_machines:
        result = trio.run(bench_pty, args.pty_machines, args.pty_seconds, args.rate)
        print(json.dumps({"pty": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
