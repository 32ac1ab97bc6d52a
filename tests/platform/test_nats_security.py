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


async def test_nkey_authentication(tmp_path: Path) -> None:
    """A server that admits one nkey user: the tools get in with its seed file (0600), not
    without it, and refuse a seed file others can read."""
    import os

    import nkeys

    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    conf = tmp_path / "auth.conf"
    conf.write_text(f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n')
    seed_file = tmp_path / "receiver.nk"
    seed_file.write_bytes(seed + b"\n")
    seed_file.chmod(0o600)
    with LocalCluster(tmp_path / "nats", nodes=1, extra_args=["-c", str(conf)]) as node:
        cli = [sys.executable, "-m", "gateway", "platform", "init", "--replicas", "1",
               "--nats", node.urls[0], "--nats-connect-timeout", "3"]

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([*cli, *args], capture_output=True, text=True, timeout=60)

        refused = await trio.to_thread.run_sync(run)
        assert refused.returncode == 78 and "cannot connect to NATS" in refused.stderr
        admitted = await trio.to_thread.run_sync(run, "--nats-nkey", str(seed_file))
        assert admitted.returncode == 0, admitted.stderr[-2000:]
        seed_file.chmod(0o644)
        exposed = await trio.to_thread.run_sync(run, "--nats-nkey", str(seed_file))
        assert exposed.returncode == 78 and "chmod 600" in exposed.stderr
