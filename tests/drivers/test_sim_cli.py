"""The `simulate` subcommand as a real process: prints pty paths, stops on SIGINT with a summary."""

from __future__ import annotations

import argparse
import json
import pathlib
import signal
import subprocess
import sys

import pytest
import trio

from drivers.sim.cli import add_commands

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
SCRIPT = """
import argparse, sys
from drivers.sim.cli import add_commands
parser = argparse.ArgumentParser()
add_commands(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def test_arguments() -> None:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["simulate", "--machines", "3", "--no-rte", "--rate", "1.5",
                              "--faults", "crc,busy"])
    assert (args.machines, args.rte, args.rate, args.faults) == (3, False, 1.5, ["crc", "busy"])
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate", "--faults", "meteor"])


async def test_simulate_process_prints_paths_and_summary() -> None:
    root = ROOT
    with trio.fail_after(20):
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-c", SCRIPT, "simulate", "--machines", "2", "--rate", "5",
             "--faults", "crc,busy"],
            stdout=subprocess.PIPE, cwd=root)
        assert proc.stdout is not None
        out = b""
        while out.count(b"\n") < 2:
            chunk = await proc.stdout.receive_some()
            assert chunk, "simulate exited early"
            out += chunk
        paths = out.decode().split()
        assert len(paths) == 2 and all(p.startswith("/dev/pts/") for p in paths)
        proc.send_signal(signal.SIGINT)
        while chunk := await proc.stdout.receive_some():
            out += chunk
        assert await proc.wait() == 0
    summary = json.loads(out.decode().splitlines()[-1])
    assert set(summary) == {"raised", "acknowledged", "pending", "lost_by_overflow", "machines"}
