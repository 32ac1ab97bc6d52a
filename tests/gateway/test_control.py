"""The control socket against a running daemon: simulated machines on pseudo-terminals, the
reference receiver on loopback, daemon.run in-process (as gateway/demo.py runs them)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

from drivers.link import TxFrame
from drivers.link.memory import memory_link_pair
from drivers.link.tap import TappedLink
from drivers.sas.trace import SasTraceDecoder, describe_answer, describe_poll
from drivers.sim.fleet import SimFleet, serve_fleet
from gateway import control, daemon
from gateway.bounded import InputRejected
from gateway.config import Config, GatewaySection, LogSection, PortSection, UplinkSection
from gateway.control import (
    ControlServer,
    ControlUnavailableError,
    PortTap,
    TraceHub,
    control_socket_path,
    key_fingerprint,
    parse_request,
)
from gateway.errors import ConfigError
from gateway.receiver.server import ReceiverHandle, ReceiverSettings, serve_receiver
from gateway.signing import write_signing_key

GATEWAY_ID = "control-test-gw"


@dataclass
class Running:
    gw: daemon.Gateway
    fleet: SimFleet
    receiver: ReceiverHandle
    socket: Path


def short_dir(tmp_path: Path) -> Path:
    """AF_UNIX paths are limited to 107 bytes; pytest's tmp_path can be longer."""
    if len(str(tmp_path / "control.sock")) < 100:
        return tmp_path
    link = Path("/tmp") / f"ctl-{os.getpid()}-{abs(hash(tmp_path)) % 10**8}"
    link.mkdir(exist_ok=True)
    return link


def gateway_config(base: Path, device_paths: list[str], url: str, sock: Path) -> Config:
    return Config(
        gateway=GatewaySection(id=GATEWAY_ID, key_file=base / "gw.key", state_dir=base / "state",
                               control_socket=sock),
        uplink=UplinkSection(url=url, token_file=base / "token", backoff_initial_s=0.05,
                             backoff_max_s=0.2),
        ports=tuple(PortSection.of(f"port{i + 1}", Path(p), (1,), poll_interval_ms=40)
                    for i, p in enumerate(device_paths)),
        log=LogSection(level="warning"),
    )


@asynccontextmanager
async def running_gateway(tmp_path: Path, machines: int = 2, *, rate: float = 5.0,
                          receiver_up: bool = True, notifier: Any = None
                          ) -> AsyncIterator[Running]:
    sock = short_dir(tmp_path) / "control.sock"
    async with trio.open_nursery() as nursery:
        signer = write_signing_key(tmp_path / "gw.key")
        (tmp_path / "token").write_text("control-test-token\n")
        os.chmod(tmp_path / "token", 0o600)
        receiver = await nursery.start(serve_receiver, ReceiverSettings(
            host="127.0.0.1", port=0, db_path=tmp_path / "rx.db"))
        if receiver_up:
            receiver.store.register(GATEWAY_ID, "control-test-token",
                                    bytes(signer.verify_key).hex())
        fleet = await nursery.start(partial(serve_fleet, machines, rte=True, seed=7,
                                            events_per_second=rate))
        config = gateway_config(tmp_path, fleet.device_paths, receiver.url, sock)
        gw = await nursery.start(partial(daemon.run, config, handle_signals_=False,
                                         notifier=notifier))
        try:
            yield Running(gw, fleet, receiver, sock)
        finally:
            nursery.cancel_scope.cancel()


async def request(path: Path, req: dict[str, Any] | bytes) -> list[dict[str, Any]]:
    """Send one request, return the first reply line."""
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        await stream.send_all(req if isinstance(req, bytes) else json.dumps(req).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            data = await stream.receive_some(65536)
            assert data, "control socket closed without a reply"
            buf += data
    return [json.loads(line) for line in buf.split(b"\n") if line]


async def wait_until(gw: daemon.Gateway, predicate) -> None:
    """Wait on the outbox's commits (every event, status change and ack commits) until true."""
    done = trio.Event()

    def check(_envelopes: list[dict[str, Any]]) -> None:
        if predicate():
            done.set()

    gw.outbox.commit_listeners.append(check)
    try:
        if not predicate():
            await done.wait()
    finally:
        gw.outbox.commit_listeners.remove(check)


def all_online(gw: daemon.Gateway) -> bool:
    return all(m.get("online") and m.get("serial") for d in gw.drivers.values()
               for m in d.statistics().machines.values())


async def test_status_snapshot_has_every_section(tmp_path: Path):
    with trio.fail_after(30):
        async with running_gateway(tmp_path) as run:
            mode = stat.S_IMODE(run.socket.stat().st_mode)
            assert mode == 0o660, oct(mode)
            await wait_until(run.gw, lambda: all_online(run.gw) and run.gw.activity.last)
            [reply] = await request(run.socket, {"cmd": "status"})
            assert reply["ok"] is True
            status = reply["status"]
            assert status["gateway"]["id"] == GATEWAY_ID
            assert status["gateway"]["watchdog"]["alive"] is True
            assert set(status["ports"]) == {"port1", "port2"}
            port = status["ports"]["port1"]
            assert port["device"] == run.fleet.device_paths[0]
            assert port["state"] == "running"
            [machine] = port["machines"]
            assert machine["address"] == 1
            assert machine["state"] == "online"
            assert machine["serial"] == "SIM0070000"
            assert machine["polls"] > 0 and machine["latency_p50_ms"] is not None
            for key in ("timeouts", "crc_errors", "nacks", "last_response_age_s", "asset",
                        "latency_p99_ms", "last_event"):
                assert key in machine
            outbox = status["outbox"]
            assert outbox["last_seq"] >= 1 and outbox["disk_free_bytes"] > 0
            assert {"depth", "oldest_undelivered_age_s", "outage_hours_left",
                    "events_per_s"} <= set(outbox)
            uplink = status["uplink"]
            assert {"state", "since", "last_ack_seq", "lag_events", "lag_s"} <= set(uplink)
            assert status["key"]["kid"] == run.gw.outbox.signer.kid
            assert status["key"]["fingerprint"].startswith("SHA256:")


async def test_outage_figures_while_the_platform_refuses(tmp_path: Path):
    """Receiver up but the gateway unregistered: events queue, and the snapshot says how old the
    oldest is and how many hours of outage the disk still holds at the current rate."""
    with trio.fail_after(30):
        async with running_gateway(tmp_path, rate=20.0, receiver_up=False) as run:
            await wait_until(run.gw, lambda: run.gw.outbox.depth() > 20
                             and any(run.gw.activity.last))
            [reply] = await request(run.socket, {"cmd": "status"})
            outbox = reply["status"]["outbox"]
            assert outbox["depth"] > 20
            assert outbox["oldest_undelivered_age_s"] is not None
            assert outbox["events_per_s"] > 0
            assert outbox["outage_hours_left"] is not None and outbox["outage_hours_left"] > 0
            assert reply["status"]["uplink"]["connected"] is False
            assert "uplink down" in reply["status"]["gateway"]["status"]


async def test_trace_streams_polls_and_answers(tmp_path: Path):
    with trio.fail_after(30):
        async with running_gateway(tmp_path, machines=1) as run:
            stream = await trio.open_unix_socket(str(run.socket))
            async with stream:
                await stream.send_all(b'{"cmd": "trace", "port": "port1"}\n')
                buf = b""
                frames: list[dict[str, Any]] = []
                while len(frames) < 20:
                    data = await stream.receive_some(65536)
                    assert data
                    buf += data
                    *lines, buf = buf.split(b"\n")
                    frames += [json.loads(line) for line in lines]
            head, *rest = frames
            assert head == {"ok": True, "trace": "port1", "device": run.fleet.device_paths[0]}
            directions = {f["frame"]["dir"] for f in rest if "frame" in f}
            assert directions == {"tx", "rx"}
            texts = [f["frame"]["text"] for f in rest if "frame" in f]
            assert any(t.startswith(("GP to 1", "LP ")) for t in texts)


async def test_bad_requests_are_answered_not_fatal(tmp_path: Path):
    with trio.fail_after(30):
        async with running_gateway(tmp_path, machines=1) as run:
            [reply] = await request(run.socket, b"status\n")
            assert reply["ok"] is False and "JSON" in reply["error"]
            [reply] = await request(run.socket, {"cmd": "reboot"})
            assert reply["ok"] is False and "unknown command" in reply["error"]
            [reply] = await request(run.socket, {"cmd": "trace", "port": "nope"})
            assert reply["ok"] is False and "port1" in reply["error"]
            # Unhashable ports and deep nesting (issue 15: each was exit 1).
            for bad in ({"cmd": "trace", "port": []}, {"cmd": "trace", "port": {}},
                        b'{"cmd":"status","x":' + b"[" * 5000 + b"]" * 5000 + b"}\n"):
                [reply] = await request(run.socket, bad)
                assert reply["ok"] is False
            [reply] = await request(run.socket, {"cmd": "status"})
            assert reply["ok"] is True


async def test_stale_socket_is_replaced_and_a_live_one_refused(tmp_path: Path):
    sock_path = short_dir(tmp_path) / "stale.sock"
    import socket as pysocket

    stale = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    stale.bind(str(sock_path))
    stale.close()  # a killed gateway leaves its socket file behind
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            server = ControlServer(None, sock_path)  # type: ignore[arg-type]
            await server.open()
            await nursery.start(server.run)
            second = ControlServer(None, sock_path)  # type: ignore[arg-type]
            with pytest.raises(ConfigError, match=r"gateway\.control_socket.*already running"):
                await second.open()
            nursery.cancel_scope.cancel()
    assert not sock_path.exists()  # removed on the way out
    sock_path.write_text("not a socket")
    with pytest.raises(ConfigError, match="not a socket"):
        await ControlServer(None, sock_path).open()  # type: ignore[arg-type]


async def test_tracing_link_reports_only_while_someone_listens():
    hub = TraceHub()
    host, egm = memory_link_pair()
    link = TappedLink(host, PortTap(hub, "port1", SasTraceDecoder()))
    with trio.fail_after(5):
        await link.send(TxFrame(b"\x81"))  # nobody tracing: nothing queued anywhere
        with hub.subscribe("port1") as (_sub, frames):
            await link.send(TxFrame(bytes([0x01, 0x1A])))
            await egm.send(bytes([0x01, 0x1A, 0, 0, 0, 0x12, 0x34, 0x00]))
            await link.receive_some()
            tx = frames.receive_nowait()
            rx = frames.receive_nowait()
        assert tx["dir"] == "tx" and tx["text"] == "LP 1A CURRENT_CREDITS to 1"
        assert rx["dir"] == "rx" and rx["hex"].startswith("011a")
        assert not hub.active("port1")


def test_tracing_link_overrides_every_link_method():
    """A method the proxy inherited from SasLink would bypass the real link (its base-class
    fallback), silently changing what the driver sees."""
    import inspect

    from drivers.link import SasLink

    inherited = [name for name, member in inspect.getmembers(SasLink, inspect.isfunction)
                 if not name.startswith("_") and name not in vars(TappedLink)]
    assert inherited == []


async def test_tracing_link_keeps_the_ninth_bit():
    hub = TraceHub()
    host, egm = memory_link_pair()
    link = TappedLink(host, PortTap(hub, "port1", SasTraceDecoder()))
    with trio.fail_after(5), hub.subscribe("port1") as (_sub, frames):
        await egm.send_words([0x101])  # a chirp: address 1 with the wakeup bit
        assert await link.receive_words() == [0x101]
        assert frames.receive_nowait()["text"].startswith("with the wakeup bit")


def test_trace_hub_drops_for_a_slow_subscriber():
    hub = TraceHub()
    with hub.subscribe("p") as (sub, frames):
        for i in range(1005):
            hub.publish("p", {"i": i})
        assert sub.dropped == 5
        assert frames.receive_nowait() == {"i": 0}


def test_frames_in_words():
    assert describe_poll(b"\x81") == "GP to 1"
    assert describe_poll(bytes([3, 0x54])) == "LP 54 VERSION_AND_SERIAL to 3"
    assert describe_answer(b"\x00", b"\x81") == "no activity"
    assert describe_answer(b"\x11", b"\x81") == "exception 11 SLOT_DOOR_OPENED"
    assert describe_answer(b"\x81", bytes([1, 0x1A])) == "NACK"
    assert describe_answer(b"\x01", bytes([1, 0x0E, 1, 0, 0])) == "ACK of LP 0E"
    assert describe_answer(b"\x01\x00", bytes([1, 0x1A])) == "busy"
    assert describe_answer(bytes([1, 0x1A, 0, 0, 0, 0x12, 0x34, 0x00]),
                           bytes([1, 0x1A])).startswith("answer to LP 1A, 8 bytes, CRC")
    assert key_fingerprint(b"\x00" * 32).startswith("SHA256:")


async def test_an_unusable_path_is_not_fatal_but_another_gateway_is():
    with pytest.raises(ControlUnavailableError, match="cannot create"):
        await ControlServer(None, Path("/proc/self/no-such/control.sock")).open()  # type: ignore[arg-type]


def test_default_socket_path(monkeypatch, tmp_path: Path):
    section = GatewaySection(id="g", key_file=tmp_path / "k", state_dir=tmp_path / "state")
    monkeypatch.delenv("RUNTIME_DIRECTORY", raising=False)
    assert control_socket_path(section) == tmp_path / "state" / "control.sock"
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/casino-gateway")  # set by the unit
    assert control_socket_path(section) == Path("/run/casino-gateway/control.sock")
    explicit = GatewaySection(id="g", key_file=tmp_path / "k", control_socket=tmp_path / "c.sock")
    assert control_socket_path(explicit) == tmp_path / "c.sock"


@pytest.mark.parametrize(("line", "error"), [
    (b'{"cmd":"trace","port":[]}', "port must be a string"),
    (b'{"cmd":"trace","port":{}}', "port must be a string"),
    (b'{"cmd":"trace"}', "port must be a string"),
    (b'{"cmd":"status","x":' + b"[" * 5000 + b"]" * 5000 + b"}", "nested"),
    (b'{"cmd":"status","x":' + b"9" * 400 + b"}", "out of range"),
    (b"status", "expected one JSON object"),
    (b"\xff\xfe", "expected one JSON object"),
    (b'{"cmd":7}', "expected one JSON object"),
    (b"[]", "expected one JSON object"),
])
def test_malformed_requests_are_a_typed_refusal(line: bytes, error: str):
    with pytest.raises(InputRejected, match=error):
        parse_request(line)


def test_requests_parse():
    assert parse_request(b'{"cmd":"status"}') == ("status", None)
    assert parse_request(b'{"cmd":"trace","port":"port1"}') == ("trace", "port1")
    assert parse_request(b'{"cmd":"reboot"}') == ("reboot", None)


async def test_connection_caps_and_idle_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Issue 15: the control socket had no cap; idle connections held descriptors forever."""
    from gateway.control import MAX_CONNECTIONS_PER_USER

    with trio.fail_after(30):
        async with running_gateway(tmp_path, machines=1) as run:
            idle = [await trio.open_unix_socket(str(run.socket))
                    for _ in range(MAX_CONNECTIONS_PER_USER)]
            # A short cushion: the SAS driver beside it wakes every ~20 ms (its answer wait
            # follows the measured latency), so the loop is never idle for 50 ms.
            await trio.testing.wait_all_tasks_blocked(0.005)
            [reply] = await request(run.socket, {"cmd": "status"})
            assert reply == {"ok": False,
                             "error": "too many diag connections at once; try again"}
            for stream in idle:
                await stream.aclose()
            await trio.testing.wait_all_tasks_blocked(0.005)
            [reply] = await request(run.socket, {"cmd": "status"})
            assert reply["ok"] is True
            assert reply["status"]["feed"] is None   # no feed configured here
            # A connection that never sends its request is closed after request_timeout_s.
            monkeypatch.setattr(control, "REQUEST_TIMEOUT_S", 0.2)
            silent = await trio.open_unix_socket(str(run.socket))
            assert await silent.receive_some(100) == b""
            await silent.aclose()
            # A bug reached from a request closes that connection, not the daemon.
            real = control.snapshot

            async def broken(gw: daemon.Gateway) -> dict[str, Any]:
                raise RuntimeError("a bug")

            monkeypatch.setattr(control, "snapshot", broken)
            stream = await trio.open_unix_socket(str(run.socket))
            await stream.send_all(b'{"cmd": "status"}\n')
            assert await stream.receive_some(100) == b""
            await stream.aclose()
            monkeypatch.setattr(control, "snapshot", real)
            [reply] = await request(run.socket, {"cmd": "status"})
            assert reply["ok"] is True
