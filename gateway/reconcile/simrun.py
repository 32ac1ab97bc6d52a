"""Simulated machines through the real SAS host into the reconciler, on a virtual clock.

For tests and bench/reconcile_long.py: what the gateway would record, in order (every exception
the host reports as durable at once, every other report as it comes), numbered like outbox seqs,
fed to a `Reconciler`. The simulator's ledger stays the independent oracle: a discrepancy is
false unless the machine lied, or the ledger shows an event lost or invented on the line.
Not part of the sans-I/O core (it imports the host, which imports the driver contract).
"""

from __future__ import annotations

from collections import Counter

from drivers.base import MachineEvent
from drivers.sas.host import HostConfig, Report, SasHost
from drivers.sim.egm import SasEgm
from gateway.reconcile.core import Observation, Reconciler, Verdict

__all__ = ["SimRun"]

_WALL0 = 1_765_000_000.0  # wall clock at virtual time 0 (gaming days need one)


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
