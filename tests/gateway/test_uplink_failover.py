"""The gateway's list of platform URLs (docs/uplink-protocol.md section 2, P-FAILOVER-1): the
first URL first, the next after a failed attempt, and never the others after a refusal."""

from __future__ import annotations

import socket
from pathlib import Path

import trio

from gateway.receiver import ReceiverSettings, serve_receiver
from gateway.uplink.client import UplinkClient, UplinkSettings
from tests.gateway.uplink_fakes import FakeOutbox, register, write_token

TOKEN = "failover-token-0123456789"
FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, connect_timeout_s=5.0)


def dead_url() -> str:
    """A loopback port nobody listens on (bound, then closed: connect is refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"ws://127.0.0.1:{port}/v1/stream"


async def test_a_dead_first_url_fails_over_to_the_next(tmp_path: Path) -> None:
    outbox = FakeOutbox()
    outbox.extend(50)
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve_receiver,
                                         ReceiverSettings(db_path=tmp_path / "p.db"))
            register(handle.store, outbox, TOKEN)
            client = UplinkClient(UplinkSettings(
                url=(dead_url(), handle.url), token_file=write_token(tmp_path, TOKEN),
                **FAST), outbox)  # type: ignore[arg-type]
            await nursery.start(client.run)
            await outbox.wait_delivered(outbox.last_seq)
            stats = client.statistics()
            nursery.cancel_scope.cancel()
    assert stats["connected"] and stats["url"] == handle.url
    assert handle.store.figures(outbox.gateway_id)["stored"] == outbox.last_seq


async def test_a_refusal_does_not_try_the_other_urls(tmp_path: Path) -> None:
    outbox = FakeOutbox()
    outbox.extend(5)
    attempts: list[tuple[int, str]] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            refusing = await nursery.start(serve_receiver,
                                           ReceiverSettings(db_path=tmp_path / "a.db"))
            good = await nursery.start(serve_receiver, ReceiverSettings(db_path=tmp_path / "b.db"))
            register(good.store, outbox, TOKEN)  # only the second knows the token: 403 first
            client = UplinkClient(UplinkSettings(
                url=(refusing.url, good.url), token_file=write_token(tmp_path, TOKEN),
                rejected_backoff_s=0.05, **FAST), outbox)  # type: ignore[arg-type]
            await nursery.start(client.run)
            while len(attempts) < 3:
                await client.wait_changed()
                stats = client.statistics()
                if stats["state"] == "rejected" and (not attempts or stats["attempts"]
                                                     != attempts[-1][0]):
                    attempts.append((int(stats["attempts"]), str(stats["url"])))
            nursery.cancel_scope.cancel()
    assert {url for _, url in attempts} == {refusing.url}
    assert good.store.figures(outbox.gateway_id)["stored"] == 0


def test_the_url_setting_takes_one_url_or_a_list_each_checked() -> None:
    import pytest

    from gateway.config import parse_config
    from gateway.errors import ConfigError

    def config(url: object) -> object:
        return parse_config({"gateway": {"id": "gw", "key_file": "k"},
                             "uplink": {"url": url, "token_file": "/t"}}).uplink.url

    assert config("wss://a/v1/stream") == "wss://a/v1/stream"
    assert config(["wss://a/v1/stream", "wss://b/v1/stream"]) == ("wss://a/v1/stream",
                                                                   "wss://b/v1/stream")
    with pytest.raises(ConfigError, match=r"uplink\.url"):
        config(["wss://a/v1/stream", "ws://10.0.0.1/v1/stream"])  # clear text off loopback
    with pytest.raises(ConfigError, match=r"uplink\.url"):
        config([])
