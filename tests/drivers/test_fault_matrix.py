"""The fault matrix, short version (the long one: bench/sas_faults.py; table in docs/sas.md).

Every fault kind alone at 10 % and all together at 2, 10 and 30 %, normal and RTE mode, every
simulator profile, sans-I/O (a few seconds in all). Judged from the simulator's ledger
(drivers/sim/oracle.py): no invented event, no duplicate of an exception with data, no
acknowledged exception missing without a loss marker, no spurious marker. The residual risk of
lone junk bytes standing in for an answer is counted, not hidden (the ledger counts them;
docs/sas.md, "Residual risk").
"""

from __future__ import annotations

import pytest

from drivers.sim.egm import PROFILES
from drivers.sim.matrix import ALL_KINDS, Case, run_case

_CASES = [Case((k,), 0.10, rte, profile) for k in ALL_KINDS for rte in (False, True)
          for profile in ("default", "silence_fresh")]
_CASES += [Case(ALL_KINDS, p, rte, profile) for p in (0.02, 0.10, 0.30) for rte in (False, True)
           for profile in PROFILES]


@pytest.mark.parametrize("case", _CASES, ids=[c.name for c in _CASES])
def test_fault_matrix(case: Case) -> None:
    outcome = run_case(case)
    v = outcome.verdict
    assert outcome.injected > 0 and v.raised > 20, v
    assert v.invented_unexplained == 0, v
    assert v.duplicates_with_data == 0, v
    assert v.spurious_markers == 0, v
    if case.probability <= 0.02:
        assert v.loss_markers == 0, v  # none spurious at 2 %
    assert v.missing_unmarked == 0, v
