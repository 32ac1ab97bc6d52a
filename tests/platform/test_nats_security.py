"""The platform side reaches NATS over TLS, verifying the server with the CA it is given (the
receiver, init and verify); a wrong CA is one line and exit 78 within --nats-connect-timeout,
not a hang (nats-py retries a first connection forever on its own)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import trio

from gateway.platform.localcluster import LocalCluster
from gateway.platform.store import NatsSettings
from gateway.receiver import ReceiverSettings, serve_receiver
from gateway.uplink.client import UplinkClient, UplinkSettings
from tests.gateway.uplink_fakes import FakeOutbox, Pki, write_token
from tests.platform.conftest import register

TOKEN = "tls-token-0123456789abcdef"


async def test_receiver_and_tools_over_tls(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    key_and_cert = pki.server_pem
    with LocalCluster(tmp_path / "nats", nodes=1, extra_args=[
            "--tls", "--tlscert", str(key_and_cert), "--tlskey", str(key_and_cert)]) as node:
        url = node.urls[0].replace("nats://", "tls://")
        cli = [sys.executable, "-m", "gateway", "platform"]

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60)

        wrong = await trio.to_thread.run_sync(
            run, "init", "--replicas", "1", "--nats", url, "--nats-ca",
            str(pki.other_ca_file(tmp_path)), "--nats-connect-timeout", "3")
        assert wrong.returncode == 78, wrong.stderr[-2000:]
        assert "cannot connect to NATS" in wrong.stderr and "Traceback" not in wrong.stderr
        done = await trio.to_thread.run_sync(run, "init", "--replicas", "1", "--nats", url,
                                             "--nats-ca", str(pki.ca_file))
        assert done.returncode == 0, done.stderr[-2000:]

        settings = NatsSettings(servers=(url,), ca_file=pki.ca_file)
        outbox = FakeOutbox(gateway_id="gw-tls")
        outbox.extend(20)
        await register(settings, outbox.gateway_id, TOKEN, bytes(outbox.signer.verify_key).hex())
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                handle = await nursery.start(serve_receiver, ReceiverSettings(jetstream=settings))
                client = UplinkClient(UplinkSettings(url=handle.url,
                                                     token_file=write_token(tmp_path, TOKEN)),
                                      outbox)
                await nursery.start(client.run)
                await outbox.wait_delivered(outbox.last_seq)
                nursery.cancel_scope.cancel()
        verify = await trio.to_thread.run_sync(run, "verify", "--nats", url, "--nats-ca",
                                               str(pki.ca_file))
        assert verify.returncode == 0 and verify.stdout.startswith("OK"), verify.stdout
