"""The shipped unit file: systemd-analyze verify must print nothing (it exits 0 on unknown keys,
so any output is a failure), apart from the ExecStart binary not being installed on this box."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[1] / "systemd" / "casino-gateway.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_verifies_without_warnings():
    result = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True,
                            text=True, timeout=60)
    lines = [line for line in (result.stdout + result.stderr).splitlines()
             if line.strip() and "is not executable: No such file or directory" not in line]
    assert lines == []


def test_unit_has_the_promised_settings():
    text = UNIT.read_text()
    for setting in ("Type=notify", "WatchdogSec=", "Restart=on-failure",
                    "RestartPreventExitStatus=78", "SupplementaryGroups=dialout",
                    "StateDirectory=", "RuntimeDirectory=", "ConfigurationDirectory=",
                    "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                    "NoNewPrivileges=yes", "DevicePolicy=closed", "DeviceAllow=",
                    "RestrictAddressFamilies=", "SystemCallFilter="):
        assert setting in text, setting
    assert "PrivateDevices=yes" not in text  # it would hide the serial ports


def test_unit_gives_descriptors_far_above_the_connection_caps():
    """Issue 15: 1,100 half-open feed requests used all of the default 1,024 descriptors."""
    from gateway.feed.server import FeedSettings

    limits = [line.split("=", 1)[1] for line in UNIT.read_text().splitlines()
              if line.startswith("LimitNOFILE=")]
    assert len(limits) == 1
    settings = FeedSettings()
    assert int(limits[0]) >= 8 * (settings.max_connections + 16)


def test_unit_checks_the_configuration_before_starting():
    lines = UNIT.read_text().splitlines()
    pre = [line for line in lines if line.startswith("ExecStartPre=")]
    start = next(line for line in lines if line.startswith("ExecStart="))
    config = start.split("--config ", 1)[1]
    # Non-strict (a late USB adapter is a warning), on the same file ExecStart runs, and with
    # '-': run repeats the check and exits 78, which RestartPreventExitStatus honours; a failing
    # ExecStartPre would be restarted in a loop instead.
    assert pre == ["ExecStartPre=-/opt/casino-gateway/bin/casino-gateway check --config "
                   + config]
    assert "--strict" not in pre[0]
