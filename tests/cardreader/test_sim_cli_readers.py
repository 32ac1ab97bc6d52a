"""`casino-gateway simulate --readers`: readers beside machines, as a real process; a gateway-side
reader link reads card swipes from the printed path; SIGINT ends it with the readers' summary."""

from __future__ import annotations

import json
import pathlib
import signal
import subprocess
import sys
from pathlib import Path

import trio

from drivers.cardreader.framing import Framer, Track
from drivers.cardreader.link import open_reader_link

ROOT = str(pathlib.Path(__file__).resolve().parents[2])


async def test_simulate_attaches_readers_beside_machines(tmp_path: Path) -> None:
    with trio.fail_after(30):
        proc = await trio.lowlevel.open_process(
            [sys.executable, "-m", "gateway.cli", "simulate", "--machines", "2", "--rate", "1",
             "--readers", "1", "--reader-kind", "swipe", "--reader-rate", "20"],
            stdout=subprocess.PIPE, cwd=ROOT)
        assert proc.stdout is not None
        out = b""
        while out.count(b"\n") < 3:
            chunk = await proc.stdout.receive_some()
            assert chunk, "simulate exited early"
            out += chunk
        machines = out.decode().splitlines()[:2]
        word, reader_path, beside, machine = out.decode().splitlines()[2].split()
        assert (word, beside, machine) == ("reader", "beside", machines[0])
        link = await open_reader_link(reader_path, lock_dir=tmp_path)
        framer = Framer("swipe")
        tracks: list[Track] = []
        async with link:
            while len(tracks) < 4:
                tracks += [f for f in framer.feed(await link.receive_some())
                           if isinstance(f, Track)]
        assert {t.number for t in tracks} == {1, 2}
        proc.send_signal(signal.SIGINT)
        while chunk := await proc.stdout.receive_some():
            out += chunk
        assert await proc.wait() == 0
    summary = json.loads(out.decode().splitlines()[-1])
    assert summary["readers"]["swiped"] >= 2 and summary["readers"]["unplugged"] == 0
