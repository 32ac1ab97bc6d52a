"""The whole product in one process tree: `casino-gateway demo` as a user runs it."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path


def test_demo_conserves_every_event():
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", "--machines", "3", "--duration", "3",
         "--rate", "4", "--feed-port", "0", "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    # A machine may drop from its own full queue under a slow CI machine; it reports that
    # (exception 70) and the demo counts an unreported drop as lost.
    assert summary["acked_by_machines"] == summary["recorded"] > 0
    assert summary["raised"] == summary["acked_by_machines"] + summary[
        "dropped_by_machines_overflow"]
    assert summary["received"] == summary["durable"] > summary["recorded"]
    assert summary["lost"] == summary["duplicates"] == 0
    assert summary["bad_signatures"] == summary["chain_breaks"] == 0
    # A card reader beside each machine: its events reach the receiver, never a card number.
    assert summary["card_events_received"] >= 3 and summary["card_numbers_in_clear"] == 0
    # Machines and card readers counted apart (floor review: readers were counted as machines).
    assert re.fullmatch(r"\d/3 machines online, \d/3 card readers online", summary["floor"]), \
        summary["floor"]


def test_help_names_every_command():
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "--help"], capture_output=True,
                            text=True, timeout=30)
    for command in ("run", "demo", "keys", "outbox", "receiver", "simulate"):
        assert command in result.stdout


def test_demo_ctrl_c_prints_a_clean_summary(tmp_path: Path):
    """README: `make demo`, then Ctrl-C. The terminal sends SIGINT to the whole process group,
    the signing child included; nothing but the summary may appear."""
    from gateway.filewatch import DirectoryWatch
    from gateway.outbox import open_readonly

    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "demo", "--machines", "2", "--rate", "4",
         "--feed-port", "0", "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("demo: state in"):
                break
        # Wait (on the outbox's own writes) until the machines' play was recorded: exceptions,
        # not the deviceOnline and identity events that a machine's discovery records first.
        outbox = tmp_path / "gateway" / "outbox.db"
        watch = DirectoryWatch(outbox.parent, prefix=outbox.name)
        try:
            while True:
                conn = open_readonly(outbox)
                try:
                    # Exceptions, not deviceOnline: that comes before any play.
                    played = conn.execute(
                        "SELECT count(*) FROM events WHERE source_code IS NOT NULL").fetchone()[0]
                finally:
                    conn.close()
                if played >= 2:
                    break
                watch.wait(recheck_s=1.0)
        finally:
            watch.close()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C at the terminal does
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    assert "demo: OK - every exception recorded once" in out, out
    assert proc.returncode == 0


def test_demo_says_in_one_line_when_the_board_port_is_taken():
    """README: the demo's board listens on 8080; when something else has it, the demo runs on
    (machines, gateway, receiver) and says so in one line, instead of a board at port None."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "demo", "--machines", "1", "--duration", "3",
             "--rate", "4", "--feed-port", str(port)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    [line] = [x for x in result.stdout.splitlines() if x.startswith("demo: alert board")]
    assert line == (f"demo: alert board: port {port} is in use, so no board this run (the "
                    "gateway retries it); run with --feed-port 0 for any free port")
    assert "demo: OK - every exception recorded once" in result.stdout


def test_the_demo_ca_is_an_extra_not_a_runtime_dependency(tmp_path, monkeypatch):
    """A venue install carries no test CA: trustme is the [demo] extra (and [test]), and without it
    the demo says what to install in one line instead of a traceback."""
    import configparser

    import pytest

    from gateway import demo

    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    runtime = cfg["options"]["install_requires"]
    assert "trustme" not in runtime and "trustme" in cfg["options.extras_require"]["demo"]
    monkeypatch.setitem(sys.modules, "trustme", None)  # import trustme -> ImportError
    with pytest.raises(SystemExit, match=r"\[demo\]"):
        demo._prepare(tmp_path)
