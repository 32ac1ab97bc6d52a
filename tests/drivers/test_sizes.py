"""Files small enough to read in one sitting (issue 14): in the SAS driver, the redelivery
rules, the simulator and the SAS benchmarks, no file over 600 lines and no function over 60.
An exception needs an entry in ALLOWED with its reason."""

from __future__ import annotations

import ast
import pathlib

import pytest

_ROOT = pathlib.Path(__file__).resolve().parents[2]
_FILES = sorted([*(_ROOT / "drivers" / "sas").glob("*.py"), _ROOT / "drivers" / "redelivery.py",
                 *(_ROOT / "drivers" / "sim").glob("*.py"), *(_ROOT / "bench").glob("sas_*.py")])
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 60
# "path:function" -> why it may be longer.
ALLOWED: dict[str, str] = {}


def _functions(tree: ast.AST) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


@pytest.mark.parametrize("path", _FILES, ids=lambda p: str(p.relative_to(_ROOT)))
def test_file_and_functions_are_small(path: pathlib.Path) -> None:
    text = path.read_text()
    name = str(path.relative_to(_ROOT))
    assert len(text.splitlines()) <= MAX_FILE_LINES or name in ALLOWED, name
    long = [f"{name}:{f.name} ({f.end_lineno - f.lineno + 1} lines)"
            for f in _functions(ast.parse(text))
            if (f.end_lineno or f.lineno) - f.lineno + 1 > MAX_FUNCTION_LINES
            and f"{name}:{f.name}" not in ALLOWED]
    assert not long, long
