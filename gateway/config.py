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

from drivers import registry
from gateway.errors import ConfigError

__all__ = ["CommandsSection", "Config", "ConfigProblems", "FeedSection", "FeedTokenSection",
           "GatewaySection", "LogSection", "MonitorSection", "OutboxSection", "PortSection",
           "UplinkSection", "load_config", "parse_config", "problems_of", "settings_for"]

GATEWAY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _check(cond: bool, message: str) -> str | None:
    return None if cond else message


def settings_for(section: Any, target: Any, *, skip: tuple[str, ...] = (), **given: Any) -> Any:
    """`target` (a dataclass) built from a configuration section by name: each of its fields
    takes the section's field or property of that name (unit conversions are properties of the
    section, e.g. `OutboxSection.commit_interval_s`), or a value in `given`. No field is copied
    by hand, so two settings cannot be swapped on the way; and every field of the section must
    land somewhere (a target field, or `skip` for what `given` or a property carries), so a new
    key cannot be parsed and then ignored."""
    names = {f.name for f in dataclasses.fields(target)}
    ignored = sorted({f.name for f in dataclasses.fields(section)} - names - set(skip))
    if ignored:
        raise TypeError(f"{type(section).__name__} fields {ignored} reach no field of "
                        f"{target.__name__}")
    taken = {n: getattr(section, n) for n in names - set(given) if hasattr(section, n)}
    return target(**taken, **given)


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
    """One `[[ports]]` table: the fields every protocol has, and `settings`, the protocol's own
    section (its keys sit in the same table; `DriverSpec.settings`, drivers/registry.py)."""

    name: str
    device: Path
    addresses: tuple[int, ...] = (1,)
    protocol: str = field(default=registry.DEFAULT_PROTOCOL, metadata={
        "check": lambda v: _check(v in registry.protocols(),
                                  "one of " + ", ".join(registry.protocols()))})
    # Not a key of its own: built from the table's other keys (`_build_port`).
    settings: Any = field(default=None, metadata={"table": False})

    def __post_init__(self) -> None:
        if self.settings is None:
            object.__setattr__(self, "settings", registry.get(self.protocol).settings())

    @classmethod
    def of(cls, name: str, device: Path, addresses: tuple[int, ...] = (1,), *,
           protocol: str = registry.DEFAULT_PROTOCOL, **settings: Any) -> PortSection:
        """A port with its protocol's settings given by name, checked as in a file."""
        table = {"name": name, "device": str(device), "addresses": list(addresses),
                 "protocol": protocol, **settings}
        port: PortSection = _build_port(table, f"ports[{name}]")
        return dataclasses.replace(port, device=device)

    def driver_config(self) -> registry.PortConfig:
        """What the port's driver gets (drivers/registry.py)."""
        return registry.PortConfig(self.name, self.device, self.addresses, self.settings)


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
    droppable_types: tuple[str, ...] = field(default=(), metadata={
        "check": lambda v: _check_droppable(v)})

    @property
    def commit_interval_s(self) -> float:
        return self.commit_interval_ms / 1000


# Meter reads and the reconciliation's verdicts (docs/reconciliation.md).
_NEVER_SHED = frozenset({"meterSnapshot", "meterReconciled", "gamingDayClosed"})


def _check_droppable(types_: tuple[str, ...]) -> str | None:
    from gateway.events import CATALOGUE

    for name in types_:
        spec = CATALOGUE.get(name)
        if spec is None or spec.channel in ("system", "alerts"):
            return "event types of the game, cash or player channels (system and alert events " \
                   "are never shed)"
        if name in _NEVER_SHED:
            return f"{name} is never shed: meter reads are what the reconciliation rests on"
    return None


def _check_uplink_url(url: str | tuple[str, ...]) -> str | None:
    """wss:// anywhere; ws:// only to a loopback peer, since the bearer token would cross the
    network in clear. A list: one or more such URLs, in the order to try (P-FAILOVER-1)."""
    import urllib.parse

    if isinstance(url, tuple):
        if not 1 <= len(url) <= 16:
            return "one URL, or a list of 1 to 16 URLs"
        return next(filter(None, map(_check_uplink_url, url)), None)

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
    url: str | tuple[str, ...] = field(metadata={"check": _check_uplink_url})
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

    @property
    def urls(self) -> tuple[str, ...]:
        """The platform URLs in the order to try (`url` is one URL or a list)."""
        return (self.url,) if isinstance(self.url, str) else self.url

    def __post_init__(self) -> None:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError("uplink.backoff_max_s", f"expected at least backoff_initial_s "
                              f"({self.backoff_initial_s:g}), got {self.backoff_max_s:g}")
        if self.dead_after_s <= self.heartbeat_s:
            raise ConfigError("uplink.dead_after_s", f"expected more than heartbeat_s "
                              f"({self.heartbeat_s:g}): a pong must have time to come back, "
                              f"got {self.dead_after_s:g}")


def _check_commands(names: tuple[str, ...]) -> str | None:
    from gateway.commands import COMMAND_NAMES

    return _check(set(names) <= COMMAND_NAMES, "a list of: " + ", ".join(sorted(COMMAND_NAMES)))


@dataclass(frozen=True, slots=True)
class CommandsSection:
    """Which commands the platform (and floor supervisors) may run here; others are rejected
    and audited."""

    allowed: tuple[str, ...] = field(default=("acknowledgeAlert", "requestMeters"), metadata={
        "check": _check_commands})


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

    def __post_init__(self) -> None:
        if self.token_file is None and not is_loopback(self.host):
            raise ConfigError("monitor.token_file", f"required when monitor.host ({self.host}) "
                              "is not loopback: /health and /metrics are not for everyone")


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
        lists = [a for a in options if typing.get_origin(a) is tuple]
        return _convert(value, lists[0] if lists and isinstance(value, list) else options[0],
                        where)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(where, f"expected a list, got {value!r}")
        return tuple(_convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(where, f"expected a table, got {value!r}")
        return _build_port(value, where) if tp is PortSection else _build(tp, value, where)
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


def _build(cls: Any, table: dict[str, Any], prefix: str, *,
           also_known: frozenset[str] = frozenset()) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("table", True)}
    problems: list[ConfigError] = []
    for key in table:
        if key not in known and key not in also_known:
            problems.append(ConfigError(f"{prefix}.{key}".lstrip("."), f"unknown field "
                                        f"(expected one of: {', '.join(sorted({*known, *also_known}))})"))
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


def _build_port(table: dict[str, Any], where: str) -> PortSection:
    """A `[[ports]]` table: the generic fields, and the rest as the protocol's own settings,
    checked by the same rules (and the protocol's `check_port`), all problems at once."""
    problems: list[ConfigError] = []
    protocol = table.get("protocol", registry.DEFAULT_PROTOCOL)
    spec = registry.get(protocol) if protocol in registry.protocols() else None
    own = frozenset(f.name for f in dataclasses.fields(spec.settings)) if spec else frozenset()
    port: PortSection | None = None
    try:
        port = _build(PortSection, {k: v for k, v in table.items() if k not in own}, where,
                      also_known=own)
    except ConfigError as err:
        problems += problems_of(err)
    if spec is not None:
        try:
            settings = _build(spec.settings, {k: v for k, v in table.items() if k in own},
                              where)
        except ConfigError as err:
            problems += problems_of(err)
        else:
            if port is not None:
                port = dataclasses.replace(port, settings=settings)
                problems += [ConfigError(f"{where}.{field}", message)
                             for field, message in spec.check_port(port.driver_config())]
    if problems or port is None:
        raise problems[0] if len(problems) == 1 else ConfigProblems(problems)
    return port


def parse_config(table: dict[str, Any], *, base_dir: Path | None = None) -> Config:
    """Validate a parsed TOML table. Relative paths are taken relative to `base_dir`."""
    config = _build(Config, table, "")
    problems: list[ConfigError] = []
    names = [p.name for p in config.ports]
    for i, name in enumerate(names):
        if names.index(name) != i:
            problems.append(ConfigError(f"ports[{i}].name", f"duplicate port name {name!r}"))
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
