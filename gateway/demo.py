"""`casino-gateway demo`: the whole product on one box, on loopback, with a conservation summary.

Simulated machines play on pseudo-terminals (the PARMRK wakeup encoding, exactly as a real UART
reports it), the real daemon polls them, signs and commits every event, and streams over TLS (a
certificate made for this run) to the reference receiver, which verifies every signature and the
chain. At the end the machines stop playing, every pending exception is acknowledged, the uplink
drains, and the summary checks that nothing was lost or duplicated on the way.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import signal
import sys
import tempfile
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio

from drivers.sim.cardreader import SimReader
from drivers.sim.fleet import serve_fleet
from drivers.sim.readers import serve_readers
from gateway import daemon
from gateway.config import (
    Config,
    FeedSection,
    FeedTokenSection,
    GatewaySection,
    LogSection,
    PortSection,
    UplinkSection,
)
from gateway.feed.protocol import hash_token
from gateway.logs import configure_logging
from gateway.outbox import readers
from gateway.receiver.server import ReceiverSettings, serve_receiver
from gateway.signing import write_signing_key

__all__ = ["run_demo"]

GATEWAY_ID = "demo-gateway"
log = structlog.get_logger("gateway.demo")


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _prepare(base: Path) -> dict[str, Any]:
    """Keys, token and a TLS certificate for the receiver, made fresh for this run."""
    base.mkdir(parents=True, exist_ok=True)
    key_file = base / "gateway.key"
    if key_file.exists():
        key_file.unlink()
    signer = write_signing_key(key_file)
    token = secrets.token_urlsafe(32)
    _write_secret(base / "uplink.token", token + "\n")
    try:
        import trustme  # the [demo] extra: a venue install does not carry a test CA
    except ImportError:
        raise SystemExit("casino-gateway demo needs trustme for its receiver's certificate: "
                         "pip install 'casino-edge-gateway[demo]'") from None
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(base / "ca.pem"))
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(str(base / "receiver.key"))
    (base / "receiver.pem").write_bytes(b"".join(c.bytes() for c in server.cert_chain_pems))
    os.chmod(base / "receiver.key", 0o600)
    # The venue secret the card readers' numbers are hashed with (docs/cardreader.md).
    _write_secret(base / "venue.secret", secrets.token_hex(32) + "\n")
    return {"signer": signer, "token": token, "key_file": key_file,
            "venue_secret": base / "venue.secret"}


def _outbox_figures(path: Path, port_names: list[str]) -> dict[str, Any]:
    conn = readers.open_readonly(path)
    try:
        durable = readers.count_events(conn)
        per_machine = {name: readers.recorded_codes(conn, f"{name}/1") for name in port_names}
    finally:
        conn.close()
    return {"durable": durable, "per_machine": per_machine}


PLAYER_EVENTS = ("cardInserted", "cardRemoved", "cardRead", "cardBadRead")


def _card_figures(receiver_db: Path, card_readers: Any) -> dict[str, int]:
    """Player events the receiver stored, and how many of its stored bodies hold a simulated
    card number or UID in clear (must be none: docs/cardreader.md)."""
    conn = readers.open_readonly(receiver_db)
    try:
        counts = dict(conn.execute(
            "SELECT event, count(*) FROM events WHERE gateway_id = ? AND event IN "
            f"({', '.join('?' * len(PLAYER_EVENTS))}) GROUP BY event",
            (GATEWAY_ID, *PLAYER_EVENTS)).fetchall())
        bodies = [body for (body,) in conn.execute("SELECT body FROM events")]
    finally:
        conn.close()
    secrets_ = {s for r in card_readers.readers for c in r.pool for s in (c.number, c.uid)}
    return {"card_events_received": sum(counts.values()),
            "cards_inserted_received": counts.get("cardInserted", 0),
            "card_numbers_in_clear": sum(1 for b in bodies for s in secrets_ if s.encode() in b)}


def _summary(fleet: Any, receiver: Any, gw: daemon.Gateway, port_names: list[str]) -> dict:
    ledger = fleet.summary()
    outbox = _outbox_figures(gw.config.outbox_path, port_names)
    received = receiver.store.figures(GATEWAY_ID)
    recorded = sum(len(codes) for codes in outbox["per_machine"].values())
    # Each acknowledged exception must be exactly one recorded event, machine by machine.
    dup_recorded, lost_recorded, unexplained = 0, 0, 0
    for name, path in zip(port_names, fleet.device_paths, strict=True):
        acked = Counter(fleet.acknowledged_codes(path))
        recorded_codes = Counter(outbox["per_machine"][name])
        dup_recorded += sum((recorded_codes - acked).values())
        lost_recorded += sum((acked - recorded_codes).values())
        # A machine whose 20-entry queue overflows drops its oldest exceptions itself and says so
        # with exception 70 (SAS reference 2.1); only an overflow it did not report is a loss.
        if fleet.lost_by_overflow(path) and 0x70 not in recorded_codes:
            unexplained += fleet.lost_by_overflow(path)
    return {
        "raised": ledger["raised"],
        "acked_by_machines": ledger["acknowledged"],
        "recorded": recorded,
        "durable": outbox["durable"],
        "received": received["received"],
        "bad_signatures": received["bad_signatures"],
        "chain_breaks": received["chain_breaks"],
        "duplicates": dup_recorded + received.get("stored_twice", 0),
        "redeliveries_discarded": received["duplicates"],
        "lost": lost_recorded + max(0, outbox["durable"] - received["received"]) + unexplained,
        "pending_at_machines": ledger["pending"],
        "dropped_by_machines_overflow": ledger["lost_by_overflow"],
        "capture_to_durable_p99_ms": gw.outbox.statistics()["durable_p99_ms"],
    }


async def _wait_drained(gw: daemon.Gateway, receiver: Any) -> None:
    """Until the platform acknowledged every durable event; wakes on each uplink change (acks)."""
    while not (gw.outbox.delivered_seq == gw.outbox.last_seq
               and receiver.store.figures(GATEWAY_ID)["high_water"] == gw.outbox.last_seq):
        await gw.uplink.wait_changed()


async def _demo(machines: int, duration: float | None, as_json: bool, base: Path,
                rate: float, feed_port: int) -> dict[str, Any]:
    made = _prepare(base)
    attendant_token = secrets.token_urlsafe(12)
    out = sys.stderr if as_json else sys.stdout
    async with trio.open_nursery() as nursery:
        receiver = await nursery.start(serve_receiver, ReceiverSettings(
            host="127.0.0.1", port=0, db_path=base / "receiver.db",
            certfile=base / "receiver.pem", keyfile=base / "receiver.key"))
        receiver.store.register(GATEWAY_ID, made["token"], bytes(made["signer"].verify_key).hex())
        fleet = await nursery.start(partial(serve_fleet, machines, rte=True,
                                            seed=secrets.randbits(32), events_per_second=rate,
                                            profile="floor"))  # alerts at realistic rates
        port_names = [f"port{i + 1}" for i in range(machines)]
        # An insert card reader beside every machine; players start once the gateway has the
        # readers' ports open (docs/cardreader.md, "Simulator").
        card_readers = await nursery.start(partial(serve_readers, [
            SimReader("insert", seed=secrets.randbits(32), rate=max(0.5, rate / 4),
                      faults=frozenset({"misread", "bounce", "garbage"}))
            for _ in range(machines)]))
        card_readers.stop_play()
        config = _demo_config(base, made, receiver.url, port_names, fleet.device_paths,
                              card_readers.device_paths, attendant_token, feed_port)
        gw = await nursery.start(partial(daemon.run, config, handle_signals_=False))
        card_readers.start_play()
        board = (f"demo: alert board http://127.0.0.1:{gw.feed_port}/ "
                 f"(attendant token: {attendant_token})" if gw.feed_port is not None else
                 f"demo: alert board: port {feed_port} is in use, so no board this run (the "
                 f"gateway retries it); run with --feed-port 0 for any free port")
        print(f"demo: {machines} simulated machines on {', '.join(fleet.device_paths)}, "
              f"a card reader beside each\n"
              f"demo: receiver {receiver.url} (TLS, certificate made for this run)\n"
              f"{board}\n"
              f"demo: state in {base}; "
              f"{f'playing for {duration:g}s' if duration else 'Ctrl-C to stop'}", file=out)

        await _play(duration, out, receiver, fleet, gw)
        if out.isatty():
            print(file=out)
        print("demo: stopping play; waiting for every exception to be acknowledged and the "
              "uplink to drain", file=out)
        fleet.stop_play()
        card_readers.stop_play()
        with trio.move_on_after(60):
            await fleet.wait_all_acknowledged()
        with trio.move_on_after(60):
            await _wait_drained(gw, receiver)
        summary = _summary(fleet, receiver, gw, port_names)
        summary["floor"] = gw.figures().floor_line()  # machines and card readers apart
        summary.update(_card_figures(base / "receiver.db", card_readers))
        nursery.cancel_scope.cancel()
    return summary


def _demo_config(base: Path, made: dict[str, Any], receiver_url: str, port_names: list[str],
                 machine_paths: list[str], reader_paths: list[str], attendant_token: str,
                 feed_port: int) -> Config:
    """The demo gateway's configuration: one SAS port per simulated machine, a card reader
    beside each, the board on loopback."""
    return Config(
        gateway=GatewaySection(id=GATEWAY_ID, key_file=made["key_file"],
                               state_dir=base / "gateway", venue="Demo Casino",
                               region="loopback"),
        uplink=UplinkSection(url=receiver_url, token_file=base / "uplink.token",
                             ca_file=base / "ca.pem"),
        # 100 ms: one machine per line, so the gateway reads up to 10 exceptions a second
        # from each, twice the simulated play's average, and a burst rarely fills the queue.
        ports=tuple(PortSection.of(name, Path(path), (1,), poll_interval_ms=100)
                    for name, path in zip(port_names, machine_paths, strict=True))
        + tuple(PortSection.of(f"reader{i + 1}", Path(path), protocol="cardreader",
                               machine=f"{name}/1", secret_file=str(made["venue_secret"]))
                for i, (name, path) in enumerate(zip(port_names, reader_paths,
                                                     strict=True))),
        log=LogSection(level="warning"),
        feed=FeedSection(host="127.0.0.1", port=feed_port, tokens=(
            FeedTokenSection(name="demo-attendant", sha256=hash_token(attendant_token),
                             role="attendant"),)),
    )


async def _play(duration: float | None, out: Any, receiver: Any, fleet: Any, gw: Any) -> None:
    """Let the machines play until `duration` or Ctrl-C, showing the counts on a terminal."""
    with trio.move_on_after(duration if duration else math.inf) as play:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async def stop_on_signal() -> None:
                async for _ in signals:
                    play.cancel()
                    return

            async with trio.open_nursery() as watch:
                watch.start_soon(stop_on_signal)
                while True:
                    if out.isatty():
                        figures = receiver.store.figures(GATEWAY_ID)
                        ledger = fleet.summary()
                        print(f"\rraised {ledger['raised']:>6}  durable "
                              f"{gw.outbox.last_seq:>6}  received {figures['received']:>6}  "
                              f"| {gw.status_line()}   ", end="", file=out, flush=True)
                    await trio.sleep(1)


def run_demo(*, machines: int, duration: float | None, as_json: bool, state_dir: Path | None,
             rate: float, feed_port: int = 8080) -> int:
    configure_logging("warning", "console" if sys.stderr.isatty() else "json")
    with tempfile.TemporaryDirectory(prefix="casino-demo-") as tmp:
        base = state_dir or Path(tmp)
        summary = trio.run(_demo, machines, duration, as_json, base, rate, feed_port)
    ok = (summary["lost"] == summary["duplicates"] == summary["bad_signatures"]
          == summary["chain_breaks"] == 0
          and summary["acked_by_machines"] == summary["recorded"] > 0
          and summary["raised"] == summary["acked_by_machines"]
          + summary["dropped_by_machines_overflow"]
          and summary["received"] == summary["durable"]
          and summary["card_numbers_in_clear"] == 0)
    if as_json:
        print(json.dumps(summary))
    else:
        width = max(len(k) for k in summary)
        for key, value in summary.items():
            print(f"  {key:<{width}}  {value}")
        print("demo: OK - every exception recorded once, every event received and verified"
              if ok else "demo: FAILED - see the figures above")
    return 0 if ok else 1
