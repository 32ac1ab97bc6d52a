"""`casino-gateway platform ...` as an operator runs it: register from the key files `keys
export-public` writes, stream events, then stats, tail and verify read them back; a tampered
message in the stream fails verify; a command queued by the CLI is answered by the gateway."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import trio

from gateway.platform.localcluster import LocalCluster
from gateway.platform.store import NatsSettings, nats_connect
from gateway.receiver import ReceiverSettings, serve_receiver
from gateway.signing import canonical, decode_envelope
from gateway.uplink.client import UplinkClient, UplinkSettings
from tests.gateway.uplink_fakes import FakeOutbox

CLI = [sys.executable, "-m", "gateway", "platform"]


async def platform(cluster: LocalCluster, *args: str, check: bool = True
                   ) -> subprocess.CompletedProcess[str]:
    result = await trio.to_thread.run_sync(lambda: subprocess.run(
        [*CLI, *args, "--nats", ",".join(cluster.urls)], capture_output=True, text=True,
        timeout=60))
    if check:
        assert result.returncode == 0, result.stderr[-2000:]
    return result


async def test_register_stream_then_stats_tail_verify_and_a_tampered_event(
        tmp_path: Path, cluster: LocalCluster, nats_settings: NatsSettings) -> None:
    outbox = FakeOutbox(gateway_id="gw.cli")
    outbox.extend(40)
    (tmp_path / "pub.txt").write_text(f"{bytes(outbox.signer.verify_key).hex()} "
                                      f"{outbox.signer.kid}\n")
    token = tmp_path / "token"
    token.write_text("cli-token-0123456789abcdef\n")
    token.chmod(0o600)
    bad = await platform(cluster, "register", "gw.cli", str(tmp_path / "pub.txt"),
                         "--token-file", str(token), "--region", "eu west", "--venue", "v",
                         check=False)
    assert bad.returncode == 78 and "--region" in bad.stderr
    done = await platform(cluster, "register", "gw.cli", str(tmp_path / "pub.txt"),
                          "--token-file", str(token), "--region", "eu", "--venue", "v1")
    assert outbox.signer.kid in done.stdout and "casino.eu.v1.gw=2Ecli.>" in done.stdout

    async def handler(request: dict[str, object], source: str) -> dict[str, object]:
        return {"id": request["id"], "result": "ok", "reason": "", "data": {}}

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve_receiver, ReceiverSettings(jetstream=nats_settings))
            client = UplinkClient(UplinkSettings(url=handle.url, token_file=token), outbox,
                                  command_handler=handler)
            await nursery.start(client.run)
            await outbox.wait_delivered(outbox.last_seq)
            answered = await platform(cluster, "command", "gw.cli", "requestMeters",
                                      "--target-port", "sas0", "--target-address", "1",
                                      "--id", "cli-cmd-1", "--wait", "20")
            nursery.cancel_scope.cancel()
    assert json.loads(answered.stdout)["result"] == "ok"

    stats = json.loads((await platform(cluster, "stats", "--json")).stdout)
    assert stats["messages"] == outbox.last_seq and stats["replicas"] == 3
    head = stats["streams"][f"gw.cli.{outbox.epoch}"]
    assert head["high_water"] == head["received"] == outbox.last_seq

    tail = await platform(cluster, "tail", "--all", "--count", "3")
    lines = [json.loads(line) for line in tail.stdout.splitlines()]
    assert [line["id"] for line in lines] == [f"gw.cli:{outbox.epoch}:{s}" for s in (1, 2, 3)]
    assert lines[0]["subject"] == "casino.eu.v1.gw=2Ecli.game.betPlaced"

    assert (await platform(cluster, "verify")).stdout.startswith("OK")
    # Someone with write access to the stream publishes a forged copy of seq 5.
    envelope = decode_envelope(outbox.rows[4])
    envelope["data"] = {"wager": {"minor": 999_999, "currency": "USD"}}

    async def forge() -> None:
        nc = await nats_connect(nats_settings)
        await nc.jetstream().publish("casino.eu.v1.gw=2Ecli.game.betPlaced",
                                     canonical(envelope))
        await nc.close()

    await trio.to_thread.run_sync(asyncio.run, forge())
    failed = await platform(cluster, "verify", "--json", check=False)
    report = json.loads(failed.stdout)
    assert failed.returncode == 1 and not report["ok"]
    assert report["streams"][0]["duplicates"] == 1
    assert report["streams"][0]["bad"] == ["seq 5: copies that differ (a forked chain or a "
                                           "forgery)"]
