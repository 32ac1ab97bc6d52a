"""A second protocol is one package and one registry line: the daemon, capture, outbox, uplink,
control and diag know nothing of card readers, and no gateway module imports the driver."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from drivers import registry

ROOT = Path(__file__).parents[2]
UNTOUCHED = ["gateway/daemon.py", "gateway/ports.py", "gateway/capture.py", "gateway/outbox",
             "gateway/uplink/client.py", "gateway/uplink/protocol.py", "gateway/control.py",
             "gateway/diag.py"]


def _sources() -> list[Path]:
    found = []
    for name in UNTOUCHED:
        path = ROOT / name
        found += sorted(path.rglob("*.py")) if path.is_dir() else [path] if path.exists() else []
    return found


def test_the_core_of_the_gateway_names_no_card_reader() -> None:
    sources = _sources()
    assert len(sources) >= len(UNTOUCHED)  # the list still names what is there
    for name in sources:
        text = name.read_text()
        assert not re.search(r"cardreader|card.?reader|\bcard[A-Z_]|player", text, re.I), name


def test_no_gateway_module_imports_the_driver() -> None:
    for path in (ROOT / "gateway").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.startswith("drivers.cardreader") for n in names), path


def test_one_registry_line() -> None:
    lines = [line for line in (ROOT / "drivers/registry.py").read_text().splitlines()
             if "cardreader" in line]
    assert lines == ['    "cardreader": "drivers.cardreader.spec",']
    assert registry.get("cardreader").protocol == "cardreader"
