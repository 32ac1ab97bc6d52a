"""A hostile neighbour against a live daemon (issue 15): every attack found, at one process.

`casino-gateway run` (a real process, machines simulated on pseudo-terminals, the reference
receiver over TLS, as tests/test_lifecycle.py runs them) starts while its feed port is taken, and
with a descriptor limit low enough that a flood reaches it (RLIMIT_NOFILE 160). Then it gets
deep JSON before and after login, oversized numbers in commands, acknowledgements of alerts that
do not exist, malformed control requests, a half-open connection flood from one address and a
login flood from another, an oversized request head, and a command_result with a bytes map key
sent to the receiver. Checked: the daemon never exits, answers /health, diag and a login from a
third address throughout, keeps polling (events keep arriving), and at the end every exception a
machine saw acknowledged is in the outbox once and at the receiver byte for byte.

Cross-process waits are on the child's log lines (a reader thread hands them over) and on
control-socket answers, each with a deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import resource
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url, wrap_client_stream

sys.path.insert(0, str(Path(__file__).parents[1] / "bench"))

from crash_loop import CLI, GATEWAY_ID, _read_line, _receiver_rows, _setup, _verify_outbox

from gateway.outbox import iter_envelopes, open_readonly
from gateway.uplink import protocol as proto

MACHINES = 2
SUPERVISOR = "hostile-test-supervisor-token-0123456789"
NOFILE = 160   # the daemon's descriptor limit here: small, so the flood can reach it
DEEP = "[" * 1200 + "]" * 1200


class GatewayLog:
    """Drains the daemon's stderr (JSON lines) to a file and hands each line to waiters."""

    def __init__(self, stream: Any, path: Path) -> None:
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._pump, args=(stream, path), daemon=True)
        self._thread.start()

    def _pump(self, stream: Any, path: Path) -> None:
        with open(path, "ab") as out:
            for raw in stream:
                out.write(raw)
                out.flush()
                try:
                    self.lines.put(json.loads(raw))
                except ValueError:
                    continue

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the gateway never logged what was expected")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(line)
            if predicate(line):
                return line


def control(path: Path, request: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(request + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, "control socket closed without an answer"
            buf += chunk
    reply: dict[str, Any] = json.loads(buf)
    return reply


def status(path: Path) -> dict[str, Any]:
    reply = control(path, b'{"cmd": "status"}')
    assert reply["ok"], reply
    result: dict[str, Any] = reply["status"]
    return result


def http(port: int, request: bytes, local: str = "127.0.0.1") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=(local, 0)) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data


def health(port: int, local: str = "127.0.0.3", *, degraded_ok: bool = False) -> dict[str, Any]:
    """/health's body; 200 (ok) required unless `degraded_ok` (then 503, degraded, answers too:
    the board is still answering, with its reasons)."""
    reply = http(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", local)
    assert reply.startswith(b"HTTP/1.1 200 ") or (
        degraded_ok and reply.startswith(b"HTTP/1.1 503 ")), reply[:300]
    result: dict[str, Any] = json.loads(reply.partition(b"\r\n\r\n")[2])
    return result


def free_port() -> socket.socket:
    """A listening socket on a free loopback port: the feed's port, taken."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock


@pytest.fixture
def plant(tmp_path: Path) -> Iterator[dict[str, Any]]:
    with contextlib.ExitStack() as logs:
        procs = _setup(tmp_path, MACHINES, 10.0, 15, logs)
        procs["base"] = tmp_path
        try:
            yield procs
        finally:
            for proc in (procs["sim"], procs["receiver"]):
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=30)
                proc.stdout.close()


def configure(plant: dict[str, Any], feed_port: int) -> None:
    base = plant["base"]
    plant["control"] = base / "control.sock"
    digest = hashlib.sha256(SUPERVISOR.encode()).hexdigest()
    text = plant["config"].read_text().replace(
        "[gateway]\n", f'[gateway]\ncontrol_socket = "{plant["control"]}"\n', 1)
    text += (f'\n[commands]\nallowed = ["acknowledgeAlert", "requestMeters"]\n'
             f'[feed]\nhost = "127.0.0.1"\nport = {feed_port}\n'
             f'[[feed.tokens]]\nname = "sue"\nrole = "supervisor"\nsha256 = "{digest}"\n')
    plant["config"].write_text(text)


def limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


async def feed_attacks(port: int) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{port}/feed"
    out: dict[str, Any] = {}
    # Before login: 1,200-deep JSON where the token goes.
    async with open_websocket_url(url) as ws:
        await ws.send_message('{"type":"auth","token":' + DEEP + "}")
        out["deep_before_auth"] = json.loads(await ws.get_message())["code"]
        with pytest.raises(ConnectionClosed):
            await ws.get_message()
    async with open_websocket_url(url) as ws:
        await ws.send_message(json.dumps({"type": "auth", "token": SUPERVISOR}))
        assert json.loads(await ws.get_message())["type"] == "welcome"

        async def reply(kind: str) -> dict[str, Any]:
            while True:
                message: dict[str, Any] = json.loads(await ws.get_message())
                if message["type"] == kind:
                    return message

        await ws.send_message('{"type":"subscribe","channels":' + DEEP + "}")
        out["deep_after_auth"] = (await reply("error"))["code"]
        await ws.send_message('{"type":"command","id":"big","name":"requestMeters",'
                              '"target":{"port":"port1","address":' + str(2**70) + "}}")
        out["big_target"] = (await reply("error"))["code"]
        await ws.send_message(json.dumps({"type": "command", "id": "ack-none",
                                          "name": "acknowledgeAlert",
                                          "target": {"alert_seq": 999_999}}))
        out["ack_nothing"] = await reply("command_result")
    return out


UPGRADE = (b"GET /feed HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n")


async def handshake(port: int, local: str, extra: bytes = b"") -> tuple[str, trio.SocketStream]:
    """A raw WebSocket handshake from `local`; the status code ("closed" if none)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=local)
    await stream.send_all(UPGRADE + extra + b"\r\n")
    head = await stream.receive_some(4096)
    return (head[9:12].decode() or "closed"), stream


async def login_flood(port: int, guesses: int, at_once: int) -> dict[str, Counter[str]]:
    """From 127.0.0.2: `guesses` wrong tokens one after another, then `at_once` logins opened
    together (none sends a token): attempts in flight count, so none gets a free guess."""
    outcomes: dict[str, Counter[str]] = {"sequential": Counter(), "at_once": Counter()}
    for _ in range(guesses):
        code, stream = await handshake(port, "127.0.0.2", b"Sec-WebSocket-Protocol: token.x\r\n")
        outcomes["sequential"][code] += 1
        await stream.aclose()   # failed or refused: counted either way (in flight, then failed)
    streams: list[trio.SocketStream] = []

    async def one() -> None:
        code, stream = await handshake(port, "127.0.0.2")
        outcomes["at_once"][code] += 1
        streams.append(stream)

    async with trio.open_nursery() as nursery:
        for _ in range(at_once):
            nursery.start_soon(one)
    for stream in streams:
        await stream.aclose()
    return outcomes


async def flood(port: int, control_path: Path, pid: int, budget: int) -> dict[str, Any]:
    """A supervisor watches from 127.0.0.3 while 127.0.0.1 opens 1,100 half-open connections
    (more than the daemon has descriptors) and 127.0.0.2 floods logins; /health, diag and a new
    login from 127.0.0.4 are tried meanwhile. Returns what each saw."""
    out: dict[str, Any] = {}
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address="127.0.0.3")
    async with trio.open_nursery() as nursery:
        ws = await wrap_client_stream(nursery, stream, "127.0.0.1", "/feed")
        await ws.send_message(json.dumps({"type": "auth", "token": SUPERVISOR}))
        await ws.send_message(json.dumps({"type": "subscribe", "channels": ["game", "cash",
                                                                          "alerts"]}))
        seen: list[int] = []
        wanted = [1 << 62]
        enough = trio.Event()

        async def watch() -> None:
            while True:
                message = json.loads(await ws.get_message())
                if message["type"] == "events":
                    seen.extend(e["seq"] for e in message["events"])
                    if len(seen) >= wanted[0]:
                        enough.set()

        nursery.start_soon(watch)
        sockets: list[socket.socket] = []
        try:
            for _ in range(1100):
                sock = socket.socket()
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sock.connect(("127.0.0.1", port))
                sockets.append(sock)
            before = len(seen)
            wanted[0] = before + MACHINES   # the board must still get events during the flood
            out["logins"] = await login_flood(port, 14, 30)
            out["health"] = await trio.to_thread.run_sync(health, port, "127.0.0.4")
            out["diag_pid"] = (await trio.to_thread.run_sync(status, control_path))[
                "gateway"]["pid"]
            out["new_login"] = await supervisor_login(port, "127.0.0.4")
            out["fds_during_flood"] = len(os.listdir(f"/proc/{pid}/fd"))
            if len(seen) >= wanted[0]:
                enough.set()
            with trio.fail_after(budget):
                await enough.wait()
            out["events_during_flood"] = len(seen) - before
        finally:
            for sock in sockets:
                sock.close()
        nursery.cancel_scope.cancel()
    return out


async def supervisor_login(port: int, local: str) -> str:
    """A supervisor logs in from `local` (trio-websocket over a stream bound to that address)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port, local_address=local)
    async with trio.open_nursery() as nursery:
        ws = await wrap_client_stream(nursery, stream, "127.0.0.1", "/feed")
        await ws.send_message(json.dumps({"type": "auth", "token": SUPERVISOR}))
        kind: str = json.loads(await ws.get_message())["type"]
        await ws.aclose()
    return kind


async def receiver_attack(url: str, ca: Path) -> tuple[int, int | None]:
    """A command_result with a bytes map key, sent to the receiver as the gateway would."""
    context = ssl.create_default_context(cafile=str(ca))
    async with open_websocket_url(url, ssl_context=context, extra_headers=[
            (b"authorization", b"Bearer crash-loop-token")]) as ws:
        await ws.send_message(proto.encode(proto.Hello(GATEWAY_ID, os.urandom(8).hex(), ())))
        proto.decode(await ws.get_message())  # welcome
        await ws.send_message(msgpack.packb({"type": "command_result", "id": "x",
                                             "result": "ok", "data": {b"key": 1}}))
        error = proto.decode(await ws.get_message())
        assert isinstance(error, proto.Error)
        with pytest.raises(ConnectionClosed) as closed:
            await ws.get_message()
        return error.code, closed.value.reason.code


def wait_for_events(path: Path, after: int, timeout: float = 20.0) -> int:
    """Control-socket answers until the outbox holds events past `after` (machines playing at
    10/s each: a few hundred milliseconds). There is no cross-process notification to wait on."""
    deadline = time.monotonic() + timeout
    while True:
        last: int = status(path)["outbox"]["last_seq"]
        if last > after + MACHINES:
            return last
        assert time.monotonic() < deadline, "no new events: polling stopped"
        time.sleep(0.2)


def test_hostile_neighbour(plant: dict[str, Any]):
    taken = free_port()
    feed_port = taken.getsockname()[1]
    configure(plant, feed_port)
    base = plant["base"]
    gw = subprocess.Popen([*CLI, "run", "--config", str(plant["config"])],
                          stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                          preexec_fn=limit_descriptors)
    log = GatewayLog(gw.stderr, base / "gateway.log")
    try:
        # 1. The feed port is taken: not fatal, the gateway polls and says so.
        log.wait_for(lambda e: e.get("event") == "gateway ready", 30)
        snapshot = status(plant["control"])
        assert snapshot["feed"]["listening"] is False and "in use" in snapshot["feed"]["bind_error"]
        assert any(e.get("event", "").startswith("feed port unavailable") for e in log.seen)
        taken.close()
        log.wait_for(lambda e: e.get("event") == "feed port bound after retrying", 15)
        assert health(feed_port)["feed"]["bind_failures"] >= 1
        baseline_fds = len(os.listdir(f"/proc/{gw.pid}/fd"))
        first = wait_for_events(plant["control"], 0)

        # 2. Parsers: feed, control, receiver.
        feed = trio.run(feed_attacks, feed_port)
        assert feed["deep_before_auth"] == "auth_required"
        assert feed["deep_after_auth"] == feed["big_target"] == "bad_json"
        assert (feed["ack_nothing"]["result"], feed["ack_nothing"]["reason"]) == (
            "rejected", "no open alert has that seq")
        for bad in (b'{"cmd":"trace","port":[]}', b'{"cmd":"trace","port":{}}',
                    b'{"cmd":"status","x":' + b"[" * 5000 + b"]" * 5000 + b"}"):
            assert control(plant["control"], bad)["ok"] is False
        url = next(line.split('"')[1] for line in plant["config"].read_text().splitlines()
                   if line.startswith("url = "))
        assert trio.run(receiver_attack, url, base / "ca.pem") == (proto.CLOSE_PROTOCOL,) * 2
        head = http(feed_port, b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20_000 + b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431 ")

        # 3. Floods: the daemon's descriptors stay bounded, everyone else still gets in.
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1]))
        seen = trio.run(flood, feed_port, plant["control"], gw.pid, 20)
        # auth_failures_per_minute = 10: ten guesses, then 429s; then no free guesses.
        assert seen["logins"]["sequential"] == Counter({"101": 10, "429": 4})
        assert set(seen["logins"]["at_once"]) <= {"429", "503"}
        assert seen["health"]["status"] in ("ok", "degraded") and seen["diag_pid"] == gw.pid
        assert seen["new_login"] == "welcome"
        # Feed caps at this limit: (160 - 96) // 2 = 32 connections, plus 16 for diag.
        assert seen["fds_during_flood"] <= baseline_fds + 32 + 16
        during = wait_for_events(plant["control"], first)
        assert gw.poll() is None

        # 4. Still up, still polling, nothing lost.
        metrics = http(feed_port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                  b"\r\n", "127.0.0.4").decode()
        assert "gateway_feed_refused_connections_total" in metrics
        wait_for_events(plant["control"], during)
        plant["sim"].send_signal(signal.SIGUSR1)         # stop play; wait for the drain
        assert _read_line(plant["sim"], time.monotonic() + 30) == "all-acknowledged"
        last = status(plant["control"])["outbox"]["last_seq"]
        deadline = time.monotonic() + 30
        while max(_receiver_rows(base / "rx.db"), default=0) < last:
            assert time.monotonic() < deadline, "the receiver did not catch up"
            time.sleep(0.1)
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(timeout=10) == 0
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait()
    plant["sim"].send_signal(signal.SIGINT)
    ledger = json.loads(_read_line(plant["sim"], time.monotonic() + 60))
    assert _verify_outbox(plant["outbox"], base / "gw.pub").ok
    conn = open_readonly(plant["outbox"])
    try:
        outbox_rows = dict(iter_envelopes(conn))
        for i, machine in enumerate(ledger["machines"]):
            recorded = Counter(code for (code,) in conn.execute(
                "SELECT source_code FROM events WHERE machine = ? AND source_code IS NOT NULL",
                (f"port{i + 1}/1",)))
            assert not Counter(machine["acknowledged_codes"]) - recorded   # none lost
            assert not recorded - Counter(machine["acknowledged_codes"]) \
                - Counter(machine["lost_codes"])                           # none twice
    finally:
        conn.close()
    assert _receiver_rows(base / "rx.db") == outbox_rows
    print(f"hostile: fds {baseline_fds} at rest, {seen['fds_during_flood']} during the flood "
          f"(limit {NOFILE}); logins {seen['logins']}; {seen['events_during_flood']} events "
          f"on the board during the flood; {len(outbox_rows)} events, none lost")
