"""One real daemon on a damaged state directory, for bench/corruption.py: the harness.

A `Plant` holds what every case shares: the gateway's key and token, a TLS CA, a supervisor
feed token, and one `casino-gateway simulate` process whose machines (pseudo terminals) every
case's daemon polls in turn. `Plant.run_daemon` starts, for one state directory, a reference
receiver (`casino-gateway receiver run`) on a copy of the platform's database -- the prior copy
of every event the damaged outbox ever committed -- and `casino-gateway run` beside it, then:
  1. waits for the feed to listen (the daemon's own log line);
  2. asks the feed for a replay from seq 1, so the daemon reads every stored row back (the way a
     board reconnecting with an old cursor does): damage anywhere is met while it runs;
  3. waits for a live event from a machine, newer than the replay (polling, committing);
  4. waits until the receiver holds that event (streaming, accepted by the platform);
  5. stops the daemon with SIGTERM (it must exit 0) and the receiver.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import trustme
from trio_websocket import open_websocket_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crash_loop import _read_line  # noqa: E402

from tests.test_hostile import GatewayLog  # noqa: E402

CLI = [sys.executable, "-m", "gateway.cli"]
GATEWAY_ID = "gw-corrupt"
CHANNELS = ["game", "cash", "alerts", "system"]


def free_port() -> int:
    """A free loopback port (closed before the child binds it: the receiver and the daemon
    start together, so the daemon's config can name the receiver before it listens)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def secret_file(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, text.encode() + b"\n")
    os.close(fd)
    return path


@dataclass
class DaemonRun:
    """What one daemon run showed."""

    up: bool  # fed, polled and streamed, still running at the end, SIGTERM exit 0
    polled_seq: int | None  # the new machine event seen live (its seq in `epoch`)
    epoch: str | None
    replayed: int  # rows the feed replay read back
    received: bool  # the receiver holds the new machine event
    exit_code: int | None
    error: str = ""
    phases: dict[str, float] | None = None  # seconds from the start to each step


class Plant:
    """Keys, certificates, tokens and the simulated machines shared by every case."""

    def __init__(self, base: Path, machines: int = 2, rate: float = 20.0) -> None:
        from gateway.signing import write_signing_key

        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.key_file = base / "gw.key"
        self.signer = write_signing_key(self.key_file)
        self.pub = base / "gw.pub"
        self.pub.write_text(f"{bytes(self.signer.verify_key).hex()} {self.signer.kid}\n")
        self.token = secret_file(base / "token", "corruption-" + secrets.token_hex(16))
        self.supervisor = secrets.token_hex(32)
        ca = trustme.CA()
        self.ca = base / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        cert = ca.issue_cert("127.0.0.1")
        self.rx_key, self.rx_cert = base / "rx.key", base / "rx.pem"
        cert.private_key_pem.write_to_path(str(self.rx_key))
        self.rx_cert.write_bytes(b"".join(c.bytes() for c in cert.cert_chain_pems))
        self._sim_log = open(base / "simulate.log", "w")  # closed in close()
        self.sim = subprocess.Popen(
            [*CLI, "simulate", "--machines", str(machines), "--rate", str(rate), "--seed", "15"],
            stdout=subprocess.PIPE, stderr=self._sim_log)
        deadline = time.monotonic() + 60
        self.ptys = [_read_line(self.sim, deadline) for _ in range(machines)]

    def register(self, rx_db: Path) -> None:
        """A receiver database that knows this gateway (its key and token)."""
        subprocess.run([*CLI, "receiver", "register", GATEWAY_ID, str(self.pub),
                        "--token-file", str(self.token), "--db", str(rx_db)],
                       check=True, capture_output=True)

    def close(self) -> None:
        """Stop the simulator. Its stdout is closed first: on a signal it writes its ledger
        there (large after a long run), which nobody here reads, so it would block on the pipe
        (a full run once waited 30 s for it and lost its summary)."""
        if self.sim.stdout is not None:
            self.sim.stdout.close()
        if self.sim.poll() is None:
            self.sim.terminate()
            try:
                self.sim.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.sim.kill()
                self.sim.wait()
        self._sim_log.close()

    def config(self, case_dir: Path, rx_port: int, feed_port: int) -> Path:
        digest = hashlib.sha256(self.supervisor.encode()).hexdigest()
        ports = "".join(f'[[ports]]\nname = "port{i + 1}"\ndevice = "{p}"\n'
                        f'poll_interval_ms = 40\n' for i, p in enumerate(self.ptys))
        path = case_dir / "gateway.toml"
        path.write_text(
            f'[gateway]\nid = "{GATEWAY_ID}"\nkey_file = "{self.key_file}"\n'
            f'state_dir = "{case_dir / "state"}"\n'
            f'[uplink]\nurl = "wss://127.0.0.1:{rx_port}/v1/stream"\n'
            f'token_file = "{self.token}"\n'
            f'ca_file = "{self.ca}"\nbackoff_initial_s = 0.1\nbackoff_max_s = 0.5\n'
            f'[log]\nlevel = "info"\nformat = "json"\n'
            f'[feed]\nhost = "127.0.0.1"\nport = {feed_port}\n'
            f'[[feed.tokens]]\nname = "sue"\nrole = "supervisor"\nsha256 = "{digest}"\n'
            f'{ports}')
        return path

    def run_daemon(self, case_dir: Path, rx_db: Path, old_traces: set[str],
                   timeout: float = 60.0) -> DaemonRun:
        """The daemon on `case_dir/state`, streaming to a receiver on `rx_db` (see the module
        docstring). Never raises for what the daemon does: the result says it."""
        rx_port, feed_port = free_port(), free_port()
        config = self.config(case_dir, rx_port, feed_port)
        with contextlib.ExitStack() as stack:
            rx_log = stack.enter_context(open(case_dir / "receiver.log", "w"))
            receiver = subprocess.Popen(
                [*CLI, "receiver", "run", "--listen", f"127.0.0.1:{rx_port}", "--db",
                 str(rx_db), "--cert", str(self.rx_cert), "--key", str(self.rx_key)],
                stdout=subprocess.DEVNULL, stderr=rx_log)
            gw = subprocess.Popen([*CLI, "run", "--config", str(config)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            log = GatewayLog(gw.stderr, case_dir / "gateway.log")
            try:
                return self._watch(gw, log, feed_port, rx_db, old_traces,
                                   time.monotonic() + timeout)
            finally:
                for proc in (gw, receiver):
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
                if gw.stderr is not None:
                    gw.stderr.close()

    def _watch(self, gw: subprocess.Popen, log: GatewayLog, feed_port: int, rx_db: Path,
               old_traces: set[str], deadline: float) -> DaemonRun:
        seen: dict[str, Any] = {"replayed": 0}
        started, phases = time.monotonic(), {}
        try:
            log.wait_for(lambda e: e.get("event") == "feed listening",
                         deadline - time.monotonic())
            phases["listening"] = time.monotonic() - started
            trio.run(_replay_then_live, feed_port, self.supervisor, old_traces, seen,
                     deadline)
            phases["polled"] = time.monotonic() - started
            epoch, seq = seen["epoch"], seen["seq"]
            received = _wait_received(rx_db, epoch, seq, deadline)
            phases["received"] = time.monotonic() - started
        except (TimeoutError, OSError, trio.TooSlowError, KeyError) as err:
            alive = gw.poll() is None
            return DaemonRun(False, seen.get("seq"), seen.get("epoch"), seen["replayed"], False,
                             None if alive else gw.returncode,
                             f"{type(err).__name__}: {err} (daemon {'up' if alive else 'exited'})")
        alive = gw.poll() is None
        gw.send_signal(signal.SIGTERM)
        try:
            code = gw.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = None
        phases["stopped"] = time.monotonic() - started
        return DaemonRun(alive and received and code == 0, seq, epoch, seen["replayed"],
                         received, code, "" if code == 0 else f"SIGTERM exit {code}", phases)


async def _replay_then_live(port: int, token: str, old_traces: set[str], seen: dict[str, Any],
                            deadline: float) -> None:
    """Log in to the feed, replay from seq 1 (every stored row read back), then wait for a live
    event from a machine that no old outbox holds: the daemon polled and committed it."""
    with trio.fail_at(trio.current_time() + deadline - time.monotonic()):
        async with open_websocket_url(f"ws://127.0.0.1:{port}/feed") as ws:
            await ws.send_message(json.dumps({"type": "auth", "token": token}))
            await ws.send_message(json.dumps({"type": "subscribe", "channels": CHANNELS}))
            await ws.send_message(json.dumps({"type": "replay", "from_seq": 1}))
            replay_done = False
            while True:
                message = json.loads(await ws.get_message())
                if message["type"] == "error":
                    raise KeyError(f"feed error: {message}")
                if message["type"] == "replay_done":
                    replay_done = True
                    seen["replayed"] = message["sent"]
                if message["type"] != "events" or not replay_done:
                    continue
                for event in message["events"]:
                    if event.get("machine") and event["trace_id"] not in old_traces:
                        seen["epoch"], seen["seq"] = event["epoch"], event["seq"]
                        return


def _wait_received(rx_db: Path, epoch: str, seq: int, deadline: float) -> bool:
    """Until the receiver holds (epoch, seq). Another process's SQLite cannot notify: its file
    is read until then (bounded by the deadline)."""
    while time.monotonic() < deadline:
        conn = sqlite3.connect(f"file:{rx_db}?mode=ro", uri=True)
        try:
            if conn.execute("SELECT 1 FROM events WHERE gateway_id=? AND epoch=? AND seq=?",
                            (GATEWAY_ID, epoch, seq)).fetchone():
                return True
        except sqlite3.OperationalError:
            pass  # the receiver is creating or migrating its file
        finally:
            conn.close()
        time.sleep(0.05)
    raise TimeoutError(f"the receiver never held seq {seq} of epoch {epoch}")
