"""Build the Debian package once per test session (tests/test_package.py and tests/test_guide.py
both need it; a build takes ~30 s)."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def need_dpkg() -> None:
    """Skip without Debian's tools, except in CI (a Debian host), where that is a failure."""
    if shutil.which("dpkg-deb") is None:
        if os.environ.get("CI"):
            pytest.fail("CI: dpkg-deb is missing (apt-get install dpkg-dev)")
        pytest.skip("needs dpkg-deb (a Debian host)")


@functools.cache
def build_deb() -> Path:
    out = Path(tempfile.mkdtemp(prefix="casino-gateway-deb-"))
    done = subprocess.run([str(ROOT / "packaging" / "build-deb"), str(out)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return Path(done.stdout.strip().splitlines()[-1])
