"""`casino-gateway diag`: what a technician runs to find why machine 14 is silent.

    diag [--watch [S]] [--json]       per port and machine: state, serial, last answer, latency,
                                      timeouts, CRC errors, NACKs, last event, why it is down;
                                      outbox, uplink, key
    diag --check                      one line for monitoring, Nagios plugin exit codes:
                                      0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN
    diag trace PORT [--count N]       every poll and answer on PORT, live
    diag probe --device DEV [-a A]    with the gateway stopped: the port's protocol probe (SAS:
                                      sync, LP 1F, 54, 1A and meters), with timings and what a
                                      failure usually means
    diag ports [--json]               serial ports on this machine (pyserial), their stable
                                      /dev/serial/by-id and by-path names, USB serial numbers,
                                      and which configured port uses each

The first two talk to the running daemon over its control socket (gateway/control.py); `probe`
opens the serial port itself, through the protocol's `DriverSpec.probe` (drivers/registry.py);
`ports` opens nothing (gateway/serialports.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import trio

from drivers import registry
from drivers.registry import ProbeRequest, RestartJournal
from gateway.config import Config, load_config
from gateway.control import RUN_DIR_SOCKET
from gateway.daemon import format_duration
from gateway.errors import EXIT_FAILURE, ConfigError
from gateway.statistics import MACHINE, device_label, device_of, device_word
from gateway.terminal import sanitize, scrub

__all__ = ["ControlClientError", "GatewayNotRunningError", "add_commands", "assess",
           "fetch_status", "machine_why", "port_why", "render_check", "render_probe",
           "render_status"]

DEFAULT_SOCKET = RUN_DIR_SOCKET
EXIT_INTERRUPTED = 130
DEFAULT_CONFIG = Path("/etc/casino-gateway/gateway.toml")


class ControlClientError(Exception):
    """The control socket cannot be used; the message says why in plain words."""


class GatewayNotRunningError(ControlClientError):
    """Nothing serves the control socket: the gateway is stopped (CRITICAL for monitoring,
    where a permission problem is UNKNOWN)."""


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `diag` (status, trace, probe) to the gateway CLI."""
    p = subparsers.add_parser("diag", help="status table, live poll trace, port probe",
                              description=__doc__.split("\n\n")[1] if __doc__ else None,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    _socket_options(p, argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the raw snapshot as JSON")
    p.add_argument("--watch", type=float, nargs="?", const=2.0, default=None, metavar="SECONDS",
                   help="refresh in place every SECONDS (default 2); Ctrl-C exits 130")
    p.add_argument("--check", action="store_true",
                   help="monitoring: one status line and Nagios plugin exit codes (0 OK, "
                        "1 WARNING, 2 CRITICAL, 3 UNKNOWN)")
    p.add_argument("--uplink-warning", type=float, default=120.0, metavar="SECONDS",
                   help="--check: uplink down this long is a WARNING (default 120)")
    p.add_argument("--uplink-critical", type=float, default=900.0, metavar="SECONDS",
                   help="--check: uplink down this long is CRITICAL (default 900)")
    p.set_defaults(func=_cmd_status, socket=None, config=None)
    sub = p.add_subparsers(dest="diag_command", metavar="{trace,probe,ports}")

    t = sub.add_parser("trace", help="stream decoded polls and answers of one port")
    t.add_argument("port", help="port name from the configuration, e.g. port1")
    t.add_argument("--count", type=int, default=None, help="stop after this many frames")
    t.add_argument("--json", action="store_true", help="one JSON object per frame")
    _socket_options(t, argparse.SUPPRESS)
    t.set_defaults(func=_cmd_trace)

    q = sub.add_parser("probe", help="probe one machine with the gateway stopped")
    q.add_argument("--device", required=True, help="serial device, e.g. /dev/ttyS0")
    q.add_argument("--address", "-a", type=int, default=1, help="SAS address (default 1)")
    q.add_argument("--protocol", choices=registry.protocols(), default=None,
                   help="the device's protocol (default: its configured port's, else "
                        f"{registry.DEFAULT_PROTOCOL})")
    q.add_argument("--link", choices=["auto", "serial", "pty"], default="auto",
                   help="auto: a pseudo-terminal uses byte-encoded wakeups, a real port "
                        "mark/space parity")
    q.add_argument("--timeout-ms", type=int, default=200,
                   help="wait this long for each answer (default 200)")
    q.add_argument("--json", action="store_true", help="print the report as JSON")
    q.add_argument("--force", action="store_true",
                   help="probe even though a gateway answers on the control socket, or "
                        "without the port's poll journal (a device that is locked by a "
                        "running gateway is never probed)")
    q.add_argument("--spacing-ms", type=int, default=200,
                   help="minimum time between two polls to one machine (default 200, the "
                        "SAS poll interval; 40 for machines that allow fast polling)")
    _socket_options(q, argparse.SUPPRESS)
    q.set_defaults(func=_cmd_probe)

    s = sub.add_parser("ports", help="serial ports here, their stable names and USB serials")
    s.add_argument("--json", action="store_true", help="print the list as JSON")
    _socket_options(s, argparse.SUPPRESS)
    s.set_defaults(func=_cmd_ports)


def _socket_options(p: argparse.ArgumentParser, default: Any) -> None:
    p.add_argument("--socket", type=Path, default=default,
                   help=f"the daemon's control socket (default {DEFAULT_SOCKET})")
    p.add_argument("--config", type=Path, default=default,
                   help="take the control socket path from this configuration file")


def socket_path(args: argparse.Namespace) -> Path:
    if args.socket is not None:
        return Path(args.socket)
    config = args.config
    if config is None:
        # The installed configuration, if this user may read it; else the unit's default.
        try:
            section = load_config(DEFAULT_CONFIG).gateway
        except ConfigError:
            return DEFAULT_SOCKET
    else:
        section = load_config(Path(config)).gateway
    if section.control_socket is not None:
        return section.control_socket
    # The daemon's default depends on how it was started: systemd's RuntimeDirectory, or the
    # state directory when run by hand.
    candidates = [DEFAULT_SOCKET, section.state_dir / "control.sock"]
    return next((c for c in candidates if c.exists()), candidates[0])


# -- talking to the daemon -------------------------------------------------------------------------

class _Lines:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buf = b""

    async def next(self) -> dict[str, Any] | None:
        while b"\n" not in self._buf:
            data = await self.stream.receive_some(65536)
            if not data:
                return None
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)


async def _connect(path: Path) -> trio.SocketStream:
    try:
        with trio.fail_after(5):
            return await trio.open_unix_socket(str(path))
    except FileNotFoundError:
        raise GatewayNotRunningError(f"the gateway is not running (no control socket at {path})")
    except ConnectionRefusedError:
        raise GatewayNotRunningError(f"the gateway is not running (nothing answers on {path}; the "
                                 "socket was left by a gateway that stopped abruptly)")
    except PermissionError:
        raise ControlClientError(
            f"permission denied on {path}: diag must run as the service user or a member of "
            "its group (sudo usermod -aG casino-gateway $USER, then log in again)")
    except trio.TooSlowError:
        raise ControlClientError(f"the gateway did not accept a connection on {path} within 5 s")


async def fetch_status(path: Path) -> dict[str, Any]:
    stream = await _connect(path)
    async with stream:
        with trio.fail_after(10):
            await stream.send_all(b'{"cmd": "status"}\n')
            reply = await _Lines(stream).next()
    if reply is None:
        raise ControlClientError("the gateway closed the control connection without answering")
    if not reply.get("ok"):
        raise ControlClientError(f"the gateway refused: {reply.get('error')}")
    status: dict[str, Any] = reply["status"]
    return status


async def _trace(path: Path, port: str, count: int | None, out: TextIO, as_json: bool) -> int:
    stream = await _connect(path)
    async with stream:
        lines = _Lines(stream)
        with trio.fail_after(10):
            await stream.send_all(json.dumps({"cmd": "trace", "port": port}).encode() + b"\n")
            head = await lines.next()
        if head is None or not head.get("ok"):
            error = "no answer" if head is None else head.get("error")
            raise ControlClientError(f"cannot trace: {error}")
        if as_json:
            print(json.dumps(head), file=out, flush=True)
        else:
            print(sanitize(f"tracing {port} ({head.get('device')}); Ctrl-C to stop"), file=out,
                  flush=True)
        seen = 0
        while count is None or seen < count:
            item = await lines.next()
            if item is None:
                print("the gateway closed the trace (stopping?)", file=sys.stderr)
                return EXIT_FAILURE
            if as_json:
                print(json.dumps(item), file=out, flush=True)
            elif "dropped" in item:
                print(f"... {item['dropped']} frames dropped (this terminal is too slow)",
                      file=out, flush=True)
            else:
                print(format_frame(item["frame"]), file=out, flush=True)
            seen += "frame" in item
    return 0


def format_frame(frame: dict[str, Any]) -> str:
    frame = scrub(frame)
    clock = datetime.fromtimestamp(frame["t"]).strftime("%H:%M:%S.%f")[:-3]
    arrow = "->" if frame["dir"] == "tx" else "<-"
    return f"{clock} {arrow} {frame['hex']:<24} {frame['text']}"


# -- rendering -------------------------------------------------------------------------------------

def _dash(value: Any, fmt: Callable[[Any], str] = str) -> str:
    return "-" if value is None else fmt(value)


def _ago(seconds: float | None) -> str:
    return "-" if seconds is None else f"{format_duration(seconds)} ago"


def _bytes(n: int | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def render_status(s: dict[str, Any]) -> str:
    s = scrub(s)
    g = s["gateway"]
    out = [f"gateway {g['id']}  version {g['version']}  pid {g['pid']}  "
           f"up {format_duration(g['uptime_s'] or 0)}  "
           f"watchdog {'ok' if g['watchdog']['alive'] else 'WITHHELD (outbox stalled)'}",
           f"status  {g['status']}", ""]
    rows = [["PORT", "ADDR", "KIND", "STATE", "SERIAL", "ASSET", "LAST ANSWER", "P50 ms", "P99 ms",
             "POLLS", "TIMEOUTS", "CRC", "NACKS", "LAST EVENT", "WHY"]]
    for name, port in s["ports"].items():
        for m in port["machines"]:
            last = m["last_event"]
            rows.append([
                name, str(m["address"]), device_word(device_of(m)), m["state"], _dash(m["serial"]),
                _dash(m["asset"]),
                _ago(m["last_response_age_s"]), _dash(m["latency_p50_ms"], lambda v: f"{v:.1f}"),
                _dash(m["latency_p99_ms"], lambda v: f"{v:.1f}"), str(m["polls"]),
                str(m["timeouts"]), str(m["crc_errors"]), str(m["nacks"]),
                "-" if last is None else f"{last['type']} ({_ago(last['age_s'])})",
                machine_why(port, m) or "-"])
    out += _table(rows)
    out.append("")
    out += _table([["PORT", "DEVICE", "DRIVER", "RESTARTS", "WHY"]] + [
        [name, p["device"], p["state"], str(p["failures"]), port_why(p) or "-"]
        for name, p in s["ports"].items()])
    out += _outbox_lines(s["outbox"])
    u = s["uplink"]
    state = (f"up since {_clock(u['since'])}" if u["connected"]
             else f"{u['state']}, down {format_duration(u['down_for_s'] or 0)}")
    out += [f"uplink  {state}  {u['url']}",
            f"        last ack seq {_dash(u['last_ack_seq'])}, lag {u['lag_events']:,} events"
            f" / {_dash(u['lag_s'], format_duration)}, reconnects {u['reconnects']}"
            + (f", last error: {u['last_error']}" if u.get("last_error") else "")]
    k = s["key"]
    out += [f"key     {k['kid']}  fingerprint {k['fingerprint']}"]
    r = s.get("reconciliation")
    if r:  # docs/reconciliation.md
        out.append(f"meters  {r['windows']:,} windows; " + ("; ".join(
            f"{m} does not add up ({', '.join(meters)})" for m, meters in r["open"].items())
            or "all add up"))
    return "\n".join(out)


def _outbox_lines(o: dict[str, Any]) -> list[str]:
    """The outbox part of `diag status`: queue, disk and how long an outage it can hold, epoch."""
    hours = o["outage_hours_left"]
    capacity = ("no events lately, so no estimate" if hours is None
                else f"{hours:,.1f} h of outage at {o['events_per_s']:.2f} events/s")
    out = ["",
           f"outbox  {o['depth']:,} queued (delivered {o['delivered_seq']:,} of "
           f"{o['last_seq']:,}), oldest undelivered {_ago(o['oldest_undelivered_age_s'])}",
           f"        disk free {_bytes(o['disk_free_bytes'])}, outbox {_bytes(o['db_bytes'])} "
           f"(~{_dash(o['bytes_per_event'])} B/event): {capacity}"]
    if o.get("intake_stopped"):
        out.append("        DISK FULL: intake stopped; machines hold their events until space "
                   "is freed (see docs/operations.md)")
    if o.get("error"):
        out.append(f"        cannot read the outbox file: {o['error']}")
    if o.get("epoch"):
        change = o.get("epoch_change")
        out.append(f"        epoch {o['epoch']}, witness {o.get('witness')}, "
                   f"{o.get('quarantined', 0)} rows quarantined" + (
                       "" if not change else
                       f"; NEW EPOCH this start ({change['reason']}): epoch "
                       f"{change['previous_epoch']} seqs {change['first_missing']}.."
                       f"{change['last_missing']} are gone from this outbox"))
    return out


def port_why(port: dict[str, Any]) -> str | None:
    """Why a port's driver is not polling, in words (None while it runs)."""
    if port["state"] == "running":
        return None
    error = port.get("last_error")
    if error:
        return f"{error} (retrying)"
    return "starting" if port["state"] == "idle" else "stopped (retrying)"


def machine_why(port: dict[str, Any], m: dict[str, Any]) -> str | None:
    """Why a machine or another device is not online, in words (None while it is)."""
    if m["state"] == "online":
        return None
    if port["state"] != "running":
        return "port down: " + (port_why(port) or "")
    if device_of(m) != MACHINE:  # not polled: its line is open or not
        return m.get("offline_reason") or "its line is closed: unplugged or cable"
    if m["state"] != "offline":
        return None  # not polled yet: the port just started
    if m["last_response_age_s"] is None:
        return ("never answered: cabling, SAS address or adapter parity "
                "(diag probe with the gateway stopped)")
    if m["crc_errors"] and m["crc_errors"] >= m["timeouts"]:
        return "garbled answers (CRC errors): noise, cable or baud/parity"
    return f"no answer for {format_duration(m['last_response_age_s'])}: machine off, cable or address"


OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
NAGIOS = ("OK", "WARNING", "CRITICAL", "UNKNOWN")


def assess(s: dict[str, Any], *, uplink_warning_s: float = 120.0,
           uplink_critical_s: float = 900.0) -> tuple[int, list[str]]:
    """A status snapshot judged for monitoring: (Nagios code, one line per problem, worst
    first). CRITICAL: nothing polled, outbox stalled, disk full, uplink down past the critical
    limit. WARNING: a port or machine down, the outbox unreadable, the uplink down a while."""
    found: list[tuple[int, str]] = []
    everything = [(name, p, m) for name, p in s["ports"].items() for m in p["machines"]]
    machines = [(name, p, m) for name, p, m in everything if device_of(m) == MACHINE]
    online = sum(m["state"] == "online" for _, _, m in machines)
    for name, port in s["ports"].items():
        why = port_why(port)
        if why is not None and (port["state"] != "idle" or port.get("last_error")):
            kinds = {device_of(m) for m in port["machines"]}  # a port of another kind of device
            what = device_word(kinds.pop()) if kinds and MACHINE not in kinds else "port"
            found.append((WARNING, f"{what} {name} down: {why}"))
    for name, port, m in everything:
        why = machine_why(port, m)
        if why is not None and not why.startswith("port down"):
            label = device_label(name, m["address"], device_of(m), m.get("figures", {}).get(
                "machine"))
            found.append((WARNING, f"{label} offline: {why}"))
    polled = any(m["state"] != "not polled yet" for _, _, m in machines)
    if machines and online == 0 and polled:
        found.append((CRITICAL, f"no machine online (0/{len(machines)})"))
    watchdog = s["gateway"]["watchdog"]
    if not watchdog["alive"]:
        found.append((CRITICAL, f"outbox stalled {watchdog['oldest_in_flight_s']:.0f}s: "
                                "events do not become durable (disk?)"))
    o = s["outbox"]
    if o.get("intake_stopped"):
        found.append((CRITICAL, "disk full: outbox intake stopped, machines hold their events"))
    if o.get("error"):
        found.append((WARNING, f"cannot read the outbox file: {o['error']}"))
    u = s["uplink"]
    down = u.get("down_for_s")
    if not u["connected"] and down is not None and down >= uplink_warning_s:
        level = CRITICAL if down >= uplink_critical_s else WARNING
        found.append((level, f"uplink down {format_duration(down)} ({u['state']})"
                             + (f": {u['last_error']}" if u.get("last_error") else "")))
    found.sort(key=lambda item: -item[0])
    return max((level for level, _ in found), default=OK), [text for _, text in found]


def render_check(s: dict[str, Any], code: int, problems: list[str]) -> str:
    """Nagios plugin output: status line with performance data, then one line per problem."""
    by_kind: dict[str, list[dict[str, Any]]] = {MACHINE: []}  # each kind of device apart
    for m in (m for p in s["ports"].values() for m in p["machines"]):
        by_kind.setdefault(device_of(m), []).append(m)
    u, o = s["uplink"], s["outbox"]
    summary = s["gateway"]["status"] if not problems else f"{problems[0]}; {s['gateway']['status']}"
    counts = [(("" if kind == MACHINE else device_word(kind, True).replace(" ", "_") + "_")
               + f"online={sum(m['state'] == 'online' for m in ms)};;;0;{len(ms)} ")
              for kind, ms in by_kind.items()]
    perf = (f"{''.join(counts)}queued={o['depth']};;;0 "
            f"uplink_down_s={0 if u['connected'] else round(u.get('down_for_s') or 0)}s;;;0")
    # Each line sanitized: a newline in a platform error must not forge a line of the output.
    return "\n".join(map(sanitize, [f"CASINO-GATEWAY {NAGIOS[code]} - {summary} | {perf}",
                                    *problems[1:]]))


def _clock(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


async def _check(path: Path, args: argparse.Namespace, out: TextIO) -> int:
    try:
        status = await fetch_status(path)
        code, problems = assess(status, uplink_warning_s=args.uplink_warning,
                                uplink_critical_s=args.uplink_critical)
        text = render_check(status, code, problems)
    except GatewayNotRunningError as err:
        print(f"CASINO-GATEWAY CRITICAL - {sanitize(str(err))}", file=out)
        return CRITICAL
    except (ControlClientError, OSError, ValueError, KeyError, TypeError,
            trio.TooSlowError) as err:
        # A monitoring check never ends in a traceback: whatever made no sense is UNKNOWN.
        print(f"CASINO-GATEWAY UNKNOWN - {type(err).__name__}: {sanitize(str(err))}", file=out)
        return UNKNOWN
    print(text, file=out)
    return code


async def _status(path: Path, as_json: bool, watch: float | None, out: TextIO) -> int:
    while True:
        status = await fetch_status(path)
        text = json.dumps(status, indent=None if watch else 2) if as_json else render_status(status)
        if watch is not None and out.isatty():
            # Home + clear to the end of screen: the table is redrawn in place.
            out.write("\x1b[H\x1b[J" + text + f"\n\n(every {watch:g}s; Ctrl-C to stop)\n")
        else:
            out.write(text + "\n")
        out.flush()
        if watch is None:
            return 0
        await trio.sleep(watch)


# -- probe -----------------------------------------------------------------------------------------

def render_probe(report: dict[str, Any]) -> str:
    report = scrub(report)
    out = [f"probe {report['device']} address {report['address']}"]
    if "error" in report:
        out.append(f"  cannot open: {report['error']}")
    else:
        out.append(f"  opened in {report['opened_ms']} ms")
        rows = [["POLL", "WHAT", "RESULT", "MS", "TRIES", "DATA"]]
        for s in report["steps"]:
            data = ", ".join(f"{k}={v}" for k, v in s.get("data", {}).items())
            rows.append([s["poll"], s["what"], s["result"], _dash(s.get("latency_ms")),
                         str(s.get("attempts", "-")), data])
        out += ["  " + line for line in _table(rows)]
    for advice in report["advice"]:
        out.append(f"  ! {advice}")
    out.append("  OK: the machine answers" if report["ok"] else "  FAILED: see above")
    return "\n".join(out)


# -- commands --------------------------------------------------------------------------------------

def _run(fn: Callable[[], Any]) -> int:
    try:
        result: int = trio.run(fn)
    except ControlClientError as err:
        print(f"casino-gateway diag: {sanitize(str(err))}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED  # --watch and trace end with Ctrl-C (docs/operations.md)
    return result


def _cmd_status(args: argparse.Namespace) -> int:
    if args.check:
        if args.watch is not None or args.json:
            print("casino-gateway diag: --check is one line for monitoring; it does not go "
                  "with --watch or --json", file=sys.stderr)
            return 2
        try:
            path = socket_path(args)
        except ConfigError as err:
            print(f"CASINO-GATEWAY UNKNOWN - configuration error: {err}")
            return UNKNOWN
        try:
            return trio.run(_check, path, args, sys.stdout)
        except KeyboardInterrupt:
            return UNKNOWN
    path = socket_path(args)
    return _run(lambda: _status(path, args.json, args.watch, sys.stdout))


def _cmd_trace(args: argparse.Namespace) -> int:
    path = socket_path(args)
    return _run(lambda: _trace(path, args.port, args.count, sys.stdout, args.json))


def _cmd_probe(args: argparse.Namespace) -> int:
    if not args.force:
        path = socket_path(args)
        if trio.run(_gateway_running, path):
            print(f"casino-gateway diag: the gateway is running (it answers on {path}) and "
                  "polls the ports; stop it first (systemctl stop casino-gateway) or use --force",
                  file=sys.stderr)
            return EXIT_FAILURE
    try:
        protocol, journal = _probe_port(args)
    except ConfigError as err:
        print(f"casino-gateway diag: {err}", file=sys.stderr)
        return EXIT_FAILURE
    spec = registry.get(protocol)
    if spec.probe is None:
        print(f"casino-gateway diag: the {protocol} driver has no probe", file=sys.stderr)
        return EXIT_FAILURE
    request = ProbeRequest(args.device, args.address, link=args.link,
                           timeout_s=args.timeout_ms / 1000, spacing_s=args.spacing_ms / 1000,
                           journal=journal)
    probe = spec.probe
    try:
        report = trio.run(lambda: probe(request))
    finally:
        if journal is not None:
            journal.close()
    print(json.dumps(report) if args.json else render_probe(report))
    return 0 if report["ok"] else EXIT_FAILURE


def _cmd_ports(args: argparse.Namespace) -> int:
    """`diag ports`: what pyserial finds, marked with the configured port using each device."""
    from gateway.serialports import discover, render_ports

    try:
        config = load_config(Path(args.config) if args.config is not None else DEFAULT_CONFIG)
        configured = {os.path.realpath(p.device): p.name for p in config.ports}
    except ConfigError:
        if args.config is not None:
            raise
        configured = {}  # no readable configuration: list the ports all the same
    text = render_ports(discover(), configured=configured, as_json=args.json)
    # JSON escapes control characters itself; a line of text is made safe line by line.
    print(text if args.json else "\n".join(map(sanitize, text.splitlines())))
    return 0


def _probe_port(args: argparse.Namespace) -> tuple[str, RestartJournal | None]:
    """The protocol and restart journal of the configured port on `args.device` (`--protocol`
    or the default and no journal: no such port). The probe records its frames in the journal
    too, so the gateway resumes from the probe's last frame."""
    path = Path(args.config) if args.config is not None else DEFAULT_CONFIG
    try:
        config: Config | None = load_config(path)
    except ConfigError as err:
        if args.config is not None:
            raise
        config = None
        if path.exists() and not args.force:
            raise ConfigError("", f"cannot read {path} ({err}) to find this port's poll "
                                  "journal: run diag as the service user (sudo -u "
                                  "casino-gateway ...), or --force to probe without it")
    default = args.protocol or registry.DEFAULT_PROTOCOL
    if config is None:
        return default, None
    real = os.path.realpath(args.device)
    port = next((p for p in config.ports if os.path.realpath(p.device) == real), None)
    if port is None:
        return default, None
    protocol = args.protocol or port.protocol
    try:
        return protocol, registry.get(protocol).open_journal(config.gateway.state_dir, port.name)
    except OSError as err:
        if args.force:
            return protocol, None
        raise ConfigError("", f"cannot open the poll journal of {port.name}: {err}: run diag "
                              "as the service user (sudo -u casino-gateway ...), or --force "
                              "to probe without it") from None


async def _gateway_running(path: Path) -> bool:
    try:
        stream = await _connect(path)
    except ControlClientError:
        return False
    await stream.aclose()
    return True

