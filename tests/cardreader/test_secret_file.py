"""The venue secret file: 0600 or stricter, hex, at least 32 bytes; every refusal is one line
that never shows the secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from drivers.cardreader.errors import VenueSecretError
from drivers.cardreader.secret_file import load_venue_secret

GOOD = "9f" * 32


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_a_good_file_loads(tmp_path: Path) -> None:
    secret = load_venue_secret(_write(tmp_path / "venue.secret", GOOD + "\n"))
    assert secret.key == bytes.fromhex(GOOD) and len(secret.key_id) == 8


@pytest.mark.parametrize(("text", "mode", "says"), [
    (GOOD, 0o640, "mode 0640; it must be 0600 or stricter"),
    (GOOD, 0o604, "mode 0604"),
    ("9f" * 16, 0o600, "is 16 bytes; at least 32 are required"),
    ("not hex at all, sorry" * 4, 0o600, "must hold hexadecimal text"),
    ("9f" * 65, 0o600, "at most 64 are used"),
])
def test_weaker_files_are_refused(tmp_path: Path, text: str, mode: int, says: str) -> None:
    path = _write(tmp_path / "venue.secret", text, mode)
    with pytest.raises(VenueSecretError) as err:
        load_venue_secret(path)
    assert says in str(err.value) and "\n" not in str(err.value)
    assert "9f9f" not in str(err.value)


def test_missing_symlinked_and_directory(tmp_path: Path) -> None:
    with pytest.raises(VenueSecretError, match="does not exist; create it"):
        load_venue_secret(tmp_path / "nope")
    real = _write(tmp_path / "real", GOOD)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(VenueSecretError, match="cannot open"):
        load_venue_secret(tmp_path / "link")
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(VenueSecretError):
        load_venue_secret(tmp_path / "dir")
