"""Backlog drain: N signed events from an in-memory outbox to the reference receiver (design.md 9).

    .venv/bin/python bench/uplink.py --events 200000 [--plain] [--batch 200] [--window 8]

Prints the drain rate (the receiver verifies every signature and commits with synchronous=FULL
before acking) next to a raw baseline measured in the same run: check_event over the same events
with no network and no database. Target: >= 15,000 events/s.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nacl.signing
import trio
import trustme

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.receiver import ReceiverStore  # noqa: E402
from gateway.signing import GENESIS, Signer, check_event, decode_envelope, seal  # noqa: E402
from gateway.uplink.client import UplinkClient, UplinkSettings  # noqa: E402


class BenchOutbox:
    def __init__(self, count: int) -> None:
        self.signer = Signer(nacl.signing.SigningKey.generate())
        self.gateway_id, self.epoch, self.kids = "gw-bench", os.urandom(8).hex(), [self.signer.kid]
        self.delivered_seq = 0
        self.done = trio.Event()
        self.rows: list[bytes] = []
        prev = GENESIS
        for seq in range(1, count + 1):
            envelope = {"event": "betPlaced", "channel": "game", "schema_version": "1.0.0",
                        "id": f"{self.gateway_id}:{self.epoch}:{seq}", "seq": seq,
                        "epoch": self.epoch, "gateway_id": self.gateway_id, "venue": "bench",
                        "region": "bench", "machine": {"port": "sim0", "address": 1 + seq % 32},
                        "timestamp": "2026-11-21T06:00:00.000Z", "trace_id": "00" * 8,
                        "data": {"wager": {"minor": 100, "currency": "USD"}}}
            sealed, raw = seal(envelope, prev, self.signer)
            prev = sealed["hash"]
            self.rows.append(raw)
        self.target = count

    async def read_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]:
        await trio.lowlevel.checkpoint()
        return [(i + 1, self.rows[i]) for i in range(seq, min(len(self.rows), seq + limit))]

    async def wait_appended(self, after_seq: int) -> None:
        await trio.sleep_forever()

    async def mark_delivered(self, seq: int) -> None:
        await trio.lowlevel.checkpoint()
        self.delivered_seq = seq
        if seq >= self.target:
            self.done.set()

    async def append_system(self, event_type: str, data: dict) -> None:
        await trio.lowlevel.checkpoint()  # not recorded: the bench measures the backlog only


RECEIVER_MAIN = """
import argparse, sys
from gateway.receiver.cli import add_commands
parser = argparse.ArgumentParser()
add_commands(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


async def drain(args: argparse.Namespace, outbox: BenchOutbox, workdir: Path) -> float:
    """Time the drain; the receiver runs in its own process (as the platform would)."""
    ca_file = server_pem = None
    tls: list[str] = []
    if not args.plain:
        ca = trustme.CA()
        ca_file, server_pem = workdir / "ca.pem", workdir / "server.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(server_pem))
        tls = ["--cert", str(server_pem), "--key", str(server_pem)]
    token_file = workdir / "token"
    token_file.write_text("bench-token\n")
    db = workdir / "platform.db"
    store = ReceiverStore(db)
    store.register(outbox.gateway_id, "bench-token", bytes(outbox.signer.verify_key).hex())
    store.close()
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", RECEIVER_MAIN, "receiver", "run", "--listen", "127.0.0.1:0",
         "--db", str(db), *tls], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        cwd=ROOT)
    try:
        assert process.stdout is not None
        line = b""
        while not line.startswith(b"ws") or not line.endswith(b"\n"):
            line = b"" if line.endswith(b"\n") else line
            chunk = await process.stdout.receive_some(1)
            if not chunk:
                raise SystemExit("the receiver exited before printing its URL")
            line += chunk
        url = line.decode().strip()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_discard, process.stdout)
            client = UplinkClient(UplinkSettings(url=url, token_file=token_file,
                                                 ca_file=ca_file, batch_max=args.batch,
                                                 window=args.window), outbox)
            started = time.perf_counter()
            await nursery.start(client.run)
            await outbox.done.wait()
            elapsed = time.perf_counter() - started
            nursery.cancel_scope.cancel()
    finally:
        process.send_signal(signal.SIGTERM)
        await process.wait()
    figures = ReceiverStore(db).figures()
    assert figures["stored"] == outbox.target, figures
    return elapsed


async def _discard(stream: trio.abc.ReceiveStream) -> None:
    while await stream.receive_some(65536):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--plain", action="store_true", help="ws:// instead of wss://")
    args = parser.parse_args()

    t0 = time.perf_counter()
    outbox = BenchOutbox(args.events)
    print(f"prepared {args.events} signed events in {time.perf_counter() - t0:.1f} s")

    keys = {outbox.signer.kid: outbox.signer.verify_key}
    t0 = time.perf_counter()
    prev = GENESIS
    for raw in outbox.rows:
        prev = check_event(decode_envelope(raw), keys, prev)
    baseline = args.events / (time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp:
        elapsed = trio.run(drain, args, outbox, Path(tmp))
    rate = args.events / elapsed
    print(f"raw verify baseline:   {baseline:10,.0f} events/s")
    print(f"drain ({'ws' if args.plain else 'wss'}, batch {args.batch}, window {args.window}): "
          f"{rate:10,.0f} events/s  ({rate / baseline:.0%} of baseline; target >= 15,000)")


if __name__ == "__main__":
    main()
