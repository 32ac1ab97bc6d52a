"""The real processes of one certification scenario, and what is measured about them.

One `Harness` per scenario, in its own directory: a gateway key, a bearer token, a trustme CA
and the receiver's certificate for 127.0.0.1; `casino-gateway receiver run` (TLS),
`casino-gateway simulate` (pseudo-terminals), optionally the flapping proxy in between, and
`casino-gateway run` (started, killed and restarted as the scenario wants). Everything listens
on 127.0.0.1 only.

Resource figures come from /proc (psutil is not installed): VmHWM (peak RSS) from
/proc/PID/status and utime+stime from /proc/PID/stat, read by a sampler thread and once more
just before every signal that ends a process, so a SIGKILLed process still counts.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import trustme

BENCH = Path(__file__).resolve().parents[1]
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from crash_loop import _buffers, _read_line  # noqa: E402

CLI = [sys.executable, "-m", "gateway.cli"]
PROXY = [sys.executable, str(BENCH / "certify_lib" / "proxy.py")]
GATEWAY_ID = "certify-gw"
CLK_TCK = os.sysconf("SC_CLK_TCK")
SAMPLE_EVERY_S = 0.25


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """One short `casino-gateway` command; its stderr goes into the error if it fails."""
    done = subprocess.run([*CLI, *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"casino-gateway {' '.join(args[:2])} exited {done.returncode}: "
                           f"{done.stderr.strip()[-600:]}")
    return done


def read_proc(pid: int) -> tuple[int, float] | None:
    """(VmHWM in kB, utime+stime in s) of a live process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            hwm = next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
        return hwm, (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


class ProcStats:
    """Peak RSS and CPU time per role (gateway, receiver, simulate, proxy), summed over the
    incarnations of a role for CPU and maximised for RSS."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._live: dict[int, str] = {}
        self._last: dict[int, tuple[str, int, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def watch(self, role: str, pid: int) -> None:
        with self._lock:
            self._live[pid] = role
        self.sample(pid)

    def sample(self, pid: int) -> None:
        with self._lock:
            role = self._live.get(pid)
        if role is None:
            return
        got = read_proc(pid)
        # A zombie (exited, not yet reaped) shows no VmHWM: keep the last real figures.
        if got is not None and got[0] > 0:
            with self._lock:
                _, hwm, cpu = self._last.get(pid, (role, 0, 0.0))
                self._last[pid] = (role, max(hwm, got[0]), max(cpu, got[1]))

    def forget(self, pid: int) -> None:
        with self._lock:
            self._live.pop(pid, None)

    def _run(self) -> None:
        # A sampler, not a wait: /proc has no change notification, so the figures are read at a
        # fixed tick until the scenario ends (the Event makes the tick interruptible).
        while not self._stop.wait(SAMPLE_EVERY_S):
            with self._lock:
                pids = list(self._live)
            for pid in pids:
                self.sample(pid)

    def close(self) -> dict[str, dict[str, float]]:
        self._stop.set()
        self._thread.join()
        out: dict[str, dict[str, float]] = {}
        for role, hwm, cpu in self._last.values():
            entry = out.setdefault(role, {"peak_rss_mb": 0.0, "cpu_s": 0.0, "processes": 0})
            entry["peak_rss_mb"] = max(entry["peak_rss_mb"], round(hwm / 1024, 1))
            entry["cpu_s"] = round(entry["cpu_s"] + cpu, 2)
            entry["processes"] += 1
        return out


class OutboxTail:
    """Reads every new outbox row (seq, machine, source_code, body) as it appears, for scenarios
    where the outbox prunes delivered rows (free space under the floor): the conservation check
    then still knows what each pruned row was. Cross-process: SQLite cannot notify another
    process, so the file is read at a fixed tick (0.1 s) until the scenario ends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[int, tuple[str | None, int | None, bytes]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        last = 0
        while not self._stop.wait(0.1):
            if not self.path.exists():
                continue
            try:
                conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=1)
                try:
                    for seq, machine, code, body in conn.execute(
                            "SELECT seq, machine, source_code, body FROM events WHERE seq > ? "
                            "ORDER BY seq", (last,)):
                        self.rows[seq] = (machine, code, body)
                        last = seq
                finally:
                    conn.close()
            except sqlite3.Error:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


class ReadyWatch:
    """The notify socket systemd would hand the gateway (NOTIFY_SOCKET, an abstract one): `run`
    sends READY=1 once every service is up and gatewayStarted is in the outbox, so a scenario
    waits on that, not on a guess of how long a start takes (a loaded host made it over 5 s,
    and the key rotation found no outbox to rotate in)."""

    def __init__(self) -> None:
        self.name = f"casino-certify-{os.getpid()}-{id(self):x}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name)

    def env(self) -> dict[str, str]:
        env = dict(os.environ, NOTIFY_SOCKET="@" + self.name)
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        return env

    def forget(self) -> None:
        """Drop what earlier gateway processes sent."""
        self.sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                self.sock.recv(4096)
        self.sock.setblocking(True)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"the gateway did not report READY=1 within {timeout:g} s")
            self.sock.settimeout(remaining)
            try:
                message = self.sock.recv(4096).decode()
            except TimeoutError:
                continue
            if "READY=1" in message.split("\n"):
                return

    def close(self) -> None:
        self.sock.close()


class Harness:
    def __init__(self, base: Path, *, machines: int, rate: float, seed: int,
                 faults: tuple[str, ...] = (), fault_probability: float = 0.02,
                 flaps: bool = False, poll_interval_ms: int = 40,
                 commands: tuple[str, ...] = ("acknowledgeAlert", "requestMeters"),
                 tmpfs_mb: int = 0, min_free_mb: float | None = None,
                 tail_outbox: bool = False) -> None:
        self.base = base
        self.machines, self.rate, self.seed = machines, rate, seed
        self.faults, self.fault_probability = faults, fault_probability
        self.flaps = flaps
        self.poll_interval_ms = poll_interval_ms
        self.commands = commands
        self.tmpfs_mb, self.min_free_mb = tmpfs_mb, min_free_mb
        self.mounted = False
        self.ballast = base / "state" / "ballast"
        self.rotations: list[dict[str, Any]] = []
        self.tail_outbox = tail_outbox
        self.tail: OutboxTail | None = None
        self.logs = contextlib.ExitStack()
        self.stats = ProcStats()
        self.ready = ReadyWatch()
        self.receiver: subprocess.Popen | None = None
        self.sim: subprocess.Popen | None = None
        self.proxy: subprocess.Popen | None = None
        self.gateway: subprocess.Popen | None = None
        self.receiver_port = 0
        self.gateway_starts = 0
        self.gateway_start_times: list[float] = []
        self.gateway_kills = 0
        self.receiver_restarts = 0
        self.proxy_summary: dict[str, Any] = {}
        self.outbox = base / "state" / "outbox.db"
        self.rx_db = base / "rx.db"
        self.pub = base / "gw.pub"

    # -- set-up ----------------------------------------------------------------------------------

    def start(self) -> None:
        base = self.base
        base.mkdir(parents=True, exist_ok=True)
        if self.tmpfs_mb:
            # A small filesystem of its own for the state directory, so "full" is real (ENOSPC
            # territory) without touching the host's disk. Needs root; tmpfs has no fsync cost.
            (base / "state").mkdir()
            subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.tmpfs_mb}m", "tmpfs",
                            str(base / "state")], check=True, capture_output=True)
            self.mounted = True
        run_cli("keys", "init", "--key-file", str(base / "gw.key"))
        run_cli("keys", "export-public", "--key-file", str(base / "gw.key"), "--out",
                str(self.pub))
        fd = os.open(base / "token", os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, b"certify-token\n")
        os.close(fd)
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(base / "ca.pem"))
        cert = ca.issue_cert("127.0.0.1")
        cert.private_key_pem.write_to_path(str(base / "rx.key"))
        (base / "rx.pem").write_bytes(b"".join(c.bytes() for c in cert.cert_chain_pems))
        run_cli("receiver", "register", GATEWAY_ID, str(self.pub), "--token-file",
                str(base / "token"), "--db", str(self.rx_db))
        url = self.start_receiver()
        if self.flaps:
            self.proxy = subprocess.Popen(
                [*PROXY, str(self.receiver_port), "--seed", str(self.seed)],
                stdout=subprocess.PIPE,
                stderr=self.logs.enter_context(open(base / "proxy.log", "w")))
            self.stats.watch("proxy", self.proxy.pid)
            proxy_port = int(_read_line(self.proxy, time.monotonic() + 30))
            url = url.replace(f":{self.receiver_port}", f":{proxy_port}")
        # --realtime: the machines keep SAS timing on a loaded host as hardware does (docs/sas.md,
        # "No accidental late answers"); without it a starved simulator broke that timing.
        sim_cmd = [*CLI, "simulate", "--machines", str(self.machines), "--rate", str(self.rate),
                   "--seed", str(self.seed), "--realtime"]
        if self.faults:
            sim_cmd += ["--faults", ",".join(self.faults),
                        "--fault-probability", str(self.fault_probability)]
        self.sim = subprocess.Popen(
            sim_cmd, stdout=subprocess.PIPE,
            stderr=self.logs.enter_context(open(base / "simulate.log", "w")))
        self.stats.watch("simulate", self.sim.pid)
        deadline = time.monotonic() + 30
        paths = [_read_line(self.sim, deadline) for _ in range(self.machines)]
        ports = "\n".join(
            f'[[ports]]\nname = "port{i + 1}"\ndevice = "{p}"\n'
            f'poll_interval_ms = {self.poll_interval_ms}\n' for i, p in enumerate(paths))
        allowed = ", ".join(f'"{c}"' for c in self.commands)
        (base / "gateway.toml").write_text(
            f'[gateway]\nid = "{GATEWAY_ID}"\nkey_file = "gw.key"\nstate_dir = "state"\n'
            f'[uplink]\nurl = "{url}"\ntoken_file = "token"\nca_file = "ca.pem"\n'
            f'backoff_initial_s = 0.1\nbackoff_max_s = 1.0\n'
            f'[commands]\nallowed = [{allowed}]\n'
            + (f'[outbox]\nmin_free_mb = {self.min_free_mb}\n'
               if self.min_free_mb is not None else '') +
            f'[log]\nlevel = "info"\nformat = "json"\n{ports}')
        self.gateway_log = self.logs.enter_context(open(base / "gateway.log", "a"))
        if self.tail_outbox:
            self.tail = OutboxTail(self.outbox)

    def start_receiver(self) -> str:
        log = self.logs.enter_context(open(self.base / "receiver.log", "a"))
        self.receiver = subprocess.Popen(
            [*CLI, "receiver", "run", "--listen", f"127.0.0.1:{self.receiver_port}",
             "--db", str(self.rx_db), "--cert", str(self.base / "rx.pem"),
             "--key", str(self.base / "rx.key")], stdout=subprocess.PIPE, stderr=log)
        self.stats.watch("receiver", self.receiver.pid)
        url = _read_line(self.receiver, time.monotonic() + 30)
        if not self.receiver_port:
            self.receiver_port = int(url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
        return url

    def _end(self, proc: subprocess.Popen, sig: int, timeout: float = 30) -> int:
        self.stats.sample(proc.pid)
        proc.send_signal(sig)
        code = proc.wait(timeout=timeout)
        self.stats.forget(proc.pid)
        if proc.stdout is not None:
            _buffers.pop(proc.stdout.fileno(), None)  # the fd number is reused by the next pipe
            proc.stdout.close()
        return code

    def restart_receiver(self) -> None:
        assert self.receiver is not None
        self._end(self.receiver, signal.SIGKILL)
        self.receiver_restarts += 1
        self.start_receiver()

    # -- the gateway -----------------------------------------------------------------------------

    def start_gateway(self) -> None:
        self.ready.forget()
        self.gateway = subprocess.Popen([*CLI, "run", "--config", str(self.base / "gateway.toml")],
                                        stdout=subprocess.DEVNULL, stderr=self.gateway_log,
                                        env=self.ready.env())
        self.gateway_starts += 1
        self.gateway_start_times.append(time.time())
        self.stats.watch("gateway", self.gateway.pid)

    def wait_gateway_ready(self, timeout: float = 120) -> None:
        """Until the gateway started last reports READY=1 (see ReadyWatch)."""
        self.ready.wait_ready(timeout)

    def kill_gateway(self) -> None:
        assert self.gateway is not None
        self._end(self.gateway, signal.SIGKILL)
        self.gateway_kills += 1
        self.gateway = None

    def stop_gateway(self) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds to exit)."""
        assert self.gateway is not None
        started = time.monotonic()
        code = self._end(self.gateway, signal.SIGTERM)
        self.gateway = None
        return code, time.monotonic() - started

    def send_command(self, name: str, *, port: str, address: int, args: dict[str, Any],
                     wait_s: float = 20) -> dict[str, Any]:
        done = subprocess.run(
            [*CLI, "receiver", "command", GATEWAY_ID, name, "--target-port", port,
             "--target-address", str(address), "--args", json.dumps(args),
             "--db", str(self.rx_db), "--wait", str(wait_s)], capture_output=True, text=True)
        try:
            return json.loads(done.stdout)
        except ValueError:
            return {"result": "no answer", "exit": done.returncode, "stderr": done.stderr[-300:]}

    def fill_disk(self, leave_mb: float) -> int:
        """Allocate a ballast file so that `leave_mb` stay free on the state filesystem."""
        st = os.statvfs(self.base / "state")
        size = st.f_bavail * st.f_frsize - int(leave_mb * 1024 * 1024)
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, max(size, 1))
        finally:
            os.close(fd)
        return size

    def free_disk(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def free_mb(self) -> float:
        st = os.statvfs(self.base / "state")
        return round(st.f_bavail * st.f_frsize / 1024 / 1024, 1)

    def unmount(self) -> None:
        if self.mounted:
            saved = self.base / "state-saved"
            saved.mkdir(exist_ok=True)
            for f in (self.base / "state").iterdir():
                if f.is_file() and f.name != "ballast":
                    (saved / f.name).write_bytes(f.read_bytes())
            subprocess.run(["umount", str(self.base / "state")], check=True, capture_output=True)
            self.mounted = False

    def rotate_key(self) -> dict[str, Any]:
        """Mid-stream rotation as operations does it: stop the gateway, `keys rotate`, register
        the new public key with the platform, start the gateway again."""
        code, stop_s = self.stop_gateway()
        started = time.monotonic()
        key = str(self.base / "gw.key")
        rotated = run_cli("keys", "rotate", "--key-file", key, "--db", str(self.outbox))
        new_pub = self.base / f"gw.{len(self.rotations) + 1}.pub"
        run_cli("keys", "export-public", "--key-file", key, "--out", str(new_pub))
        run_cli("receiver", "register", GATEWAY_ID, str(new_pub), "--token-file",
                str(self.base / "token"), "--db", str(self.rx_db))
        self.start_gateway()
        info = {"sigterm_exit_code": code, "stop_s": round(stop_s, 2),
                "rotate_and_register_s": round(time.monotonic() - started, 2),
                "output": rotated.stdout.strip().splitlines()[:2]}
        self.wait_gateway_ready()   # mid-stream: the next rotation finds it streaming
        self.rotations.append(info)
        return info

    # -- the end of play -------------------------------------------------------------------------

    def drain(self) -> dict[str, Any]:
        """Stop flapping and play, wait until the machines have every exception acknowledged and
        the receiver holds the whole outbox, stop the gateway (SIGTERM), take the ledger."""
        if self.proxy is not None:
            self.proxy.send_signal(signal.SIGUSR1)
        if self.gateway is None:
            self.start_gateway()
        assert self.sim is not None
        self.sim.send_signal(signal.SIGUSR1)
        line = _read_line(self.sim, time.monotonic() + 120)
        assert line == "all-acknowledged", line
        stops = []
        for _ in range(3):
            self._wait_receiver_caught_up(timeout=120)
            stops.append(self.stop_gateway())
            if self.receiver_max() >= self.outbox_max():
                break
            # Something was recorded after the catch-up (a device going offline, an uplink
            # event): run the gateway once more so it is delivered too.
            self.start_gateway()
        self.stats.sample(self.sim.pid)
        self.sim.send_signal(signal.SIGINT)
        # Read the ledger before waiting: it can be far larger than a pipe buffer, and the
        # simulator only exits once it is written.
        ledger = json.loads(_read_line(self.sim, time.monotonic() + 120))
        self.sim.wait(timeout=30)
        (self.base / "ledger.json").write_text(json.dumps(ledger))
        return {"ledger": ledger, "sigterm_exit_code": stops[-1][0],
                "sigterm_stop_s": round(max(s for _, s in stops), 2)}

    def outbox_max(self) -> int:
        conn = sqlite3.connect(f"file:{self.outbox}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()[0]
        finally:
            conn.close()

    def receiver_max(self) -> int:
        conn = sqlite3.connect(f"file:{self.rx_db}?mode=ro", uri=True)
        try:
            return conn.execute("SELECT coalesce(max(seq), 0) FROM events WHERE gateway_id = ?",
                                (GATEWAY_ID,)).fetchone()[0]
        finally:
            conn.close()

    def _wait_receiver_caught_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = self.outbox_max()
        # Cross-process: SQLite cannot notify another process, so the receiver's table is read
        # until it holds the outbox's last event (bounded by the deadline), as crash_loop.py does.
        while self.receiver_max() < last:
            if time.monotonic() > deadline:
                raise TimeoutError("the receiver did not catch up with the outbox")
            time.sleep(0.1)

    def close(self) -> dict[str, dict[str, float]]:
        if self.gateway is not None and self.gateway.poll() is None:
            self._end(self.gateway, signal.SIGKILL)
        if self.proxy is not None and self.proxy.poll() is None:
            self.stats.sample(self.proxy.pid)
            self.proxy.send_signal(signal.SIGINT)
            self.proxy.wait(timeout=30)
            with contextlib.suppress(Exception):
                self.proxy_summary = json.loads(_read_line(self.proxy, time.monotonic() + 5))
        for proc in (self.sim, self.receiver):
            if proc is not None and proc.poll() is None:
                self._end(proc, signal.SIGTERM)
        self.logs.close()
        self.ready.close()
        if self.tail is not None:
            self.tail.close()
        return self.stats.close()
