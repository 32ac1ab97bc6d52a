"""Issue 20's acceptance run: several gateways stream through two stateless receivers into an
R3 JetStream stream while one receiver is SIGKILLed and one NATS node is killed and restarted.
The stream ends with every event exactly once per (gateway, epoch, seq), counted by the stream
itself, 0 gaps, `platform verify` OK, and every gateway resumed on the other receiver."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import trio

from gateway.platform import names
from gateway.platform.cli import read_stream
from gateway.platform.localcluster import LocalCluster
from gateway.platform.store import NatsSettings, Platform
from gateway.receiver.store import token_digest
from gateway.signing import decode_envelope
from gateway.uplink.client import UplinkClient, UplinkSettings
from tests.gateway.uplink_fakes import FakeOutbox

GATEWAYS = 4
FIRST_FILL = 1500
CLI = [sys.executable, "-m", "gateway"]


async def register(settings: NatsSettings, outboxes: list[FakeOutbox]) -> None:
    platform = await Platform.open(settings)
    try:
        for i, outbox in enumerate(outboxes):
            await platform.register(outbox.gateway_id, token_digest(f"token-{i}-0123456789abcdef"),
                                    bytes(outbox.signer.verify_key).hex(), "eu-west",
                                    f"venue-{i % 2}")
    finally:
        await platform.close()


@contextmanager
def receiver(tmp_path: Path, name: str, cluster: LocalCluster) -> Iterator[tuple[str, int]]:
    """`casino-gateway receiver run --jetstream ...` in its own process: (url, pid)."""
    log = open(tmp_path / f"{name}.log", "wb")
    process = subprocess.Popen(
        [*CLI, "receiver", "run", "--listen", "127.0.0.1:0", "--jetstream",
         ",".join(cluster.urls), "--nats-timeout", "2"],
        stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().decode().strip()  # printed once it listens
        assert url.startswith("ws://"), (tmp_path / f"{name}.log").read_text()
        yield url, process.pid
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(10)
        log.close()
        # Shown by pytest only when the test fails: why a receiver ended, if it did.
        print(f"--- {name} (exit {process.returncode}):",
              (tmp_path / f"{name}.log").read_text()[-3000:])


@asynccontextmanager
async def gateways(tmp_path: Path, outboxes: list[FakeOutbox], urls: tuple[str, str]
                   ) -> AsyncIterator[list[UplinkClient]]:
    clients = []
    async with trio.open_nursery() as nursery:
        for i, outbox in enumerate(outboxes):
            token = tmp_path / f"token-{i}"
            token.write_text(f"token-{i}-0123456789abcdef")
            client = UplinkClient(UplinkSettings(
                url=urls, token_file=token, batch_max=100, window=4, backoff_initial_s=0.05,
                backoff_max_s=0.5, connect_timeout_s=5.0, heartbeat_s=1.0, dead_after_s=3.0),
                outbox)
            await nursery.start(client.run)
            clients.append(client)
        yield clients
        nursery.cancel_scope.cancel()


async def all_delivered(outboxes: list[FakeOutbox], at_least: int | None = None) -> None:
    for outbox in outboxes:
        await outbox.wait_delivered(outbox.last_seq if at_least is None else at_least)


async def test_receiver_killed_and_nats_node_restarted_every_event_exactly_once(
        tmp_path: Path, cluster: LocalCluster, nats_settings: NatsSettings) -> None:
    outboxes = [FakeOutbox(gateway_id=f"gw.{i}") for i in range(GATEWAYS)]
    for outbox in outboxes:
        outbox.extend(FIRST_FILL)
    await trio.to_thread.run_sync(asyncio.run, register(nats_settings, outboxes))

    with receiver(tmp_path, "r1", cluster) as (first, first_pid), \
            receiver(tmp_path, "r2", cluster) as (second, _):
        # Guards against a hang only: 12-24 s on CI, 40-48 s at load average 12.
        with trio.fail_after(180):
            async with gateways(tmp_path, outboxes, (first, second)) as clients:
                await all_delivered(outboxes, at_least=200)  # streaming through r1
                assert {c.statistics()["url"] for c in clients} == {first}
                os.kill(first_pid, signal.SIGKILL)
                cluster.kill(0)
                for outbox in outboxes:  # new events while a node is down
                    outbox.extend(500)
                await all_delivered(outboxes, at_least=FIRST_FILL + 500)
                await trio.to_thread.run_sync(cluster.restart, 0)
                for outbox in outboxes:
                    outbox.extend(500)
                await all_delivered(outboxes)
                stats = [c.statistics() for c in clients]

    # Every gateway resumed on the other receiver (the mark lives in KV, not in a receiver).
    assert all(s["url"] == second and s["reconnects"] >= 1 for s in stats), stats

    counts: collections.Counter[tuple[str, str, int]] = collections.Counter()
    subjects: dict[str, str] = {}

    def count(subject: str, payload: bytes) -> None:
        env = decode_envelope(payload)
        counts[(env["gateway_id"], env["epoch"], env["seq"])] += 1
        subjects[env["gateway_id"]] = subject

    total = await trio.to_thread.run_sync(asyncio.run, read_stream(nats_settings, count))
    expected = sum(outbox.last_seq for outbox in outboxes)
    # The stream's own count: no duplicate and nothing missing.
    assert total == len(counts) == expected
    assert set(counts.values()) == {1}
    for i, outbox in enumerate(outboxes):
        seqs = sorted(seq for (gid, epoch, seq) in counts if gid == outbox.gateway_id)
        assert seqs == list(range(1, outbox.last_seq + 1))  # 0 gaps
        assert subjects[outbox.gateway_id].startswith(
            names.gateway_filter("eu-west", f"venue-{i % 2}", outbox.gateway_id)[:-1])

    verify = await trio.to_thread.run_sync(lambda: subprocess.run(
        [*CLI, "platform", "verify", "--json", "--nats", ",".join(cluster.urls)],
        capture_output=True, text=True, timeout=60))
    assert verify.stdout.strip(), verify.stderr[-2000:]
    report = json.loads(verify.stdout)
    assert verify.returncode == 0 and report["ok"], (report, verify.stderr[-2000:])
    assert report["read"] == report["stream_messages"] == expected
    assert len(report["streams"]) == GATEWAYS
