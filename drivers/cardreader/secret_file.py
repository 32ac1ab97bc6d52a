"""Reading the venue secret file (the keyed hash itself is drivers/cardreader/cardid.py).

The file holds hexadecimal text (`openssl rand -hex 32`), 32 to 64 bytes of key, mode 0600 or
stricter, a regular file (not a symlink); anything weaker is refused with a one-line
`VenueSecretError` that never contains the secret, and the gateway exits 78 on it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from drivers.cardreader.cardid import MAX_SECRET_BYTES, MIN_SECRET_BYTES, VenueSecret
from drivers.cardreader.errors import VenueSecretError

__all__ = ["load_venue_secret"]


def load_venue_secret(path: Path) -> VenueSecret:
    """Read and check the secret file; VenueSecretError (one line, no secret in it) otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise VenueSecretError(f"venue secret file {path} does not exist; create it with "
                               f"'openssl rand -hex 32 > {path}' and mode 0600") from None
    except OSError as exc:
        raise VenueSecretError(f"cannot open venue secret file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise VenueSecretError(f"venue secret file {path} is not a regular file")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise VenueSecretError(f"venue secret file {path} has mode "
                                   f"{stat.S_IMODE(st.st_mode):04o}; it must be 0600 or stricter"
                                   f" (chmod 600 {path})")
        text = os.read(fd, 4096)
    finally:
        os.close(fd)
    digits = "".join(text.decode("ascii", "replace").split())
    try:
        key = bytes.fromhex(digits)
    except ValueError:
        raise VenueSecretError(f"venue secret file {path} must hold hexadecimal text "
                               "('openssl rand -hex 32')") from None
    if len(key) < MIN_SECRET_BYTES:
        raise VenueSecretError(f"venue secret in {path} is {len(key)} bytes; at least "
                               f"{MIN_SECRET_BYTES} are required ('openssl rand -hex 32')")
    if len(key) > MAX_SECRET_BYTES:
        raise VenueSecretError(f"venue secret in {path} is {len(key)} bytes; at most "
                               f"{MAX_SECRET_BYTES} are used, give {MIN_SECRET_BYTES}-"
                               f"{MAX_SECRET_BYTES}")
    return VenueSecret(key)
