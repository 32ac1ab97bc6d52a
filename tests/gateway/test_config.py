from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway.config import load_config, parse_config, problems_of
from gateway.errors import ConfigError

MINIMAL = {
    "gateway": {"id": "gw-1", "key_file": "keys/signing.key"},
    "uplink": {"url": "wss://platform.example/v1/stream", "token_file": "uplink.token"},
    "ports": [{"name": "p1", "device": "/dev/ttyUSB0"}],
}


def with_changes(section: str, **changes):
    table = {k: (dict(v) if isinstance(v, dict) else [dict(p) for p in v])
             for k, v in MINIMAL.items()}
    if section == "ports":
        table["ports"][0].update(changes)
    else:
        table[section].update(changes)
    return table


def test_minimal_config_gets_defaults():
    config = parse_config(MINIMAL)
    assert config.ports[0].poll_interval_ms == 200
    assert config.ports[0].addresses == (1,)
    assert config.outbox_path == Path("/var/lib/casino-gateway/outbox.db")


@pytest.mark.parametrize(("section", "changes", "field", "words"), [
    ("gateway", {"typo": 1}, "gateway.typo", "unknown field"),
    ("gateway", {"id": "bad id!"}, "gateway.id", "letters"),
    ("gateway", {"currency": "dollars"}, "gateway.currency", "ISO 4217"),
    ("ports", {"poll_interval_ms": "fast"}, "ports[0].poll_interval_ms", "integer"),
    ("ports", {"poll_interval_ms": 10}, "ports[0].poll_interval_ms", "between 40 and 5000"),
    ("ports", {"addresses": [0]}, "ports[0].addresses[0]", "1-127"),
    ("ports", {"link": "usb"}, "ports[0].link", "auto, serial, pty"),
    ("uplink", {"url": "http://x"}, "uplink.url", "wss://"),
    # Out-of-range uplink figures used to start a daemon that spun or never sent.
    ("uplink", {"window": 0}, "uplink.window", "between 1 and 1024"),
    ("uplink", {"batch_max": 0}, "uplink.batch_max", "between 1 and 10000"),
    ("uplink", {"heartbeat_s": -1}, "uplink.heartbeat_s", "not 0"),
    ("uplink", {"backoff_max_s": -5}, "uplink.backoff_max_s", "not 0"),
    ("uplink", {"backoff_max_s": 0.1, "backoff_initial_s": 1}, "uplink.backoff_max_s",
     "at least backoff_initial_s"),
    ("uplink", {"dead_after_s": 5}, "uplink.dead_after_s", "more than heartbeat_s"),
    # ws:// would carry the bearer token in clear across the network.
    ("uplink", {"url": "ws://platform.example/v1/stream"}, "uplink.url", "in clear"),
    ("uplink", {"url": "ws://10.0.0.5:8080/v1/stream"}, "uplink.url", "loopback"),
    ("uplink", {"url": "wss://x:99999/"}, "uplink.url", "valid port"),
])
def test_errors_name_the_field(section, changes, field, words):
    with pytest.raises(ConfigError) as caught:
        parse_config(with_changes(section, **changes))
    assert caught.value.field == field
    assert words in str(caught.value)


@pytest.mark.parametrize("url", ["ws://127.0.0.1:9000/v1/stream", "ws://[::1]:9000/",
                                 "ws://localhost/v1/stream", "wss://10.0.0.5/v1/stream"])
def test_plain_ws_only_to_loopback(url):
    assert parse_config(with_changes("uplink", url=url)).uplink.url == url


def test_missing_required_field():
    with pytest.raises(ConfigError, match=r"gateway\.key_file: required"):
        parse_config({"gateway": {"id": "gw"}, "uplink": MINIMAL["uplink"]})


def test_duplicate_port_names_rejected():
    table = dict(MINIMAL, ports=[{"name": "p", "device": "/a"}, {"name": "p", "device": "/b"}])
    with pytest.raises(ConfigError, match=r"ports\[1\]\.name"):
        parse_config(table)


def test_relative_paths_resolve_against_the_file(tmp_path: Path):
    path = tmp_path / "gateway.toml"
    path.write_text('[gateway]\nid = "gw"\nkey_file = "signing.key"\n'
                    '[uplink]\nurl = "wss://x/v1/stream"\ntoken_file = "t"\n')
    config = load_config(path)
    assert config.gateway.key_file == tmp_path / "signing.key"


def test_invalid_toml_is_a_config_error(tmp_path: Path):
    path = tmp_path / "gateway.toml"
    path.write_text("[gateway\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_example_config_is_valid():
    example = Path(__file__).parents[2] / "config" / "gateway.example.toml"
    config = load_config(example)
    assert config.ports


# -- [feed] ------------------------------------------------------------------------------------------

SHA = hashlib.sha256(b"cgw_a-strong-token-made-by-tokens-new-for-this-test").hexdigest()


def test_feed_is_optional_and_has_defaults():
    assert parse_config(MINIMAL).feed is None
    feed = parse_config(dict(MINIMAL, feed={})).feed
    assert (feed.host, feed.port, feed.client_queue, feed.tokens) == ("127.0.0.1", 8080, 1000, ())


def test_feed_tokens_parse():
    table = dict(MINIMAL, feed={"port": 0, "allowed_origins": ["http://board.lan"], "tokens": [
        {"name": "floor", "sha256": SHA}, {"name": "boss", "sha256": "0" * 64,
                                           "role": "supervisor"}]})
    feed = parse_config(table).feed
    assert [(t.name, t.role) for t in feed.tokens] == [("floor", "viewer"), ("boss", "supervisor")]
    assert feed.allowed_origins == ("http://board.lan",)


@pytest.mark.parametrize(("feed", "field", "words"), [
    ({"port": 70000}, "feed.port", "0-65535"),
    ({"tokens": [{"name": "a", "sha256": "abc"}]}, "feed.tokens[0].sha256", "64 lowercase hex"),
    ({"tokens": [{"name": "a", "sha256": SHA, "role": "admin"}]}, "feed.tokens[0].role",
     "viewer, attendant, supervisor"),
    ({"tokens": [{"name": "a", "sha256": SHA}, {"name": "a", "sha256": "1" * 64}]},
     "feed.tokens[1].name", "duplicate"),
    ({"tokens": [{"name": "a", "sha256": SHA}, {"name": "b", "sha256": SHA}]},
     "feed.tokens[1].sha256", "twice"),
    ({"certfile": "/etc/feed.pem"}, "feed.keyfile", "together"),
    # The old example's attendant token, sha256("test"), and other well-known weak ones.
    ({"tokens": [{"name": "a", "sha256": hashlib.sha256(b"test").hexdigest()}]},
     "feed.tokens[0].sha256", "weak token"),
    ({"tokens": [{"name": "a", "sha256": hashlib.sha256(b"Password1").hexdigest()}]},
     "feed.tokens[0].sha256", "tokens new"),
    ({"tokens": [{"name": "a", "sha256": hashlib.sha256(b"0042").hexdigest()}]},
     "feed.tokens[0].sha256", "weak token"),
    ({"client_queue": 1}, "feed.client_queue", "between 10"),
    ({"tokenz": []}, "feed.tokenz", "unknown field"),
])
def test_feed_errors_name_the_field(feed, field, words):
    with pytest.raises(ConfigError) as caught:
        parse_config(dict(MINIMAL, feed=feed))
    assert caught.value.field == field
    assert words in str(caught.value)


def test_example_config_documents_the_feed_without_a_working_credential():
    example = Path(__file__).parents[2] / "config" / "gateway.example.toml"
    feed = load_config(example).feed
    # A copied example must not let anyone in: no token is configured, the file says how to
    # make one, and the board stays on this box until the operator opens it up.
    assert feed is not None and feed.tokens == ()
    assert feed.host == "127.0.0.1"
    text = example.read_text()
    assert "casino-gateway tokens new" in text and "sha256 = \"" in text


def test_outbox_disk_budget_defaults_and_values():
    outbox = parse_config(MINIMAL).outbox
    # No size cap given: the outbox caps delivered events at half its filesystem.
    assert (outbox.min_free_mb, outbox.retention_days, outbox.retention_max_mb) == \
        (64.0, 30.0, None)
    assert outbox.droppable_types == ("meterSnapshot",)
    table = with_changes("gateway")
    table["outbox"] = {"min_free_mb": 200, "retention_days": 7, "retention_max_mb": 512,
                       "droppable_types": ["meterSnapshot", "gameSelected"]}
    outbox = parse_config(table).outbox
    assert (outbox.min_free_mb, outbox.retention_days, outbox.retention_max_mb) == \
        (200.0, 7.0, 512.0)
    assert outbox.droppable_types == ("meterSnapshot", "gameSelected")


@pytest.mark.parametrize(("changes", "field", "words"), [
    ({"min_free_mb": -1}, "outbox.min_free_mb", "0 (no floor)"),
    ({"retention_days": -2}, "outbox.retention_days", "0 (keep"),
    ({"droppable_types": ["lossMarker"]}, "outbox.droppable_types", "never shed"),
    ({"droppable_types": ["noSuchEvent"]}, "outbox.droppable_types", "cash or player"),
])
def test_outbox_disk_budget_errors_name_the_field(changes, field, words):
    table = with_changes("gateway")
    table["outbox"] = changes
    with pytest.raises(ConfigError) as caught:
        parse_config(table)
    assert caught.value.field == field and words in str(caught.value)


def test_example_config_documents_the_disk_budget():
    example = Path(__file__).parents[2] / "config" / "gateway.example.toml"
    outbox = load_config(example).outbox
    assert outbox.min_free_mb == 64 and outbox.droppable_types == ("meterSnapshot",)


def test_uplink_timeouts_are_validated_settings():
    """docs/uplink-protocol.md calls connect_timeout_s and rejected_backoff_s settings."""
    base = {"gateway": {"id": "gw-1", "key_file": "k"},
            "uplink": {"url": "wss://platform.example/v1/stream", "token_file": "t",
                       "connect_timeout_s": 15, "rejected_backoff_s": 60}}
    config = parse_config(base)
    assert (config.uplink.connect_timeout_s, config.uplink.rejected_backoff_s) == (15, 60)
    for field_name, bad in (("connect_timeout_s", 0), ("rejected_backoff_s", 1)):
        table = {**base, "uplink": {**base["uplink"], field_name: bad}}
        with pytest.raises(ConfigError, match=f"uplink.{field_name}"):
            parse_config(table)


def test_every_wrong_field_is_reported_at_once():
    table = with_changes("uplink", window=0, heartbeat_s=-1)
    table["ports"][0].update(poll_interval_ms=1, link="usb")
    table["gateway"]["typo"] = True
    with pytest.raises(ConfigError) as caught:
        parse_config(table)
    fields = [p.field for p in problems_of(caught.value)]
    assert sorted(fields) == sorted(["gateway.typo", "uplink.window", "uplink.heartbeat_s",
                                     "ports[0].poll_interval_ms", "ports[0].link"])
    assert "(and 4 more)" in str(caught.value)
