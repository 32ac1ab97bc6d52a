"""The feed and the monitor stay readable in one sitting: no file over 600 lines, no function
over 60 (issue 14). Counted on the source, so a growing module fails here, not in review."""

from __future__ import annotations

import ast
from pathlib import Path

import gateway

ROOT = Path(gateway.__file__).parent
FILES = [*sorted((ROOT / "feed").glob("*.py")), ROOT / "monitor.py", ROOT / "limits.py"]
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 60


def test_no_feed_file_is_over_600_lines():
    long = {p.name: n for p in FILES if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert not long, long


def test_no_feed_function_is_over_60_lines():
    long = {}
    for path in FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.name}:{node.name}"] = lines
    assert not long, long
