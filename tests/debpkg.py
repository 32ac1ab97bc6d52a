"""Build the Debian package once per test session with `make deb` (tests/test_package.py and
tests/test_guide.py both need it; a build takes ~30 s, and make skips an up-to-date one)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def need_dpkg() -> None:
    """Skip without Debian's tools, except in CI (a Debian host), where that is a failure."""
    if shutil.which("dpkg-deb") is None or shutil.which("make") is None:
        if os.environ.get("CI"):
            pytest.fail("CI: dpkg-deb or make is missing")
        pytest.skip("needs dpkg-deb and make (a Debian host)")


@functools.cache
def build_deb() -> Path:
    done = subprocess.run(["make", "-s", "deb"], cwd=ROOT, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    path = subprocess.run(["make", "-s", "--no-print-directory", "-f", "Makefile", "-f", "-",
                           "print-deb"], cwd=ROOT, input="print-deb:\n\t@echo $(DEB)\n",
                          capture_output=True, text=True, check=True).stdout.strip()
    return ROOT / path
