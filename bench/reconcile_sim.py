"""Simulated machines through the real SAS host into the reconciler, on a virtual clock.

Used by bench/reconcile_long.py and tests/reconcile/: what the gateway would record, in order (every exception
the host reports as durable at once, every other report as it comes), numbered like outbox seqs,
fed to a `Reconciler`. The simulator's ledger stays the independent oracle: a discrepancy is
false unless the machine lied, or the ledger shows an event lost or invented on the line.
It lives in bench/ because it joins what the gateway never does: a protocol's host and the
reconciler (tests/test_architecture.py keeps gateway/ free of drivers.sas).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from drivers.base import MachineEvent
from drivers.sas.host import HostConfig, Report, SasHost
from drivers.sim.egm import PROFILES, SasEgm
from drivers.sim.faults import LINE_FAULTS, FaultPlan
from drivers.sim.ledger import Ledger
from drivers.sim.machine import PlayModel
from drivers.sim.oracle import judge
from gateway.reconcile.core import Cause, Observation, Reconciler, Verdict

__all__ = ["Segment", "SegmentResult", "SimRun", "run_segment"]

_WALL0 = 1_765_000_000.0  # wall clock at virtual time 0 (gaming days need one)
_SETTLE_LIMIT_S = 600.0


class SimRun:
    def __init__(self, egms: list[SasEgm], config: HostConfig | None = None, *,
                 port: str = "sim0", latency_s: float = 0.003) -> None:
        self.egms = egms
        self.host = SasHost(port, [e.address for e in egms], config or HostConfig())
        self.latency = latency_s
        self.reconciler = Reconciler()
        self.verdicts: list[Verdict] = []
        self.recorded: list[MachineEvent] = []
        self.now = 0.0

    def _record(self, event: MachineEvent) -> None:
        self.recorded.append(event)
        obs = Observation(f"{event.machine.port}/{event.machine.address}", event.type,
                          event.data, exception=event.source is not None,
                          seq=len(self.recorded), at=_WALL0 + self.now, machine=event.machine)
        self.verdicts += self.reconciler.observe(obs)

    def step(self) -> None:
        host = self.host
        host.handle_timer(self.now)
        progressed = True
        while progressed:
            progressed = False
            for frame in host.frames_to_send():
                progressed = True
                words = [frame.data[0] | 0x100, *frame.data[1:]]
                for egm in self.egms:
                    reply = egm.receive_words(words, self.now)
                    if not reply:
                        continue
                    self.now += self.latency
                    if egm.answer_split is not None:
                        (cut, gap), egm.answer_split = egm.answer_split, None
                        host.receive_data(reply[:cut], self.now)
                        self.now += gap
                        host.handle_timer(self.now)
                        reply = reply[cut:]
                    if egm.answer_delay:
                        self.now += egm.answer_delay
                        egm.answer_delay = 0.0
                    host.receive_data(reply, self.now)
            while (event := host.next_event()) is not None:
                progressed = True
                if isinstance(event, Report):
                    if not event.resent:
                        self._record(event.event)
                    if event.token is not None:
                        host.durable(event.token)
        timers = [t for t in (host.get_timer(), *(e.get_timer() for e in self.egms))
                  if t is not None]
        self.now = max(self.now, min(timers))
        for egm in self.egms:
            egm.handle_timer(self.now)

    def run_until(self, t: float) -> None:
        while self.now < t:
            self.step()

    def discrepancies(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.type == "meterDiscrepancy"]

    def counts(self) -> Counter[str]:
        return Counter(v.type for v in self.verdicts)


@dataclass(frozen=True, slots=True)
class Segment:
    """One line of machines, one per simulator profile (or of `profiles`), playing `hours` with
    line faults."""

    seed: int
    hours: float
    rte: bool = True
    meter_polls: str = "6F"
    fault_probability: float = 0.005
    rate: float = 0.1  # play events a second a machine ("floor" profile: doors, tilts, handpays)
    poll_interval_s: float = 1.0
    meters_every_s: float = 60.0
    profiles: tuple[str, ...] = ()  # simulator profiles of the line's machines (): every one
    # A player cashes out with a ticket (exception 3D) at this many credits (None: never).
    cashout_credits: int | None = 20_000


@dataclass(frozen=True, slots=True)
class SegmentResult:
    machine_hours: float
    windows: int
    reconciled: int
    day_closes: int
    # Discrepancies on machines the ledger shows nothing wrong with: false alarms.
    false_discrepancies: list[Verdict]
    # On machines where the line did lose or invent an exception (the residual risk of
    # docs/sas.md, the machine's own overflow): true, and each must carry an enumerated cause.
    true_discrepancies: list[Verdict]
    dirty_machine_hours: float
    unexplained: list[Verdict]  # a discrepancy without evidence where its cause needs some


def run_segment(seg: Segment) -> SegmentResult:
    profiles = [p for name, p in PROFILES.items() if not seg.profiles or name in seg.profiles]
    egms = [SasEgm(a, Ledger(), play=PlayModel(seg.seed * 100 + a, seg.rate, profile="floor",
                                               cashout_credits=seg.cashout_credits),
                   serial=f"R{seg.seed}-{a}", profile=p,
                   faults=FaultPlan(frozenset(LINE_FAULTS) | {"power", "duplicate"},
                                    seg.fault_probability, seed=seg.seed * 100 + a))
            for a, p in enumerate(profiles, 1)]
    run = SimRun(egms, HostConfig(rte=seg.rte, meter_polls=seg.meter_polls,
                                  poll_interval_s=seg.poll_interval_s,
                                  meters_every_s=seg.meters_every_s))
    run.run_until(seg.hours * 3600)
    # Settle before judging: with exceptions still queued, the ledger's pairing can match a bare
    # duplicate (a re-send after a power cut, recorded as new) with a pending entry and miss it.
    for egm in egms:
        assert egm.play is not None
        egm.play.stop()
    settle_until = run.now + _SETTLE_LIMIT_S
    while run.now < settle_until and any(egm.ledger.pending() for egm in egms):
        run.step()
    dirty = set()
    for egm in egms:
        recorded = [(e.source.code, e.source.payload) for e in run.recorded
                    if e.source is not None and e.machine.address == egm.address]
        v = judge(egm.ledger.entries, recorded, 0, lone_bytes=egm.ledger.lone_bytes)
        # Entries still queued at the end are neither recorded nor missing: not an anomaly.
        if (v.missing, v.invented, v.lost_by_overflow, v.duplicates_with_data,
                v.duplicates_dataless) != (0, 0, 0, 0, 0):
            dirty.add(f"{run.host.port}/{egm.address}")
    found = run.discrepancies()
    needs_evidence = {str(c) for c in Cause} - {"eventsMissing", "eventsExtra", "rollover",
                                                 "meterReset"}
    counts = run.counts()
    windows = counts["meterReconciled"] + len({(v.key, v.data["to_seq"]) for v in found})
    return SegmentResult(
        machine_hours=seg.hours * len(egms), windows=windows,
        reconciled=counts["meterReconciled"], day_closes=counts["gamingDayClosed"],
        false_discrepancies=[v for v in found if v.key not in dirty],
        true_discrepancies=[v for v in found if v.key in dirty],
        dirty_machine_hours=seg.hours * len(dirty),
        unexplained=[v for v in found if v.data["cause"] in needs_evidence
                     and not v.data["evidence"]])
