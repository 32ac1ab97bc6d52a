"""The real daemon with a card reader port (simulated insert reader with every fault, on a pty):
player events are committed against the machine beside the reader, and no card number or UID is
anywhere -- outbox file, logs, status (what the control socket serves), `diag trace` frames."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import pytest
import structlog
import trio

from drivers.sim.cardreader import SimReader
from drivers.sim.readers import serve_readers
from gateway import daemon
from gateway.config import Config, GatewaySection, LogSection, PortSection, UplinkSection
from gateway.control import snapshot
from gateway.demo import _prepare
from gateway.monitor import HealthLimits, assess


async def test_daemon_records_card_events_and_never_a_number(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture
                                                             ) -> None:
    made = _prepare(tmp_path)
    sim = SimReader("insert", seed=5, rate=4.0, faults=frozenset({"bounce", "garbage",
                                                                  "misread", "unplug"}),
                    probability=0.15)
    secrets = [s for card in sim.pool for s in (card.number, card.uid, card.number[-6:])]
    sim.stop()
    committed: list[dict] = []
    enough = trio.Event()
    frames: list[dict] = []
    caplog.set_level(logging.DEBUG)
    with trio.fail_after(60), structlog.testing.capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            readers = await nursery.start(lambda task_status: serve_readers(
                [sim], directory=tmp_path, unplugged_s=0.1, task_status=task_status))
            config = Config(
                gateway=GatewaySection(id="cr-gw", key_file=made["key_file"],
                                       state_dir=tmp_path / "state"),
                uplink=UplinkSection(url="wss://127.0.0.1:9/v1/stream",
                                     token_file=tmp_path / "uplink.token",
                                     ca_file=tmp_path / "ca.pem"),
                ports=(PortSection.of("reader-1", Path(readers.device_paths[0]),
                                      protocol="cardreader", machine="egm-1/1",
                                      secret_file=str(made["venue_secret"]), debounce_ms=500),),
                log=LogSection(level="debug"))
            gw = await nursery.start(lambda task_status: daemon.run(
                config, handle_signals_=False, task_status=task_status))

            def seen(envelopes: list[dict]) -> None:
                committed.extend(e for e in envelopes if e["channel"] == "player")
                if sum(e["event"] == "cardRemoved" for e in committed) >= 3:
                    enough.set()

            gw.outbox.commit_listeners.append(seen)

            async def trace() -> None:
                with gw.trace.subscribe("reader-1") as (_sub, receive):
                    async for frame in receive:
                        frames.append(frame)

            nursery.start_soon(trace)
            await trio.lowlevel.checkpoint()
            readers.start_play()
            await enough.wait()
            status = json.dumps(gw.status(), default=str)
            snap = await snapshot(gw)
            line = gw.status_line()
            # A reader that is plugged in is no "machine offline" on /health.
            health = assess(gw.status(), HealthLimits(), wall=time.time())
            nursery.cancel_scope.cancel()

    assert {e["machine"]["port"] for e in committed} == {"egm-1"}
    assert {"cardInserted", "cardRemoved"} <= {e["event"] for e in committed}
    assert all(len(e["data"].get("card_id", "0" * 32)) == 32 for e in committed)
    assert frames and all(f["dir"] == "rx" for f in frames)
    stored = b"".join(p.read_bytes() for p in (tmp_path / "state").glob("outbox.db*"))
    shown = {"outbox": stored.decode("latin-1"), "status": status,
             "logs": json.dumps(logs, default=str) + caplog.text,
             "trace": json.dumps(frames) + "".join(bytes.fromhex(f["hex"]).decode("latin-1")
                                                    for f in frames)}
    for where, text in shown.items():
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"card data in the {where}: {leaked[:3]}"
    assert os.stat(made["venue_secret"]).st_mode & 0o077 == 0
    # (The reader may be unplugged at that moment: "port reader-1 down" is then right.)
    assert not [r for r in health if "reader-1: machine" in r], health
    # A reader's port is a card reader, not a machine, in the status line (floor review).
    assert line.startswith(("0/0 machines online, 1/1 card readers online, ",
                            "0/0 machines online, 0/1 card readers online, ")), line
    assert snap["ports"]["reader-1"]["machines"][0]["device"] == "card_reader"
    # The control socket and diag show the reader's own figures (docs/cardreader.md).
    figures = snap["ports"]["reader-1"]["machines"][0]["figures"]
    assert figures["kind"] == "insert" and figures["reads"] >= 3
    assert {"bad_reads", "bad_reads_held", "bounces", "noise_bytes", "card_present"} <= set(figures)
