"""Configuration: one TOML file -> frozen dataclasses, with errors that name the field.

Every key is declared here with its type, default and constraint; an unknown key is an error (a
typo must not silently fall back to a default on a casino floor). Secrets are never inline: only
paths to files. `config/gateway.example.toml` documents every field.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError

__all__ = ["CommandsSection", "Config", "ConfigProblems", "FeedSection", "FeedTokenSection",
           "GatewaySection", "LogSection", "OutboxSection", "PortSection", "UplinkSection",
           "load_config", "parse_config", "problems_of"]

GATEWAY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _check(cond: bool, message: str) -> str | None:
    return None if cond else message


@dataclass(frozen=True, slots=True)
class GatewaySection:
    id: str = field(metadata={"check": lambda v: _check(bool(GATEWAY_ID.match(v)),
                    "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")})
    key_file: Path
    state_dir: Path = Path("/var/lib/casino-gateway")
    venue: str = ""
    region: str = ""
    currency: str = field(default="USD", metadata={
        "check": lambda v: _check(bool(re.fullmatch(r"[A-Z]{3}", v)), "an ISO 4217 code like USD")})
    # The local control socket `casino-gateway diag` talks to (mode 0660: owner and group only).
    # None: <systemd RuntimeDirectory>/control.sock, else <state_dir>/control.sock
    # (gateway.control.control_socket_path).
    control_socket: Path | None = None


@dataclass(frozen=True, slots=True)
class PortSection:
    name: str
    device: Path
    addresses: tuple[int, ...] = (1,)
    link: str = field(default="auto", metadata={
        "check": lambda v: _check(v in ("auto", "serial", "pty"), "one of auto, serial, pty")})
    poll_interval_ms: int = field(default=200, metadata={
        "check": lambda v: _check(40 <= v <= 5000, "between 40 and 5000 (SAS allows 40 ms-5 s)")})
    response_timeout_ms: int = field(default=100, metadata={
        "check": lambda v: _check(20 <= v <= 1000, "between 20 and 1000")})
    offline_after_misses: int = field(default=5, metadata={
        "check": lambda v: _check(1 <= v <= 100, "between 1 and 100")})
    rte: bool = True


@dataclass(frozen=True, slots=True)
class OutboxSection:
    path: Path | None = None  # default: <state_dir>/outbox.db
    commit_interval_ms: float = field(default=2.0, metadata={
        "check": lambda v: _check(0 < v <= 100, "between 0 and 100 ms")})
    batch_max: int = field(default=500, metadata={
        "check": lambda v: _check(1 <= v <= 10_000, "between 1 and 10000")})
    # Disk budget and retention (docs/outbox.md). Undelivered events are never deleted.
    min_free_mb: float = field(default=64.0, metadata={
        "check": lambda v: _check(v >= 0, "0 (no floor) or more MB")})
    retention_days: float = field(default=30.0, metadata={
        "check": lambda v: _check(v >= 0, "0 (keep delivered events) or more days")})
    # Absent: half the filesystem holding the outbox (docs/operations.md, "Disk sizing").
    retention_max_mb: float | None = field(default=None, metadata={
        "check": lambda v: _check(v is None or v >= 0, "0 (no size cap) or more MB")})
    droppable_types: tuple[str, ...] = field(default=("meterSnapshot",), metadata={
        "check": lambda v: _check_droppable(v)})


def _check_droppable(types_: tuple[str, ...]) -> str | None:
    from gateway.events import CATALOGUE

    for name in types_:
        spec = CATALOGUE.get(name)
        if spec is None or spec.channel in ("system", "alerts"):
            return "event types of the game, cash or player channels (system and alert events " \
                   "are never shed)"
    return None


def _check_uplink_url(url: str) -> str | None:
    """wss:// anywhere; ws:// only to a loopback peer, since the bearer token would cross the
    network in clear."""
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        return "a wss://host[:port]/path URL with a valid port"
    if parts.scheme == "wss" and parts.hostname:
        return None
    if parts.scheme == "ws" and parts.hostname and is_loopback(parts.hostname):
        return None
    return ("a wss:// URL (ws:// sends the bearer token in clear, so it is accepted only for a "
            "loopback test peer: 127.0.0.1, ::1 or localhost)")


def is_loopback(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: where a clear-text or unauthenticated listener is acceptable."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class UplinkSection:
    url: str = field(metadata={"check": _check_uplink_url})
    token_file: Path
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    batch_max: int = field(default=200, metadata={
        "check": lambda v: _check(1 <= v <= 10_000, "between 1 and 10000 events per frame")})
    window: int = field(default=8, metadata={
        "check": lambda v: _check(1 <= v <= 1024, "between 1 and 1024 frames in flight")})
    heartbeat_s: float = field(default=10.0, metadata={
        "check": lambda v: _check(0 < v <= 3600, "between 0 and 3600 seconds (not 0)")})
    dead_after_s: float = field(default=30.0, metadata={
        "check": lambda v: _check(0 < v <= 3600, "between 0 and 3600 seconds (not 0)")})
    backoff_initial_s: float = field(default=0.5, metadata={
        "check": lambda v: _check(0 < v <= 3600, "between 0 and 3600 seconds (not 0)")})
    backoff_max_s: float = field(default=30.0, metadata={
        "check": lambda v: _check(0 < v <= 86_400, "between 0 and 86400 seconds (not 0)")})
    # One deadline over TCP, TLS, upgrade and hello -> welcome; and the wait after a refusal.
    connect_timeout_s: float = field(default=10.0, metadata={
        "check": lambda v: _check(1 <= v <= 120, "between 1 and 120 s")})
    rejected_backoff_s: float = field(default=300.0, metadata={
        "check": lambda v: _check(5 <= v <= 3600, "between 5 and 3600 s")})
    # Connected but nothing acknowledged while events wait this long: reported "frozen".
    frozen_after_s: float = 10.0

    def __post_init__(self) -> None:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError("uplink.backoff_max_s", f"expected at least backoff_initial_s "
                              f"({self.backoff_initial_s:g}), got {self.backoff_max_s:g}")
        if self.dead_after_s <= self.heartbeat_s:
            raise ConfigError("uplink.dead_after_s", f"expected more than heartbeat_s "
                              f"({self.heartbeat_s:g}): a pong must have time to come back, "
                              f"got {self.dead_after_s:g}")


COMMAND_NAMES = ("disableMachine", "enableMachine", "requestMeters", "setClock",
                 "remoteHandpayReset", "acknowledgeAlert")


@dataclass(frozen=True, slots=True)
class CommandsSection:
    """Which commands the platform (and floor supervisors) may run here; others are rejected
    and audited."""

    allowed: tuple[str, ...] = field(default=("acknowledgeAlert", "requestMeters"), metadata={
        "check": lambda v: _check(set(v) <= set(COMMAND_NAMES),
                                  "a list of: " + ", ".join(COMMAND_NAMES))})


@dataclass(frozen=True, slots=True)
class LogSection:
    level: str = field(default="info", metadata={"check": lambda v: _check(
        v in ("debug", "info", "warning", "error"), "one of debug, info, warning, error")})
    format: str = field(default="auto", metadata={"check": lambda v: _check(
        v in ("auto", "json", "console"), "one of auto, json, console")})


def _check_token_hash(digest: str) -> str | None:
    from gateway.tokens import is_weak_token_hash

    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        return "64 lowercase hex digits (as printed by: casino-gateway tokens new)"
    if is_weak_token_hash(digest):
        return ("the hash of a strong token: this one is a well-known weak token; make one "
                "with: casino-gateway tokens new --role ROLE")
    return None


@dataclass(frozen=True, slots=True)
class FeedTokenSection:
    """One staff token: who holds it, their role, and the SHA-256 (hex) of the token itself.
    Only the hash is configured, so the file does not hold a usable secret."""

    name: str
    sha256: str = field(metadata={"check": lambda v: _check_token_hash(v)})
    role: str = field(default="viewer", metadata={"check": lambda v: _check(
        v in ("viewer", "attendant", "supervisor"), "one of viewer, attendant, supervisor")})


def _zone_exists(name: str) -> bool:
    import zoneinfo
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


@dataclass(frozen=True, slots=True)
class FeedSection:
    """The local staff feed and alert page (gateway/feed, docs/feed-protocol.md)."""

    host: str = "127.0.0.1"
    port: int = field(default=8080, metadata={
        "check": lambda v: _check(0 <= v <= 65535, "a TCP port 0-65535")})
    certfile: Path | None = None
    keyfile: Path | None = None
    allowed_origins: tuple[str, ...] = ()
    max_message_bytes: int = field(default=65536, metadata={
        "check": lambda v: _check(1024 <= v <= 16_777_216, "between 1024 and 16777216")})
    client_queue: int = field(default=1000, metadata={
        "check": lambda v: _check(10 <= v <= 1_000_000, "between 10 and 1000000")})
    auth_failures_per_minute: int = field(default=10, metadata={
        "check": lambda v: _check(1 <= v <= 10_000, "between 1 and 10000")})
    auth_timeout_s: float = field(default=10.0, metadata={
        "check": lambda v: _check(0 < v <= 300, "between 0 and 300 seconds")})
    replay_max: int = field(default=10_000, metadata={
        "check": lambda v: _check(1 <= v <= 1_000_000, "between 1 and 1000000")})
    history_events: int = field(default=50_000, metadata={
        "check": lambda v: _check(0 <= v <= 10_000_000, "between 0 and 10000000")})
    degraded_depth: int = field(default=10_000, metadata={
        "check": lambda v: _check(v >= 1, "at least 1")})
    # The board's clock (IANA name, e.g. "America/Chicago"; "" = the tablet's own zone) and how
    # long a login on a shared tablet lasts.
    time_zone: str = field(default="", metadata={"check": lambda v: _check(
        v == "" or _zone_exists(v), "an IANA time zone name such as Europe/London")})
    session_max_s: float = field(default=8 * 3600, metadata={
        "check": lambda v: _check(60 <= v <= 7 * 86400, "between 60 s and 7 days")})
    tokens: tuple[FeedTokenSection, ...] = ()

    def __post_init__(self) -> None:
        if (self.certfile is None) != (self.keyfile is None):
            raise ConfigError("feed.keyfile" if self.keyfile is None else "feed.certfile",
                              "certfile and keyfile go together: set both or neither")
        names = [t.name for t in self.tokens]
        for i, name in enumerate(names):
            if names.index(name) != i:
                raise ConfigError(f"feed.tokens[{i}].name", f"duplicate token name {name!r}")
        hashes = [t.sha256 for t in self.tokens]
        for i, digest in enumerate(hashes):
            if hashes.index(digest) != i:
                raise ConfigError(f"feed.tokens[{i}].sha256",
                                  "the same token is configured twice")


@dataclass(frozen=True, slots=True)
class MonitorSection:
    """/health and /metrics on their own listener (gateway/monitor.py, docs/operations.md)."""

    host: str = "127.0.0.1"
    port: int = field(default=9464, metadata={
        "check": lambda v: _check(0 <= v <= 65535, "a TCP port 0-65535")})
    token_file: Path | None = None   # required when host is not loopback
    uplink_down_s: float = 60.0      # /health: degraded when the uplink is down longer
    undelivered_s: float = 300.0     # ... or the oldest undelivered event is older
    degraded_depth: int = field(default=10_000, metadata={
        "check": lambda v: _check(v >= 1, "at least 1")})


@dataclass(frozen=True, slots=True)
class Config:
    gateway: GatewaySection
    uplink: UplinkSection
    ports: tuple[PortSection, ...] = ()
    outbox: OutboxSection = OutboxSection()
    commands: CommandsSection = CommandsSection()
    log: LogSection = LogSection()
    feed: FeedSection | None = None
    monitor: MonitorSection | None = None

    @property
    def outbox_path(self) -> Path:
        return self.outbox.path or self.gateway.state_dir / "outbox.db"


def _describe(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             Path: "a path (string)"}
    if tp in names:
        return names[tp]
    return str(tp)


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(value, options[0], where)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(where, f"expected a list, got {value!r}")
        return tuple(_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(where, f"expected a table, got {value!r}")
        return _build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(where, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(where, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(where, f"expected a number, got {value!r}")
        return float(value)
    if tp in (str, Path):
        if not isinstance(value, str) or not value:
            raise ConfigError(where, f"expected {_describe(tp)}, got {value!r}")
        return tp(value)
    raise ConfigError(where, f"unsupported type {tp}")  # a bug in this module's declarations


class ConfigProblems(ConfigError):
    """Several fields are wrong at once: `problems` holds one ConfigError per field, so an
    operator fixes them all in one pass (`field` and the message are the first one's)."""

    def __init__(self, problems: list[ConfigError]) -> None:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(first.field, str(first).removeprefix(f"{first.field}: ") + more)
        self.problems = tuple(problems)


def problems_of(err: ConfigError) -> tuple[ConfigError, ...]:
    """Every problem an error stands for, one per line to print."""
    return err.problems if isinstance(err, ConfigProblems) else (err,)


def _build(cls: Any, table: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    problems: list[ConfigError] = []
    for key in table:
        if key not in known:
            problems.append(ConfigError(f"{prefix}.{key}".lstrip("."), f"unknown field "
                                        f"(expected one of: {', '.join(sorted(known))})"))
    kwargs = {}
    for name, f in known.items():
        where = f"{prefix}.{name}".lstrip(".")
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(ConfigError(where, "required field is missing"))
            continue
        try:
            value = _convert(table[name], hints[name], where)
        except ConfigError as err:
            problems += problems_of(err)
            continue
        check = f.metadata.get("check")
        if check is not None and (problem := check(value)) is not None:
            problems.append(ConfigError(where, f"expected {problem}, got {table[name]!r}"))
            continue
        kwargs[name] = value
    if problems:
        raise problems[0] if len(problems) == 1 else ConfigProblems(problems)
    return cls(**kwargs)


def parse_config(table: dict[str, Any], *, base_dir: Path | None = None) -> Config:
    """Validate a parsed TOML table. Relative paths are taken relative to `base_dir`."""
    config = _build(Config, table, "")
    problems: list[ConfigError] = []
    names = [p.name for p in config.ports]
    for i, name in enumerate(names):
        if names.index(name) != i:
            problems.append(ConfigError(f"ports[{i}].name", f"duplicate port name {name!r}"))
    for i, port in enumerate(config.ports):
        for j, address in enumerate(port.addresses):
            if not 1 <= address <= 127:
                problems.append(ConfigError(f"ports[{i}].addresses[{j}]",
                                            f"expected a SAS address 1-127, got {address}"))
    monitor = config.monitor
    if monitor is not None and monitor.token_file is None and not is_loopback(monitor.host):
        problems.append(ConfigError("monitor.token_file", f"required when monitor.host "
                                    f"({monitor.host}) is not loopback: /health and /metrics "
                                    "are not for everyone"))
    if problems:
        raise problems[0] if len(problems) == 1 else ConfigProblems(problems)
    if base_dir is not None:
        config = _resolve_paths(config, base_dir)
    return config


def _resolve_paths(obj: Any, base: Path) -> Any:
    if isinstance(obj, Path):
        return obj if obj.is_absolute() else base / obj
    if isinstance(obj, tuple):
        return tuple(_resolve_paths(v, base) for v in obj)
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{  # type: ignore[type-var]
            f.name: _resolve_paths(getattr(obj, f.name), base) for f in dataclasses.fields(obj)})
    return obj


def load_config(path: Path) -> Config:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError("", f"cannot read configuration file {path}: {err.strerror}") from None
    try:
        table = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError("", f"{path} is not valid TOML: {err}") from None
    return parse_config(table, base_dir=path.parent.resolve())
