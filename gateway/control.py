"""The local control socket: what `casino-gateway diag` talks to (docs/operations.md, section 4a).

A Unix stream socket (default /run/casino-gateway/control.sock, in systemd's RuntimeDirectory),
created mode 0660 so only the service user and its group can connect. The protocol is one JSON
object per line in each direction:

    -> {"cmd": "status"}
    <- {"ok": true, "status": {...}}               one snapshot, see `snapshot()`
    -> {"cmd": "trace", "port": "port1"}
    <- {"ok": true, "trace": "port1", "device": "/dev/ttyS0"}
    <- {"frame": {"t": 1763700000.123, "dir": "tx", "hex": "81", "text": "GP to 1"}}
    <- ...                                         until the client hangs up
    -> {"cmd": "rotate-key"}                       root or the service user only
    <- {"ok": true, "rotated": {"old_kid": ..., "new_kid": ..., "seq": 812}}
    <- {"ok": false, "error": "..."}               any refused request

Tracing never slows a port: frames go to each subscriber through a bounded queue, and a subscriber
that falls behind loses frames (it is told how many with {"dropped": n}). With nobody tracing, the
cost per frame is one dictionary lookup.

Group members are trusted to read, not to send well-formed input or to behave: a request line is
parsed within gateway.bounded's budgets (`parse_request`), at most 16 connections are served at
once (8 per peer uid), one that sends no request within 10 s is closed, and running out of
descriptors backs off accepting instead of stopping the daemon (gateway/accepting.py).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import stat
import struct
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
import trio

import gateway
from drivers.model import machine_key
from drivers.registry import TraceDecoder
from gateway.accepting import serve_accepting, summarize_suppressed
from gateway.bounded import InputRejected, loads_json
from gateway.config import GatewaySection
from gateway.errors import ConfigError
from gateway.limits import Admission, LogThrottle
from gateway.outbox import footprint
from gateway.statistics import MACHINE, MachineFigures

if TYPE_CHECKING:
    from gateway.daemon import Gateway

__all__ = [
    "Activity",
    "ControlServer",
    "ControlUnavailableError",
    "PortTap",
    "TraceHub",
    "control_socket_path",
    "parse_request",
    "snapshot",
]

log = structlog.get_logger("gateway.control")

MAX_REQUEST_BYTES = 65536
MAX_CONNECTIONS = 16            # diag sessions at once; a tool looping on connect gets refused
MAX_CONNECTIONS_PER_USER = 8    # per peer uid, so one user cannot lock out another
REQUEST_TIMEOUT_S = 10.0        # to send a request line, and to take each answer
TRACE_QUEUE = 1000
RATE_WINDOW_S = 300.0


class ControlUnavailableError(Exception):
    """The control socket cannot be created here (directory not writable, path too long). The
    daemon runs on without it: diagnostics must never stop the floor."""


RUN_DIR_SOCKET = Path("/run/casino-gateway/control.sock")


def control_socket_path(section: GatewaySection) -> Path:
    """`[gateway] control_socket`, else control.sock in systemd's RuntimeDirectory (the unit
    sets RUNTIME_DIRECTORY), else in the state directory."""
    if section.control_socket is not None:
        return section.control_socket
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0]) / "control.sock"
    return section.state_dir / "control.sock"


# -- tracing ---------------------------------------------------------------------------------------

@dataclass(eq=False)
class _Subscriber:
    send: trio.MemorySendChannel[dict[str, Any]]
    dropped: int = 0


class TraceHub:
    """Fan-out of link frames to whoever traces a port; drops rather than blocks."""

    def __init__(self) -> None:
        self._subscribers: dict[str, list[_Subscriber]] = {}

    def active(self, port: str) -> bool:
        return bool(self._subscribers.get(port))

    def publish(self, port: str, frame: dict[str, Any]) -> None:
        for sub in self._subscribers.get(port, ()):
            try:
                sub.send.send_nowait(frame)
            except trio.WouldBlock:
                sub.dropped += 1

    @contextmanager
    def subscribe(self, port: str) -> Iterator[tuple[_Subscriber,
                                                     trio.MemoryReceiveChannel[dict[str, Any]]]]:
        send, receive = trio.open_memory_channel[dict[str, Any]](TRACE_QUEUE)
        sub = _Subscriber(send)
        self._subscribers.setdefault(port, []).append(sub)
        try:
            yield sub, receive
        finally:
            self._subscribers[port].remove(sub)
            send.close()
            receive.close()


class PortTap:
    """The `FrameTap` a port's driver reports to (drivers/model.py): while someone traces the
    port, each frame goes to the hub redacted and in words by the protocol's `TraceDecoder`
    (drivers/registry.py). Nobody tracing: the decoder only sees host frames (its context)."""

    def __init__(self, hub: TraceHub, port: str, decoder: TraceDecoder) -> None:
        self._hub = hub
        self._port = port
        self._decoder = decoder

    def active(self) -> bool:
        return self._hub.active(self._port)

    def sent(self, data: bytes) -> None:
        self._decoder.sent(data)
        if self._hub.active(self._port):
            self._publish("tx", data, wakeup=False)

    def received(self, data: bytes, *, wakeup: bool = False) -> None:
        if self._hub.active(self._port):
            self._publish("rx", data, wakeup=wakeup)

    def _publish(self, direction: str, data: bytes, *, wakeup: bool) -> None:
        shown = self._decoder.redact(data)  # nothing unredacted leaves this method
        self._hub.publish(self._port, {
            "t": time.time(), "dir": direction, "hex": shown.hex(),
            "text": self._decoder.describe(direction, shown, wakeup=wakeup)})


# -- activity: last event per machine and the current event rate ------------------------------------

@dataclass
class Activity:
    """Fed by the outbox's commit listener: last event per machine and events per second."""

    last: dict[str, dict[str, Any]] = field(default_factory=dict)
    _commits: deque[tuple[float, int]] = field(default_factory=deque)
    _started: float = field(default_factory=time.monotonic)

    def on_commit(self, envelopes: list[dict[str, Any]]) -> None:
        now = time.monotonic()
        self._commits.append((now, len(envelopes)))
        for env in envelopes:
            machine = env.get("machine")
            if machine:
                self.last[machine_key(machine['port'], machine['address'])] = {
                    "type": env.get("event"), "seq": env.get("seq"),
                    "timestamp": env.get("timestamp"), "at": time.time()}
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._commits and self._commits[0][0] < now - RATE_WINDOW_S:
            self._commits.popleft()

    def rate_per_s(self) -> float:
        """Events per second over the last five minutes (or since start, if sooner)."""
        now = time.monotonic()
        self._trim(now)
        span = min(RATE_WINDOW_S, max(now - self._started, 1.0))
        return sum(n for _, n in self._commits) / span


# -- the snapshot ----------------------------------------------------------------------------------

def _age(at: float | None, now: float) -> float | None:
    return None if at is None else round(max(0.0, now - at), 3)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def key_fingerprint(public_key: bytes) -> str:
    digest = hashlib.sha256(public_key).hexdigest()
    return "SHA256:" + ":".join(digest[i:i + 4] for i in range(0, 32, 4))


def _machine_row(gw: Gateway, port: str, m: MachineFigures, now_wall: float,
                 now_trio: float) -> dict[str, Any]:
    """One machine as diag shows it."""
    # A device that is not a machine is never polled: its line is open (online) or not.
    state = "online" if m.online else "not polled yet" if (
        m.polls == 0 and m.device == MACHINE) else "offline"
    last = gw.activity.last.get(machine_key(port, m.address))
    return {
        "address": m.address, "device": m.device, "state": state, "offline_reason": m.offline_reason,
        "serial": m.serial, "asset": m.asset, "sas_version": m.sas_version, "rte": m.rte,
        "last_response_age_s": _age(m.last_response_at, now_trio),
        "latency_p50_ms": _ms(m.latency_p50_s), "latency_p99_ms": _ms(m.latency_p99_s),
        "polls": m.polls, "timeouts": m.timeouts, "crc_errors": m.crc_errors, "nacks": m.nacks,
        "busy": m.busy, "retries": m.retries, "exceptions": m.exceptions,
        "resent_after_reset": m.resent_after_reset,
        "last_event": None if last is None else {
            "type": last["type"], "seq": last["seq"], "age_s": _age(last["at"], now_wall)},
        "figures": dict(m.own),
    }


async def snapshot(gw: Gateway) -> dict[str, Any]:
    """Everything `diag` shows, as plain JSON-able values. Ages are seconds; times are Unix."""
    now_wall, now_trio = time.time(), trio.current_time()
    figures = gw.figures()
    devices = {section.name: str(section.device) for section in gw.config.ports}
    ports = {p.name: {"device": devices[p.name], "state": p.state, "failures": p.failures,
                      "last_error": p.last_error,
                      "machines": [_machine_row(gw, p.name, m, now_wall, now_trio)
                                   for m in p.machines]}
             for p in figures.ports}

    outbox = gw.outbox
    files = await trio.to_thread.run_sync(footprint.measure, gw.config.outbox_path,
                                          outbox.delivered_seq)
    rate = gw.activity.rate_per_s()
    per_event = files.bytes_per_event
    hours_left = files.outage_hours_left(rate)
    oldest_age = _age(files.oldest_undelivered_at, now_wall) if outbox.depth() else None
    up = figures.uplink
    down_for = gw.uplink_down_for()
    signer = outbox.signer
    public = bytes(signer.verify_key)
    return {
        "gateway": {"id": gw.config.gateway.id, "version": gateway.__version__, "pid": os.getpid(),
                    "uptime_s": _age(gw.started_at, now_wall), "status": gw.status_line(),
                    "watchdog": gw.health.describe(now_trio)},
        "ports": ports,
        "outbox": {"depth": outbox.depth(), "last_seq": outbox.last_seq,
                   "delivered_seq": outbox.delivered_seq,
                   "oldest_undelivered_age_s": oldest_age,
                   "db_bytes": files.db_bytes,
                   "bytes_per_event": None if per_event is None else round(per_event),
                   "disk_free_bytes": files.disk_free_bytes,
                   "events_per_s": round(rate, 3),
                   "outage_hours_left": hours_left,
                   "durable_p99_ms": figures.outbox.durable_p99_ms if figures.outbox else None,
                   "intake_stopped": outbox.intake_stopped,
                   "epoch": outbox.epoch, "witness": outbox.statistics()["witness"],
                   "epoch_change": outbox.statistics()["epoch_change"],
                   "quarantined": outbox.quarantined,
                   "error": files.error},
        "uplink": {"state": up.state, "connected": up.connected, "since": up.since,
                   "down_for_s": down_for, "last_ack_seq": up.last_ack_seq,
                   "lag_events": outbox.depth(), "lag_s": oldest_age,
                   "reconnects": up.reconnects, "last_error": up.last_error,
                   "url": gw.config.uplink.url},
        "key": {"kid": signer.kid, "public_key": public.hex(),
                "fingerprint": key_fingerprint(public)},
        "reconciliation": gw.reconciler.summary() if gw.reconciler else None,
        "feed": None if gw.feed is None else {
            "port": gw.feed.port, "listening": gw.feed.port is not None,
            "bind_error": gw.feed.bind_error, "bind_failures": gw.feed.bind_failures,
            "clients": gw.feed.client_count},
    }


# -- the server ------------------------------------------------------------------------------------

def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


class ControlServer:
    """Create, then `await open()` (binds; raises ConfigError naming gateway.control_socket if
    it cannot), then `nursery.start(run)`. Binding outside the nursery keeps a start-up failure
    a plain ConfigError, so the daemon exits 78 with the reason."""

    def __init__(self, gw: Gateway, path: Path) -> None:
        self.gw = gw
        self.path = path
        self._listener: trio.SocketListener | None = None
        self._admission = Admission(total=MAX_CONNECTIONS, per_address=MAX_CONNECTIONS_PER_USER,
                                    unauthenticated=MAX_CONNECTIONS,
                                    unauthenticated_per_address=MAX_CONNECTIONS_PER_USER)
        self._throttle = LogThrottle(60.0)
        self.refused = 0
        self.errors = 0

    async def open(self) -> None:
        """Bind the socket. ConfigError (fatal, names gateway.control_socket) when another
        gateway serves it or the path is something else; ControlUnavailableError when it cannot
        be created here."""
        path = self.path
        where = "gateway.control_socket"
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise ConfigError(where, f"{path} exists and is not a socket; refusing to "
                                  "replace it")
            if await _answers(path):
                raise ConfigError(where, f"another gateway is serving {path}; is it already "
                                  "running with this configuration?")
            path.unlink()  # left by a gateway that was killed
        try:
            path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                await sock.bind(str(path))
                os.chmod(path, 0o660)
                sock.listen(16)
            except OSError:
                sock.close()
                raise
        except OSError as err:
            raise ControlUnavailableError(f"cannot create the control socket {path}: "
                                          f"{err.strerror or err}") from err
        self._listener = trio.SocketListener(sock)

    async def run(self, *, task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve until cancelled (reports started with the path), then unlink the socket."""
        if self._listener is None:
            await self.open()
        listener = self._listener
        assert listener is not None
        try:
            async with trio.open_nursery() as nursery:
                log.info("control socket listening", path=str(self.path))
                task_status.started(self.path)
                nursery.start_soon(partial(
                    summarize_suppressed, self._throttle,
                    "control: repeated warnings not logged one by one", listener="control"))
                # Out of descriptors is not fatal here either (a diag during a flood was).
                await serve_accepting(listener, self._admit, nursery, name="control")
        finally:
            with trio.CancelScope(shield=True):
                await listener.aclose()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    async def _admit(self, stream: trio.SocketStream) -> None:
        """Apply the connection caps (per peer uid), then serve."""
        user = _peer_user(stream)
        ticket = self._admission.admit(user)
        if isinstance(ticket, str):
            self.refused += 1
            suppressed = self._throttle.admit(ticket, trio.current_time())
            if suppressed is not None:
                log.warning("control connection refused: too many at once", user=user,
                            reason=ticket, repeated=suppressed)
            with trio.move_on_after(1.0):
                try:
                    await stream.send_all(_encode({"ok": False, "error": "too many diag "
                                                   "connections at once; try again"}))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            await trio.aclose_forcefully(stream)
            return
        try:
            await self._serve(stream)
        except* Exception as group:
            # A bulkhead, deliberately: a bug reached from a diag request must not stop the
            # floor. Logged with its traceback (once a minute at most); the connection closes.
            self.errors += 1
            if self._throttle.admit("handler_bug", trio.current_time()) is not None:
                log.error("control request failed: a bug, please report it", exc_info=group)
        finally:
            ticket.release()

    async def _serve(self, stream: trio.SocketStream) -> None:
        buffer = b""
        try:
            async with stream:
                while True:
                    while b"\n" not in buffer:
                        if len(buffer) > MAX_REQUEST_BYTES:
                            await stream.send_all(_encode({"ok": False,
                                                           "error": "request too long"}))
                            return
                        data = None
                        with trio.move_on_after(REQUEST_TIMEOUT_S):
                            data = await stream.receive_some(65536)
                        if not data:
                            return  # hung up, or idle too long
                        buffer += data
                    line, _, buffer = buffer.partition(b"\n")
                    if line.strip() and not await self._request(stream, line):
                        return
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away: nothing to tell anyone

    async def _request(self, stream: trio.SocketStream, line: bytes) -> bool:
        """Answer one request; False when the connection is done (after a trace)."""
        try:
            cmd, port = parse_request(line)
        except InputRejected as err:
            await stream.send_all(_encode({"ok": False, "error": str(err)}))
            return True
        match cmd:
            case "status":
                await stream.send_all(_encode({"ok": True, "status": await snapshot(self.gw)}))
                return True
            case "trace":
                if port is None or port not in self.gw.drivers:
                    await stream.send_all(_encode({
                        "ok": False, "error": f"no port {port!r}; ports: "
                        + ", ".join(self.gw.drivers)}))
                    return True
                await self._trace(stream, port)
                return False
            case "rotate-key":
                await stream.send_all(_encode(await self._rotate_key(stream)))
                return True
            case other:
                await stream.send_all(_encode({"ok": False, "error": f"unknown command {other!r}; "
                                               "expected status, trace or rotate-key"}))
                return True

    async def _rotate_key(self, stream: trio.SocketStream) -> dict[str, Any]:
        """`casino-gateway keys rotate`: announce `<key_file>.next` (keyRotated, signed by the
        current key) and sign with it from the next event on; the command then swaps the files.
        Only root or the service user may ask (the socket is open to the group): peer
        credentials, not the file mode, decide."""
        from gateway.signing import KeyFileError, load_signing_key

        raw = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                       struct.calcsize("3i"))
        _pid, uid, _gid = struct.unpack("3i", raw)
        if uid not in (0, os.geteuid()):
            return {"ok": False, "error": "only root or the service user may rotate the key"}
        key_file = self.gw.config.gateway.key_file
        next_path = key_file.with_name(key_file.name + ".next")
        try:
            new = load_signing_key(next_path)
        except KeyFileError as err:
            return {"ok": False, "error": str(err)}
        except PermissionError:
            return {"ok": False, "error": f"the gateway cannot read {next_path}: it must belong "
                    "to the service user (keys rotate does that when run as root)"}
        outbox = self.gw.outbox
        old_kid = outbox.signer.kid
        if new.kid == old_kid:
            return {"ok": True, "rotated": {"old_kid": None, "new_kid": new.kid, "seq": None}}
        seq = await outbox.rotate_key(new)
        log.info("signing key rotated", old_kid=old_kid, new_kid=new.kid, seq=seq)
        return {"ok": True, "rotated": {"old_kid": old_kid, "new_kid": new.kid, "seq": seq}}

    async def _trace(self, stream: trio.SocketStream, port: str) -> None:
        device = next(str(p.device) for p in self.gw.config.ports if p.name == port)
        log.info("trace started", port=port)
        with self.gw.trace.subscribe(port) as (sub, frames):
            await stream.send_all(_encode({"ok": True, "trace": port, "device": device}))
            async with trio.open_nursery() as nursery:
                async def until_hangup() -> None:
                    try:
                        while await stream.receive_some(4096):
                            pass
                    except trio.BrokenResourceError:
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(until_hangup)
                reported = 0
                async for frame in frames:
                    if sub.dropped != reported:
                        await stream.send_all(_encode({"dropped": sub.dropped - reported}))
                        reported = sub.dropped
                    await stream.send_all(_encode({"frame": frame}))
        log.info("trace stopped", port=port)


def parse_request(line: bytes) -> tuple[str, str | None]:
    """One request line as (cmd, port); InputRejected (within gateway.bounded's budgets) for
    anything else. Group members are trusted to read, not to send well-formed input: a list
    where a port name belongs, or 5,000 levels of nesting, is refused here, not raised later."""
    expected = 'expected one JSON object per line, like {"cmd": "status"}'
    try:
        request = loads_json(line, max_bytes=MAX_REQUEST_BYTES)
    except InputRejected as err:
        raise InputRejected(f"{expected} ({err})") from None
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        raise InputRejected(expected)
    cmd, port = request["cmd"], request.get("port")
    if cmd == "trace" and not isinstance(port, str):
        raise InputRejected('trace: port must be a string, like {"cmd": "trace", "port": '
                            '"port1"}')
    return cmd, port if isinstance(port, str) else None


def _peer_user(stream: trio.SocketStream) -> str:
    """The connecting process's uid (SO_PEERCRED), the "address" the caps count per."""
    try:
        creds = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                         struct.calcsize("3i"))
        return f"uid:{struct.unpack('3i', creds)[1]}"
    except (OSError, AttributeError, struct.error):
        return "unknown"


async def _answers(path: Path) -> bool:
    """True if something accepts connections on the socket at `path`."""
    try:
        with trio.fail_after(2):
            stream = await trio.open_unix_socket(str(path))
    except trio.TooSlowError:
        return False
    except OSError as err:
        if err.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise
    await stream.aclose()
    return True
