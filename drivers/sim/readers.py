"""Simulated card readers on pseudo-terminals, for `casino-gateway simulate --readers` and the demo.

Each reader's device path is a symlink (as /dev/serial/by-id/... names are) to the pty it is on
now: when its `unplug` fault fires, the pty is closed (the gateway reads EIO, reports a seated
card removed and reopens with backoff) and after `unplugged_s` the reader comes back on a fresh
pty behind the same path.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import tty
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import trio

from drivers.cardreader.framing import KINDS
from drivers.link.tty import FdChannel
from drivers.sim.cardreader import READER_FAULTS, SimReader

__all__ = ["ReaderFleet", "add_reader_arguments", "run_reader", "serve_readers",
           "start_readers"]


@dataclass(slots=True)
class ReaderFleet:
    device_paths: list[str] = field(default_factory=list)
    readers: list[SimReader] = field(default_factory=list)
    plugs: list[int] = field(default_factory=list)
    changed: trio.Event = field(default_factory=trio.Event)

    def stop_play(self) -> None:
        for reader in self.readers:
            reader.stop()

    def start_play(self) -> None:
        """Players start (again) now: e.g. once the gateway has the readers' ports open (bytes
        written before a port is opened are flushed by the opener)."""
        for reader in self.readers:
            reader.play(trio.current_time())
        self.changed.set()
        self.changed = trio.Event()

    def summary(self) -> dict[str, int]:
        total: dict[str, int] = {"unplugged": sum(p - 1 for p in self.plugs)}
        for reader in self.readers:
            for key, value in reader.ledger.items():
                total[key] = total.get(key, 0) + value
        return total


async def run_reader(reader: SimReader, channel: FdChannel, fleet: ReaderFleet) -> None:
    """Write what the reader says, when it says it, until it asks to be unplugged."""
    while not reader.unplug_requested:
        due = reader.next_due()
        if due > trio.current_time():
            with trio.move_on_at(due):  # inf: stopped, until play starts again
                await fleet.changed.wait()
            continue
        data = reader.take(trio.current_time())
        if data:
            await channel.write(data)


def _open_pty() -> tuple[int, int]:
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    return master, slave


async def _serve_one(reader: SimReader, path: Path, fleet: ReaderFleet, index: int,
                     unplugged_s: float, first: trio.Event) -> None:
    while True:
        master, slave = _open_pty()
        channel = FdChannel(master)
        staged = path.with_name(path.name + ".new")
        staged.unlink(missing_ok=True)
        staged.symlink_to(os.ttyname(slave))
        os.replace(staged, path)
        fleet.plugs[index] += 1
        first.set()
        try:
            await run_reader(reader, channel, fleet)
        finally:
            with trio.CancelScope(shield=True):
                await channel.aclose()  # the gateway's side now reads EIO
            os.close(slave)
        reader.unplug_requested = False
        await trio.sleep(unplugged_s)


async def serve_readers(readers: Sequence[SimReader], *, directory: Path | None = None,
                        unplugged_s: float = 2.0,
                        task_status: trio.TaskStatus[ReaderFleet] = trio.TASK_STATUS_IGNORED,
                        ) -> None:
    """Serve each of `readers` behind a stable symlink `reader-<n>` in `directory` (a fresh
    temporary one by default) until cancelled."""
    fleet = ReaderFleet(readers=list(readers), plugs=[0] * len(readers))
    with tempfile.TemporaryDirectory(prefix="sim-readers-") as tmp:
        base = directory or Path(tmp)
        async with trio.open_nursery() as nursery:
            for n, reader in enumerate(readers):
                path = base / f"reader-{n}"
                fleet.device_paths.append(str(path))
                first = trio.Event()
                nursery.start_soon(_serve_one, reader, path, fleet, n, unplugged_s, first)
                await first.wait()
            task_status.started(fleet)


def _reader_faults(text: str) -> frozenset[str]:
    names = frozenset(n for n in text.split(",") if n)
    unknown = names - set(READER_FAULTS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown reader faults: {', '.join(sorted(unknown))}")
    return names


def add_reader_arguments(p: argparse.ArgumentParser) -> None:
    """`simulate --readers N`: player-card readers beside the first N machines."""
    p.add_argument("--readers", type=int, default=0, metavar="N",
                   help="a simulated player-card reader beside each of the first N machines, "
                   "printed after the machines as 'reader PATH beside MACHINE_PATH'")
    p.add_argument("--reader-kind", choices=KINDS, default="insert")
    p.add_argument("--reader-faults", type=_reader_faults, default=frozenset(),
                   help="comma-separated: " + ",".join(READER_FAULTS))
    p.add_argument("--reader-rate", type=float, default=0.2, metavar="ACTIONS_PER_S")


async def start_readers(nursery: trio.Nursery, args: argparse.Namespace,
                        machine_paths: Sequence[str]) -> ReaderFleet | None:
    """Start the readers `args` asks for and print their lines; None when it asks for none."""
    count = min(args.readers, len(machine_paths))
    if count <= 0:
        return None
    readers = [SimReader(args.reader_kind, seed=args.seed * 1000 + n, rate=args.reader_rate,
                         faults=args.reader_faults) for n in range(count)]
    fleet: ReaderFleet = await nursery.start(lambda task_status: serve_readers(
        readers, task_status=task_status))
    for path, machine in zip(fleet.device_paths, machine_paths, strict=False):
        print(f"reader {path} beside {machine}")
    return fleet
