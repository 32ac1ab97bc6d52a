"""Staff tokens for the feed: made here with 256 bits of randomness, refused at load when weak.

The configuration holds only a token's SHA-256, so the gateway cannot measure a token's strength
from it; what it can do is recognise the hash of a well-known weak token (a dictionary word, a
role name, a PIN, the classic `test`) and refuse it, and make strong tokens easy: `casino-gateway
tokens new --role attendant` prints the token once and the `[[feed.tokens]]` lines with its hash.
Pure: no I/O, so config.py can use it while parsing.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from functools import cache

__all__ = ["PREFIX", "TOKEN_BYTES", "MadeToken", "is_weak_token_hash", "make_token"]

# Bytes of randomness in a token (the issue asks for at least 16, i.e. 128 bits).
TOKEN_BYTES = 32
# Marks a token made by this command, so it is recognisable in a password manager or a leak scan.
PREFIX = "cgw_"

# Tokens people type when told "any token": words, role names, keyboard runs, the old example.
_WEAK_WORDS = (
    "", "test", "testing", "test123", "password", "passw0rd", "secret", "token", "changeme",
    "change-me", "letmein", "welcome", "admin", "administrator", "root", "default", "guest",
    "user", "demo", "example", "casino", "gateway", "casino-gateway", "floor", "staff",
    "viewer", "attendant", "supervisor", "manager", "security", "lobby", "lobby-screen",
    "board", "qwerty", "qwertyuiop", "asdf", "asdfgh", "abc", "abcd", "abcdef", "abc123",
    "iloveyou", "monkey", "dragon", "master", "pass", "pass123", "the-token", "my-token",
    "mytoken", "foo", "bar", "foobar", "x", "xxx", "xxxx",
)


@cache
def _weak_hashes() -> frozenset[str]:
    words: set[str] = set()
    for word in _WEAK_WORDS:
        for variant in (word, word.upper(), word.capitalize()):
            words.update((variant, variant + "1", variant + "123", variant + "!"))
    # Every PIN of up to 6 digits would be 1.1 M hashes (0.6 s per load); up to 4 is 11,110.
    for length in range(1, 5):
        words.update(f"{n:0{length}d}" for n in range(10 ** length))
    words.update(("12345", "123456", "1234567", "12345678", "123456789", "1234567890",
                  "111111", "000000", "654321"))
    return frozenset(hashlib.sha256(w.encode("utf-8")).hexdigest() for w in words)


def is_weak_token_hash(sha256_hex: str) -> bool:
    """True if `sha256_hex` is the hash of a token on the well-known weak list."""
    return sha256_hex in _weak_hashes()


@dataclass(frozen=True, slots=True)
class MadeToken:
    token: str
    sha256: str
    name: str
    role: str

    def config_lines(self) -> str:
        """The [[feed.tokens]] table to paste into the configuration (no secret in it)."""
        return (f'[[feed.tokens]]\nname = "{self.name}"\nrole = "{self.role}"\n'
                f'sha256 = "{self.sha256}"\n')


def make_token(role: str, name: str) -> MadeToken:
    token = PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    return MadeToken(token, hashlib.sha256(token.encode("utf-8")).hexdigest(), name, role)
