"""Rules of the house that hold across rooms, checked on the code itself.

1. Sans-I/O cores stay pure *transitively*: each is imported in a fresh interpreter and
   `sys.modules` must hold no event loop, socket or serial library afterwards (a direct-import
   check missed drivers/sas/host.py loading trio through drivers/base.py).
2. The gateway knows no protocol: no module in gateway/ imports `drivers.sas`; it reaches a
   protocol through drivers/registry.py and the neutral contract (drivers/base.py, model.py).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

CORES = [
    "drivers.model", "drivers.redelivery", "drivers.sas.crc", "drivers.sas.bcd",
    "drivers.sas.codes", "drivers.sas.framing", "drivers.sas.host", "drivers.sas.messages",
    "drivers.sas.mapping", "drivers.sas.answers", "drivers.sas.event_data",
    "drivers.sas.answer_contract", "drivers.sas.answer_facts", "drivers.sas.host_api",
    "drivers.sas.line_state", "drivers.sas.scheduling", "drivers.sim.egm", "drivers.sim.machine",
    "drivers.sim.ledger",
    "gateway.events", "gateway.meters", "gateway.uplink.protocol", "gateway.feed.protocol",
    "gateway.feed.state",
    "drivers.cardreader.framing", "drivers.cardreader.reader", "drivers.cardreader.cardid",
    "drivers.cardreader.trace", "drivers.sim.cardreader",
]
# Libraries that do I/O or run an event loop; none may be loaded by importing a core.
FORBIDDEN = {"trio", "trio_websocket", "serial", "asyncio", "socket", "ssl", "sqlite3", "h11",
             "selectors", "subprocess"}


def _loaded_by(module: str) -> set[str]:
    code = ("import json, sys; before = set(sys.modules); import " + module + "; "
            "print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=60)
    return set(json.loads(out.stdout))


@pytest.mark.parametrize("module", CORES)
def test_core_loads_no_io_library(module: str) -> None:
    assert _loaded_by(module) & FORBIDDEN == set()


@pytest.mark.parametrize("module", [c for c in CORES if c.startswith("drivers.")])
def test_core_reads_no_clock_or_environment(module: str) -> None:
    # os, time and logging are always in sys.modules; a core must not use them itself (time is
    # passed in, house style 3.1).
    path = ROOT / (module.replace(".", "/") + ".py")
    assert {n.split(".")[0] for n in _imports(path)} & {"os", "time", "logging"} == set()


def test_the_check_sees_transitive_imports() -> None:
    # drivers.base imports trio for the async contract; the check must see it through a chain.
    assert "trio" in _loaded_by("drivers.sas.driver")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_no_gateway_module_imports_a_protocol() -> None:
    offenders = {str(p.relative_to(ROOT)): sorted(n for n in _imports(p)
                                                  if n == "drivers.sas"
                                                  or n.startswith("drivers.sas."))
                 for p in sorted((ROOT / "gateway").rglob("*.py"))}
    assert {p: n for p, n in offenders.items() if n} == {}


def test_import_walk_sees_every_form(tmp_path: Path) -> None:
    probe = tmp_path / "m.py"
    probe.write_text("import drivers.sas.host\nfrom drivers.sas import messages\n"
                     "def f():\n    from drivers.sas.codes import Exc\n")
    assert {"drivers.sas.host", "drivers.sas.messages", "drivers.sas.codes"} <= _imports(probe)
    probe.write_text("from drivers import sas\n")
    assert "drivers.sas" in _imports(probe)
