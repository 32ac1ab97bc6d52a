"""A card reader port in the configuration: its own keys in its `[[ports]]` table, checked with
the rest of the file; the venue secret is read at config check and a weaker one is refused with
one line naming the field (exit 78 from `casino-gateway check` and `run`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.cardreader.settings import CardReaderPortSettings
from drivers.model import MachineRef
from gateway.config import parse_config, problems_of
from gateway.errors import ConfigError


def _secret(tmp_path: Path, mode: int = 0o600, text: str = "ab" * 32) -> Path:
    path = tmp_path / "venue.secret"
    path.write_text(text + "\n")
    os.chmod(path, mode)
    return path


def _table(reader: dict) -> dict:
    return {"gateway": {"id": "gw-1", "key_file": "/etc/gw/signing.key"},
            "uplink": {"url": "wss://platform.example/v1/stream", "token_file": "/etc/t"},
            "ports": [{"name": "egm-1", "device": "/dev/ttyUSB0"},
                      {"name": "reader-1", "device": "/dev/ttyUSB1", "protocol": "cardreader",
                       **reader}]}


def test_a_reader_port_parses(tmp_path: Path) -> None:
    config = parse_config(_table({"machine": "egm-1/1", "secret_file": str(_secret(tmp_path)),
                                  "kind": "swipe", "lrc": True, "debounce_ms": 500}))
    port = config.ports[1]
    assert port.protocol == "cardreader" and isinstance(port.settings, CardReaderPortSettings)
    assert port.settings.machine_ref() == MachineRef("egm-1", 1)
    assert port.settings.reader_settings().debounce_s == 0.5
    assert port.settings.reader_settings().lrc


@pytest.mark.parametrize(("mode", "text", "words"), [
    (0o644, "ab" * 32, "has mode 0644; it must be 0600 or stricter"),
    (0o600, "ab" * 8, "is 8 bytes; at least 32 are required"),
])
def test_a_weak_secret_is_refused_at_config_check(tmp_path: Path, mode: int, text: str,
                                                  words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(_table({"machine": "egm-1/1",
                             "secret_file": str(_secret(tmp_path, mode, text))}))
    [problem] = problems_of(err.value)
    assert problem.field == "ports[1].secret_file" and words in str(problem)
    assert "abab" not in str(problem)


@pytest.mark.parametrize(("changes", "field", "words"), [
    ({"machine": "egm-1"}, "ports[1].machine", "'port/address'"),
    ({"secret_file": "venue.secret"}, "ports[1].secret_file", "absolute path"),
    ({"kind": "barcode"}, "ports[1].kind", "swipe, insert, rfid"),
    ({"baud": 12345}, "ports[1].baud", "9600"),
    ({"poll_interval_ms": 100}, "ports[1].poll_interval_ms", "unknown field"),
])
def test_bad_reader_fields(tmp_path: Path, changes: dict, field: str, words: str) -> None:
    table = _table({"machine": "egm-1/1", "secret_file": str(_secret(tmp_path)), **changes})
    with pytest.raises(ConfigError) as err:
        parse_config(table)
    found = {p.field: str(p) for p in problems_of(err.value)}
    assert field in found and words in found[field], found


def test_check_exits_78_naming_the_secret(tmp_path: Path) -> None:
    secret = _secret(tmp_path, 0o640)
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[gateway]
id = "gw-1"
key_file = "{tmp_path}/signing.key"
[uplink]
url = "wss://platform.example/v1/stream"
token_file = "{tmp_path}/token"
[[ports]]
name = "reader-1"
protocol = "cardreader"
device = "/dev/ttyUSB1"
machine = "egm-1/1"
secret_file = "{secret}"
""")
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "check", "--config",
                             str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 78
    lines = [line for line in result.stderr.splitlines() if "secret_file" in line]
    assert len(lines) == 1 and "mode 0640" in lines[0] and "abab" not in result.stderr
