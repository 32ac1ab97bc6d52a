"""The SAS fault matrix: SasHost against one simulated machine, sans-I/O, judged by the ledger.

One `Case` is a fault set at a probability per answer (or per raised exception), a mode (normal
or RTE) and a machine profile (egm.PROFILES). `run_case` plays it on a virtual clock: every frame
the host emits goes to the machine, its answer comes back after 3 ms (split answers in two
parts with a gap, slow ones late, so the host's timers run in between), then the machine stops
playing and the run goes on until every exception it raised is settled. The verdict
(oracle.judge) compares the ledger with what the host reported. Pure: no trio, no I/O; the CI
test (tests/drivers/test_fault_matrix.py) and bench/sas_faults.py run it.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.sas.host import HostConfig, Report, SasHost
from drivers.sim.egm import PROFILES, SasEgm
from drivers.sim.faults import FaultPlan
from drivers.sim.ledger import Ledger
from drivers.sim.machine import PlayModel
from drivers.sim.oracle import Verdict, judge

__all__ = ["ALL_KINDS", "Case", "Outcome", "run_case"]

# Every fault kind the matrix varies ("duplicate" and "overflow" change what the machine raises,
# not the line, but the host must stay exact beside them).
ALL_KINDS = ("crc", "silence", "garbage", "junk", "truncate", "split", "slow", "busy", "power",
             "duplicate", "overflow")
_LATENCY_S = 0.003


@dataclass(frozen=True, slots=True)
class Case:
    kinds: tuple[str, ...]
    probability: float
    rte: bool
    profile: str = "default"
    seconds: float = 60.0
    rate: float = 0.5
    seed: int = 1
    rte_repeat_spacing_s: float | None = None  # HostConfig's; None: the poll interval

    @property
    def name(self) -> str:
        kinds = "all" if set(self.kinds) == set(ALL_KINDS) else "+".join(self.kinds)
        return (f"{kinds} {self.probability:.0%} {'RTE' if self.rte else 'normal'} "
                f"{self.profile}")


@dataclass(frozen=True, slots=True)
class Outcome:
    case: Case
    verdict: Verdict
    injected: int

    @property
    def ok(self) -> bool:
        return self.verdict.ok


class _Run:
    """One case in play: the host, the machine, the virtual clock and what the host reported."""

    def __init__(self, case: Case) -> None:
        plan = FaultPlan(frozenset(case.kinds), probability=case.probability, seed=case.seed)
        self.egm = SasEgm(1, Ledger(), play=PlayModel(case.seed, case.rate), faults=plan,
                          profile=PROFILES[case.profile])
        self.host = SasHost("matrix", [1], HostConfig(
            rte=case.rte, rte_repeat_spacing_s=case.rte_repeat_spacing_s))
        self.recorded: list[tuple[int, bytes]] = []
        self.markers = self.resent_dataless = 0
        self.now = 0.0

    def deliver(self, reply: bytes) -> None:
        egm, host = self.egm, self.host
        self.now += _LATENCY_S
        if egm.answer_delay:
            self.now += egm.answer_delay
            egm.answer_delay = 0.0
            host.handle_timer(self.now)
        if egm.answer_split is not None:
            (cut, gap), egm.answer_split = egm.answer_split, None
            host.receive_data(reply[:cut], self.now)
            self.now += gap
            host.handle_timer(self.now)
            reply = reply[cut:]
        host.receive_data(reply, self.now)

    def take(self, event: object) -> None:
        match event:
            case Report(ev, token) if token is not None:
                if not event.resent and ev.source is not None:
                    self.recorded.append((ev.source.code, ev.source.payload))
                elif ev.source is not None and not ev.source.payload:
                    self.resent_dataless += 1
                self.host.durable(token)
            case Report(ev) if ev.type == "lossMarker":
                self.markers += 1

    def step(self) -> None:
        egm, host = self.egm, self.host
        host.handle_timer(self.now)
        progressed = True
        while progressed:
            progressed = False
            for frame in host.frames_to_send():
                progressed = True
                reply = egm.receive_words([frame.data[0] | 0x100, *frame.data[1:]], self.now)
                if reply:
                    self.deliver(reply)
            while (event := host.next_event()) is not None:
                progressed = True
                self.take(event)
        timers = [t for t in (host.get_timer(), egm.get_timer()) if t is not None]
        self.now = max(self.now, min(timers))
        egm.handle_timer(self.now)


def run_case(case: Case, *, settle_limit_s: float = 1800.0) -> Outcome:
    run = _Run(case)
    while run.now < case.seconds:
        run.step()
    egm = run.egm
    assert egm.play is not None
    egm.play.stop()
    end = run.now + settle_limit_s
    while egm.ledger.pending() and run.now < end:
        run.step()
    verdict = judge(egm.ledger.entries, run.recorded, run.markers,
                    resent_dataless=run.resent_dataless, lone_bytes=egm.ledger.lone_bytes)
    return Outcome(case, verdict, sum(egm.faults.injected.values()))
