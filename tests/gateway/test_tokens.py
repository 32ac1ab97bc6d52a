"""Staff tokens: made with enough randomness, printed once, weak ones refused at load."""

from __future__ import annotations

import hashlib
import math
import sys

import pytest

from gateway.cli import main
from gateway.config import parse_config
from gateway.feed.protocol import TokenEntry, TokenTable
from gateway.logs import configure_logging
from gateway.tokens import PREFIX, TOKEN_BYTES, is_weak_token_hash, make_token
from tests.gateway.test_config import MINIMAL


@pytest.fixture(autouse=True)
def logs_back():
    """main() points structlog at this test's captured stderr, closed afterwards: put it back,
    or a later test's log line fails on a closed file."""
    yield
    configure_logging("warning", "console", stream=sys.__stderr__)


def test_made_tokens_have_at_least_128_bits_and_differ():
    made = [make_token("attendant", f"t{i}") for i in range(50)]
    assert len({m.token for m in made}) == 50
    assert TOKEN_BYTES * 8 >= 128
    body = made[0].token.removeprefix(PREFIX)
    assert len(body) * math.log2(64) >= 128  # base64url characters
    assert made[0].sha256 == hashlib.sha256(made[0].token.encode()).hexdigest()


def test_made_token_config_lines_load_and_authenticate():
    made = make_token("supervisor", "night-shift")
    import tomllib

    table = dict(MINIMAL, **tomllib.loads("[feed]\n" + made.config_lines()))
    feed = parse_config(table).feed
    assert [(t.name, t.role, t.sha256) for t in feed.tokens] == [
        ("night-shift", "supervisor", made.sha256)]
    entries = [TokenEntry(t.name, t.role, t.sha256) for t in feed.tokens]
    assert TokenTable(entries).authenticate(made.token).role == "supervisor"
    assert made.token not in made.config_lines()


@pytest.mark.parametrize("weak", ["test", "password", "attendant", "1234", "Changeme1", ""])
def test_weak_tokens_are_recognised(weak):
    assert is_weak_token_hash(hashlib.sha256(weak.encode()).hexdigest())


def test_a_made_token_is_not_weak():
    assert not is_weak_token_hash(make_token("viewer", "x").sha256)


def test_cli_tokens_new_prints_the_token_once_and_the_config_lines(capsys):
    assert main(["tokens", "new", "--role", "attendant", "--name", "floor-a"]) == 0
    out = capsys.readouterr().out
    token = next(w for w in out.split() if w.startswith(PREFIX))
    assert out.count(token) == 1
    digest = hashlib.sha256(token.encode()).hexdigest()
    assert f'sha256 = "{digest}"' in out and 'role = "attendant"' in out
    assert 'name = "floor-a"' in out


def test_cli_tokens_new_refuses_an_unknown_role(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["tokens", "new", "--role", "admin"])
    assert caught.value.code == 2
