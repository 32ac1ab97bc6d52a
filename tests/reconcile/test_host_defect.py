"""The check works even when the host is wrong (issue 21): swap in a framer with the defect the
host once had -- a junk byte ahead of a one-byte general-poll answer taken as the exception --
and the reconciler flags the events it invented and the ones it lost, from the meters alone."""

from __future__ import annotations

from bench.reconcile_sim import SimRun
from drivers.sas import framing
from drivers.sas.host import HostConfig
from drivers.sim.egm import SasEgm
from drivers.sim.faults import FaultPlan
from drivers.sim.ledger import Ledger
from drivers.sim.machine import PlayModel
from drivers.sim.oracle import Verdict, judge


class FirstByteFramer(framing.Framer):
    """The old defect: in normal mode, the first byte of whatever answered a GP is the
    exception, junk or not; the rest is dropped and the next poll acknowledges it."""

    def next_answer(self, exp: framing.Expectation, *, quiet: bool = False) -> framing.Answer | None:
        buf = self._buf
        if exp.command is None and not exp.rte and quiet and buf and not (
                len(buf) > 1 and buf[0] == exp.address and buf[1] == 0xFF):
            code = buf[0]
            self.clear()
            return framing.ExceptionByte(code)
        return super().next_answer(exp, quiet=quiet)


def _run(framer: framing.Framer | None) -> SimRun:
    egm = SasEgm(1, Ledger(), play=PlayModel(5, 0.5), serial="D1",
                 faults=FaultPlan(frozenset({"junk"}), 0.05, seed=11))
    run = SimRun([egm], HostConfig(rte=False, meters_every_s=5.0))
    if framer is not None:
        run.host._framer = framer  # the swap: everything else is the shipped host
    run.run_until(600.0)
    return run


def _oracle(run: SimRun) -> Verdict:
    egm = run.egms[0]
    recorded = [(e.source.code, e.source.payload) for e in run.recorded if e.source is not None]
    return judge(egm.ledger.entries, recorded, 0, lone_bytes=egm.ledger.lone_bytes)


def test_the_shipped_framer_reconciles_under_junk() -> None:
    run = _run(None)
    oracle = _oracle(run)
    assert (oracle.missing, oracle.invented) == (oracle.lone_bytes, oracle.lone_bytes)
    if oracle.lone_bytes == 0:
        assert run.discrepancies() == []
    assert run.counts()["meterReconciled"] > 50


def test_a_defective_framer_is_caught_by_the_meters() -> None:
    run = _run(FirstByteFramer())
    oracle = _oracle(run)
    assert oracle.invented > 0 and oracle.missing > 0  # the defect did its damage...
    causes = {(v.data["meter"], v.data["cause"]) for v in run.discrepancies()}
    # ...and the meters show both faces of it: events never counted, counts never reported.
    assert any(cause == "eventsExtra" for _, cause in causes), causes
    assert any(cause == "eventsMissing" for _, cause in causes), causes
    assert {"games_played"} & {meter for meter, _ in causes}
