"""Each configuration value reaches its consumer under its own name (issue 14: two retry settings
were once swapped where a section was copied field by field into a settings class).

The file below gives every numeric setting a value no other setting has, so a value arriving under
another name, or not at all, fails here."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest

from gateway.config import MonitorSection, OutboxSection, parse_config, settings_for
from gateway.daemon import health_limits, outbox_settings, uplink_settings
from gateway.feed.settings import FeedSettings
from gateway.monitor import HealthLimits
from gateway.outbox import OutboxSettings

DISTINCT = """
[gateway]
id = "gw-7"
key_file = "k.key"
venue = "venue-7"
region = "region-7"

[uplink]
url = ["wss://a.example/up", "wss://b.example/up"]
token_file = "uplink.token"
ca_file = "ca.pem"
client_cert = "client.pem"
client_key = "client.key"
batch_max = 201
window = 9
heartbeat_s = 11.0
dead_after_s = 31.0
backoff_initial_s = 0.7
backoff_max_s = 32.0
connect_timeout_s = 12.0
rejected_backoff_s = 301.0
frozen_after_s = 13.0

[outbox]
path = "o.db"
commit_interval_ms = 3.0
batch_max = 501
min_free_mb = 65.0
retention_days = 29.0
retention_max_mb = 1025.0
droppable_types = ["betPlaced", "gameEnded"]

[feed]
host = "127.0.0.2"
port = 8081
certfile = "feed.pem"
keyfile = "feed.key"
allowed_origins = ["https://board.example"]
max_message_bytes = 65537
client_queue = 1001
auth_failures_per_minute = 14
auth_timeout_s = 15.0
replay_max = 10001
history_events = 50001
degraded_depth = 10002
time_zone = "Europe/London"
session_max_s = 28801.0

[monitor]
host = "127.0.0.3"
port = 9465
uplink_down_s = 61.0
undelivered_s = 302.0
degraded_depth = 10003
"""


@pytest.fixture(scope="module")
def config():
    return parse_config(tomllib.loads(DISTINCT), base_dir=Path("/etc/gw"))


def test_the_file_gives_every_number_its_own_value(config):
    numbers = [getattr(section, f.name) for section in (config.uplink, config.outbox,
                                                        config.feed, config.monitor)
               for f in dataclasses.fields(section)
               if type(getattr(section, f.name)) in (int, float)]
    assert len(numbers) == len(set(numbers)) > 25


def _arrives(section, settings, renamed=()):
    """Every field of `section` (but `renamed`) is the same-named field of `settings`."""
    for f in dataclasses.fields(section):
        if f.name not in renamed:
            assert getattr(settings, f.name) == getattr(section, f.name), f.name


def test_uplink_values_reach_the_client_by_name(config):
    settings = uplink_settings(config)
    _arrives(config.uplink, settings, renamed=("frozen_after_s",))
    assert settings.urls == ("wss://a.example/up", "wss://b.example/up")
    assert settings.ca_file == Path("/etc/gw/ca.pem")


def test_outbox_values_reach_the_store_by_name_and_unit(config):
    settings = outbox_settings(config)
    _arrives(config.outbox, settings, renamed=("commit_interval_ms",))
    assert settings.commit_interval_s == 0.003
    assert (settings.gateway_id, settings.venue, settings.region) == ("gw-7", "venue-7",
                                                                      "region-7")
    assert settings.path == Path("/etc/gw/o.db")


def test_feed_values_reach_the_server_by_name(config):
    settings = FeedSettings.from_config(config.feed)
    _arrives(config.feed, settings, renamed=("tokens",))


def test_monitor_values_reach_the_health_limits_by_name(config):
    limits = health_limits(config)
    assert (limits.uplink_down_s, limits.undelivered_s, limits.degraded_depth) == (61.0, 302.0,
                                                                                   10003)


def test_a_section_field_that_reaches_nothing_is_refused():
    """A key added to a section but not to its consumer fails where the two meet."""
    with pytest.raises(TypeError, match=r"\['host', 'port', 'token_file'\] reach no field"):
        settings_for(MonitorSection(), HealthLimits)
    with pytest.raises(TypeError, match=r"\['commit_interval_ms'\] reach no field"):
        settings_for(OutboxSection(), OutboxSettings, gateway_id="gw")
