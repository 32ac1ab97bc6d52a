"""Benchmark: the SAS driver polling many simulated machines in real time (targets: docs/certification.md).

    .venv/bin/python bench/sas_poll.py [--seconds 10] [--only memory-1000,memory-256,pty-16]

Scenarios (each one process, real trio clock, RTE on, 0.1 exceptions/s per machine):
  memory-1000  1,000 machines, one SasDriver + simulated EGM per memory link, 200 ms interval
  memory-256     256 machines on memory links, 40 ms interval
  pty-16          16 machines on pseudo-terminals (PARMRK encoding), 40 ms interval
  drop-1+12       multi-drop: ONE pty line, 1 live machine and 12 dead addresses, 200 ms
  drop-8          multi-drop: one pty line with 8 live machines, 200 ms, RTE (idle machines
                  answer GPs with silence, held for the implied-NACK repeats)
  drop-8-fast     drop-8 with rte_repeat_spacing_s = 40 ms (the repeats at the fast-polling
                  floor instead of one interval apart)
  drop-8-normal   the same 8 with RTE off (every GP answered with one byte)
For each: polls/s achieved against the configured rate (machines / interval; every poll to a
machine's own address counts: GPs, long polls, retries), CPU share of one core (process CPU
time / wall time; it includes the simulated machines, so the driver alone costs less),
poll-interval jitter (time between two polls to one machine minus the interval) p50/p99, and
response-handling latency p99 (memory: from the machine writing its answer to the driver's
host having it; pty: the host's poll-to-answer latency, which includes the pty round trip).
Targets: >= 98 % of the configured rate, 1,000 @ 200 ms within 75 % of one core, jitter p99
<= 10 ms.
Multi-drop rows report each live machine's achieved rate against its configured one (target for
drop-1+12: >= 95 %), the line's measured latency (the host's port_latency_s: what the pty and
the event loop add to an answer) and `bound_pct`: what line physics allows, 100 % capped by
(line time available) / (line time the configured polls need). A GP exchange holds the line
for its wire time and either the answer (+ the quiet gap after a one-byte answer) or, for a
silent GP, the answer wait (wire + 20 ms + latency); an idle RTE machine's GP is repeated
`rte_silence_retries` times one poll interval (or `rte_repeat_spacing_s`) apart with the line
held in between (any other poll would be an implied ACK of an event answer that may have been
lost), so for 1 + retries polls it holds the line retries x spacing + one wait.

`--gc-threshold` (default 100000,100,1000) sets gc.set_threshold first; "default" keeps Python's
700,10,10, whose frequent collections over thousands of live objects stall the event loop for
tens of milliseconds (docs/sas.md "Performance").
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import sys
import time
from collections import deque
from functools import partial

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import trio

from drivers.link import EgmLink, SasLink, TxFrame, open_link
from drivers.link.memory import memory_link_pair
from drivers.sas.driver import SasDriver, SasSettings
from drivers.sas.host import BYTE_TIME_S
from drivers.sim.egm import SasEgm
from drivers.sim.fleet import serve_fleet
from drivers.sim.ledger import Ledger
from drivers.sim.line import PluggablePort
from drivers.sim.machine import PlayModel
from drivers.sim.runner import run_egm

RATE = 0.1  # exceptions per second per machine


class _Probe:
    """Send times of polls to one machine and answer hand-over latencies, in the window."""

    def __init__(self) -> None:
        self.sends: list[float] = []
        self.latencies: list[float] = []
        self.stamps: deque[float] = deque()
        self.measuring = False


class _TimedHostLink(SasLink):
    def __init__(self, inner: SasLink, probe: _Probe, address: int = 1) -> None:
        self._inner, self._probe, self._address = inner, probe, address

    async def send(self, frame: TxFrame) -> None:
        if self._probe.measuring and frame.data and frame.data[0] & 0x7F == self._address:
            self._probe.sends.append(trio.current_time())
        await self._inner.send(frame)

    async def receive_some(self) -> bytes:
        return bytes(w & 0xFF for w in await self.receive_words())

    async def receive_words(self) -> list[int]:
        words = await self._inner.receive_words()
        if self._probe.stamps:
            stamp = self._probe.stamps.popleft()
            if self._probe.measuring:
                self._probe.latencies.append(trio.current_time() - stamp)
        return words

    async def aclose(self) -> None:
        await self._inner.aclose()


class _TimedEgmLink(EgmLink):
    def __init__(self, inner: EgmLink, probe: _Probe) -> None:
        self._inner, self._probe = inner, probe

    async def send(self, data: bytes) -> None:
        self._probe.stamps.append(trio.current_time())
        await self._inner.send(data)

    async def send_words(self, words: list[int]) -> None:
        self._probe.stamps.append(trio.current_time())
        await self._inner.send_words(words)

    async def receive_words(self) -> list[int]:
        return await self._inner.receive_words()

    async def aclose(self) -> None:
        await self._inner.aclose()


class _CountingSink:
    def __init__(self) -> None:
        self.recorded = 0

    async def record(self, event: object) -> None:
        self.recorded += 1

    def acknowledged(self, event: object) -> None:
        pass

    async def redelivered(self, event: object) -> None:
        pass

    def is_redelivery(self, machine: object, source: object) -> bool:
        return False


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 2)


def _settings(interval: float) -> SasSettings:
    # The machine must answer within 20 ms (reference 2.1); a silent RTE GP costs this much.
    return SasSettings(poll_interval_s=interval, response_timeout_s=min(0.1, interval * 0.75),
                       inter_byte_gap_s=0.005, credits_every_s=5.0)


async def _measure(name: str, machines: int, interval: float, seconds: float, warmup: float,
                   start_all) -> dict[str, object]:  # type: ignore[no-untyped-def]
    sink = _CountingSink()
    probes = [_Probe() for _ in range(machines)]
    async with trio.open_nursery() as nursery:
        drivers = await start_all(nursery, probes, sink)
        await trio.sleep(warmup)
        for p in probes:
            p.measuring = True
        wall0, cpu0 = time.perf_counter(), time.process_time()
        await trio.sleep(seconds)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        for p in probes:
            p.measuring = False
        stats = [m for d in drivers for m in d.statistics().machines.values()]
        nursery.cancel_scope.cancel()
    polls = sum(len(p.sends) for p in probes)
    gaps = [b - a - interval for p in probes for a, b in zip(p.sends, p.sends[1:], strict=False)]
    latencies = [x for p in probes for x in p.latencies]
    if not latencies:  # pty: no hook on the machine side; the host's poll-to-answer figure
        latencies = [s["latency_p99_s"] for s in stats if s["latency_p99_s"] is not None]
    configured = machines / interval
    return {"scenario": name, "machines": machines, "interval_ms": interval * 1000,
            "wall_s": round(wall, 2), "polls_per_s": round(polls / wall, 1),
            "configured_per_s": round(configured, 1),
            "rate_pct": round(100 * polls / wall / configured, 1),
            "cpu_pct_one_core": round(100 * cpu / wall, 1),
            "jitter_p50_ms": _ms(_pct(gaps, 0.5)), "jitter_p99_ms": _ms(_pct(gaps, 0.99)),
            "response_p99_ms": _ms(_pct(latencies, 0.99)),
            "online": sum(bool(s["online"]) for s in stats), "timeouts": sum(
                s["timeouts"] for s in stats), "recorded": sink.recorded}


async def bench_memory(machines: int, interval: float, seconds: float) -> dict[str, object]:
    async def start_all(nursery, probes, sink):  # type: ignore[no-untyped-def]
        drivers = []
        for n, probe in enumerate(probes):
            host_end, egm_end = memory_link_pair()
            egm = SasEgm(1, Ledger(), play=PlayModel(n, RATE, start=trio.current_time()),
                         serial=f"M{n}")
            nursery.start_soon(run_egm, egm, _TimedEgmLink(egm_end, probe))

            async def opener(h=host_end, p=probe):  # type: ignore[no-untyped-def]
                return _TimedHostLink(h, p)

            driver = SasDriver(f"mem{n}", opener, [1], _settings(interval))
            await nursery.start(driver.run, sink)
            drivers.append(driver)
        return drivers

    return await _measure(f"memory-{machines}", machines, interval, seconds, 3.0, start_all)


async def bench_pty(machines: int, interval: float, seconds: float) -> dict[str, object]:
    async def start_all(nursery, probes, sink):  # type: ignore[no-untyped-def]
        fleet = await nursery.start(lambda task_status: serve_fleet(
            machines, events_per_second=RATE, task_status=task_status))
        drivers = []
        for n, (path, probe) in enumerate(zip(fleet.device_paths, probes, strict=True)):
            async def opener(p=path, pr=probe):  # type: ignore[no-untyped-def]
                return _TimedHostLink(await open_link(p), pr)

            driver = SasDriver(f"pty{n}", opener, [1], _settings(interval))
            await nursery.start(driver.run, sink)
            drivers.append(driver)
        return drivers

    return await _measure(f"pty-{machines}", machines, interval, seconds, 3.0, start_all)


class _LineCounter(SasLink):
    """Counts frames per address on one line while measuring."""

    def __init__(self, inner: SasLink) -> None:
        self.inner = inner
        self.measuring = False
        self.counts: dict[int, int] = {}

    async def send(self, frame: TxFrame) -> None:
        if self.measuring and frame.data:
            a = frame.data[0] & 0x7F
            self.counts[a] = self.counts.get(a, 0) + 1
        await self.inner.send(frame)

    async def receive_some(self) -> bytes:
        return await self.inner.receive_some()

    async def receive_words(self) -> list[int]:
        return await self.inner.receive_words()

    async def aclose(self) -> None:
        await self.inner.aclose()


def _line_bound(settings: SasSettings, live: int, latency: float) -> float:
    """Line physics (see the module docstring): the share of the configured polls the line can
    carry, from the line time one interval of polling needs."""
    interval, rte = settings.interval_s, settings.rte
    silent_wait = BYTE_TIME_S + settings.answer_window_s + latency
    retries = settings.rte_silence_retries if rte else 0
    spacing = settings.rte_repeat_spacing_s or interval
    need = live * (retries * spacing + silent_wait if rte else
                   2 * BYTE_TIME_S + latency + settings.inter_byte_gap_s)
    per_cycle = (1 + retries) * interval if rte else interval
    return min(100.0, 100.0 * per_cycle / need) if need else 100.0


async def bench_multidrop(live: int, dead: int, interval: float, seconds: float, *,
                          rte: bool = True, name: str = "",
                          spacing: float | None = None) -> dict[str, object]:
    """`live` machines and `dead` empty addresses on ONE pty line, one SasDriver."""
    import tempfile

    addresses = list(range(1, live + dead + 1))
    settings = SasSettings(poll_interval_s=interval, response_timeout_s=0.1,
                           inter_byte_gap_s=0.005, rte=rte, rte_repeat_spacing_s=spacing)
    with tempfile.TemporaryDirectory() as tmp:
        device = pathlib.Path(tmp) / "line"
        counter: _LineCounter | None = None

        async def opener() -> SasLink:
            nonlocal counter
            counter = _LineCounter(await open_link(str(device), lock_dir=pathlib.Path(tmp)))
            return counter

        sink = _CountingSink()
        driver = SasDriver("line", opener, addresses, settings)
        async with trio.open_nursery() as nursery:
            port = PluggablePort(device, nursery)
            egms = [SasEgm(a, Ledger(), play=PlayModel(a, RATE, start=trio.current_time()),
                           serial=f"L{a}", rte_capable=rte) for a in range(1, live + 1)]
            await port.plug(egms)
            await nursery.start(driver.run, sink)
            await trio.sleep(8.0)  # discovery, and dead addresses reach their backoff cap
            assert counter is not None
            counter.measuring = True
            wall0, cpu0 = time.perf_counter(), time.process_time()
            await trio.sleep(seconds)
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            counter.measuring = False
            stats = driver.statistics().machines
            nursery.cancel_scope.cancel()  # the port's machines close their pty on the way out
    rates = [counter.counts.get(a, 0) / wall for a in range(1, live + 1)]
    configured = 1 / interval
    latency = stats[1]["port_latency_s"] or 0.0
    bound = _line_bound(settings, live, latency)
    return {"scenario": name or f"drop-{live}+{dead}", "live": live, "dead": dead, "rte": rte,
            "rte_repeat_spacing_ms": None if spacing is None else spacing * 1000,
            "interval_ms": interval * 1000, "wall_s": round(wall, 2),
            "configured_per_machine_per_s": configured,
            "achieved_per_s": [round(r, 2) for r in rates],
            "rate_pct_min": round(100 * min(rates) / configured, 1),
            "rate_pct_mean": round(100 * sum(rates) / len(rates) / configured, 1),
            "bound_pct": round(bound, 1),
            "dead_polls_per_s": round(sum(counter.counts.get(a, 0)
                                          for a in range(live + 1, live + dead + 1)) / wall, 2),
            "port_latency_ms": _ms(latency),
            "latency_p99_ms": _ms(max((stats[a]["latency_p99_s"] or 0.0)
                                      for a in range(1, live + 1))),
            "timeouts_live": sum(stats[a]["timeouts"] for a in range(1, live + 1)),
            "online": sum(bool(stats[a]["online"]) for a in stats),
            "cpu_pct_one_core": round(100 * cpu / wall, 1), "recorded": sink.recorded}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--only",
                        default="memory-1000,memory-256,pty-16,drop-1+12,drop-8,drop-8-fast,"
                                "drop-8-normal")
    parser.add_argument("--gc-threshold", default="100000,100,1000")
    args = parser.parse_args()
    if args.gc_threshold != "default":
        gc.set_threshold(*(int(x) for x in args.gc_threshold.split(",")))
    print(json.dumps({"gc_threshold": gc.get_threshold()}))
    runs = {"memory-1000": (bench_memory, 1000, 0.2), "memory-256": (bench_memory, 256, 0.04),
            "pty-16": (bench_pty, 16, 0.04)}
    drops = {"drop-1+12": (1, 12, True, None), "drop-8": (8, 0, True, None),
             "drop-8-fast": (8, 0, True, 0.04), "drop-8-normal": (8, 0, False, None)}
    for name in args.only.split(","):
        if name in drops:
            live, dead, rte, spacing = drops[name]
            print(json.dumps(trio.run(partial(bench_multidrop, live, dead, 0.2, args.seconds,
                                              rte=rte, name=name, spacing=spacing))), flush=True)
            continue
        func, machines, interval = runs[name]
        print(json.dumps(trio.run(func, machines, interval, args.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
