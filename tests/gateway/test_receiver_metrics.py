"""The receiver's /metrics (docs/platform.md "Metrics"): a live SQLite receiver scraped over
HTTP after a peer streamed a known number of events and frames; each refusal counts under its
close code; the listener keeps the gateway monitor's rules (loopback, or a 0600 token file)."""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import open_websocket_url

from gateway.config import MonitorSection
from gateway.errors import EXIT_CONFIG
from gateway.receiver import ReceiverHandle, ReceiverSettings, serve_receiver
from gateway.receiver.cli import add_commands
from gateway.uplink import protocol as proto
from tests.gateway.test_monitor import http_get_auth
from tests.gateway.test_receiver import CLI_MAIN, TOKEN, peer, receive
from tests.gateway.test_receiver_pipeline import acks_then_close, frames_of, send_back_to_back
from tests.gateway.uplink_fakes import FakeOutbox, register, write_token

ROOT = Path(__file__).resolve().parents[2]

Samples = dict[str, list[tuple[dict[str, str], float]]]


async def scrape(port: int, token: str | None = None) -> tuple[Samples, set[str]]:
    """GET /metrics: samples by name, and the family names (histograms, counters)."""
    status, body = await http_get_auth(port, "/metrics", token)
    assert status == 200, body
    samples: Samples = {}
    families: set[str] = set()
    for family in text_string_to_metric_families(body.decode()):
        families.add(family.name)
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples, families


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels` (0 if there is none yet)."""
    found = [v for got, v in samples.get(name, []) if labels.items() <= got.items()]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else 0.0


def documented_metrics() -> dict[str, bool]:
    """Every metric named in docs/platform.md's Metrics table -> JetStream only?"""
    text = (ROOT / "docs" / "platform.md").read_text()
    section = text.split("\n## Metrics", 1)[1].split("\n## ", 1)[0]
    out: dict[str, bool] = {}
    for line in section.splitlines():
        match = re.match(r"\| `(casino_receiver_[a-z_]+)`", line)
        if match:
            out[match.group(1)] = "JetStream only" in line
    assert len(out) >= 15, out
    return out


def exposed(name: str, samples: Samples, families: set[str]) -> bool:
    """In the scrape: as a sample, or as a family (a labelled counter before its first count)."""
    return name in samples or name in families or name.removesuffix("_total") in families


@asynccontextmanager
async def metered_receiver(tmp_path: Path) -> AsyncIterator[ReceiverHandle]:
    async with trio.open_nursery() as nursery:
        handle = await nursery.start(serve_receiver, ReceiverSettings(
            db_path=tmp_path / "p.db", metrics=MonitorSection(port=0)))
        yield handle
        nursery.cancel_scope.cancel()


async def test_counters_equal_what_the_gateway_sent(tmp_path: Path) -> None:
    outbox = FakeOutbox()
    outbox.extend(250)
    with trio.fail_after(20):
        async with metered_receiver(tmp_path) as handle:
            assert handle.metrics_port is not None
            register(handle.store, outbox, TOKEN)
            async with peer(handle, outbox) as ws:
                await receive(ws)  # welcome
                await send_back_to_back(ws, frames_of(outbox.rows, 50))  # 5 frames
                acks = [await receive(ws) for _ in range(5)]
                during, _ = await scrape(handle.metrics_port)
            # The same 50 events again (a resend): acknowledged, counted as duplicates.
            async with peer(handle, outbox) as ws:
                await receive(ws)
                await send_back_to_back(ws, [outbox.rows[200:]])
                await receive(ws)
            # Let the connection's task end (it counts itself closed), then scrape again.
            await trio.testing.wait_all_tasks_blocked()
            after, families = await scrape(handle.metrics_port)
    assert acks[-1] == proto.Ack(outbox.epoch, 250)
    assert value(during, "casino_receiver_connections_open") == 1
    assert value(after, "casino_receiver_connections_open") == 0
    assert value(after, "casino_receiver_connections_total") == 2
    assert value(after, "casino_receiver_events_total") == 250
    assert value(after, "casino_receiver_duplicate_events_total") == 50
    assert value(after, "casino_receiver_batches_total") == 6
    assert value(after, "casino_receiver_verify_seconds_count") == 6
    assert value(after, "casino_receiver_verify_cpu_seconds_total") > 0
    assert 1 <= value(after, "casino_receiver_store_seconds_count") <= 6
    assert value(after, "casino_receiver_build_info", backend="sqlite") == 1
    assert not [name for name in after if "refusal" in name and value(after, name)]
    # Every metric the doc lists for both backends is in the scrape (JetStream: tests/platform).
    missing = [name for name, js_only in documented_metrics().items()
               if not js_only and not exposed(name, after, families)]
    assert not missing


@pytest.mark.parametrize("fault, code", [("signature", proto.CLOSE_INTEGRITY),
                                         ("no hello", proto.CLOSE_PROTOCOL),
                                         ("takeover", proto.CLOSE_SUPERSEDED)])
async def test_a_refusal_counts_under_its_close_code(tmp_path: Path, fault: str,
                                                     code: int) -> None:
    outbox = FakeOutbox()
    outbox.extend(20)
    if fault == "signature":
        outbox.corrupt_signature(15)
    with trio.fail_after(20):
        async with metered_receiver(tmp_path) as handle:
            assert handle.metrics_port is not None
            register(handle.store, outbox, TOKEN)
            before, _ = await scrape(handle.metrics_port)
            if fault == "no hello":
                async with open_websocket_url(handle.url, extra_headers=[
                        (b"authorization", f"Bearer {TOKEN}".encode())]) as ws:
                    await ws.send_message(proto.encode(proto.Events(tuple(outbox.rows))))
                    _, _, closed = await acks_then_close(ws)
            elif fault == "signature":
                async with peer(handle, outbox) as ws:
                    await receive(ws)
                    await send_back_to_back(ws, [outbox.rows])
                    _, _, closed = await acks_then_close(ws)
            else:
                async with peer(handle, outbox) as old:
                    await receive(old)
                    async with peer(handle, outbox) as new:
                        await receive(new)
                        _, _, closed = await acks_then_close(old)
            after, _ = await scrape(handle.metrics_port)
    assert closed == code
    assert value(before, "casino_receiver_refusals_total", code=str(code)) == 0
    assert value(after, "casino_receiver_refusals_total", code=str(code)) == 1
    assert value(after, "casino_receiver_takeovers_total") == (code == proto.CLOSE_SUPERSEDED)
    if fault == "signature":
        assert value(after, "casino_receiver_events_total") == 14


async def test_refused_upgrades_count_by_http_status(tmp_path: Path) -> None:
    from trio_websocket import ConnectionRejected

    with trio.fail_after(10):
        async with metered_receiver(tmp_path) as handle:
            assert handle.metrics_port is not None
            for headers in ([(b"authorization", b"Bearer not-a-known-token")], []):
                with pytest.raises(ConnectionRejected):
                    async with open_websocket_url(handle.url, extra_headers=headers):
                        pass
            samples, _ = await scrape(handle.metrics_port)
            status, body = await http_get_auth(handle.metrics_port, "/health", None)
    assert value(samples, "casino_receiver_upgrade_refusals_total", status="403") == 1
    assert value(samples, "casino_receiver_upgrade_refusals_total", status="401") == 1
    assert value(samples, "casino_receiver_connections_total") == 0
    assert status == 200 and b'"backend":"sqlite"' in body


async def test_a_token_guards_a_non_loopback_listener(tmp_path: Path) -> None:
    token_file = write_token(tmp_path, "scrape-secret", "metrics.token")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve_receiver, ReceiverSettings(
                db_path=tmp_path / "p.db",
                metrics=MonitorSection(host="0.0.0.0", port=0, token_file=token_file)))
            assert handle.metrics_port is not None
            refused, _ = await http_get_auth(handle.metrics_port, "/metrics", None)
            wrong, _ = await http_get_auth(handle.metrics_port, "/metrics", "guess")
            samples, _ = await scrape(handle.metrics_port, "scrape-secret")
            nursery.cancel_scope.cancel()
    assert refused == wrong == 401
    assert value(samples, "casino_receiver_build_info", backend="sqlite") == 1


async def test_cli_run_prints_the_metrics_url_and_serves_it(tmp_path: Path) -> None:
    with trio.fail_after(20):
        process = await trio.lowlevel.open_process(
            [sys.executable, "-c", CLI_MAIN, "receiver", "run", "--listen", "127.0.0.1:0",
             "--db", str(tmp_path / "run.db"), "--metrics-listen", ":0"],
            stdout=subprocess.PIPE, cwd=ROOT)
        assert process.stdout is not None
        lines: list[str] = []
        buffer = b""
        while not lines or not lines[-1].startswith("http://"):  # log lines may come between
            chunk = await process.stdout.receive_some(1)
            assert chunk, "receiver exited before printing its metrics URL"
            buffer += chunk
            if buffer.endswith(b"\n"):
                lines.append(buffer.decode().strip())
                buffer = b""
        url = lines[-1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        samples, _ = await scrape(int(url.split(":")[2].split("/")[0]))
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0
        await process.stdout.aclose()
    assert value(samples, "casino_receiver_build_info", backend="sqlite") == 1


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["receiver", "run", *argv])
    return int(args.func(args))


@pytest.mark.parametrize("case", ["no token", "token readable by others", "empty token",
                                  "token without listener"])
def test_the_cli_refuses_an_unguarded_metrics_listener(tmp_path: Path, case: str,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    token = write_token(tmp_path, "" if case == "empty token" else "t0ken", "m.token")
    if case == "token readable by others":
        token.chmod(0o644)
    argv = ["--db", str(tmp_path / "p.db"), "--listen", "127.0.0.1:0"]
    if case != "token without listener":
        argv += ["--metrics-listen", "0.0.0.0:0"]
    if case != "no token":
        argv += ["--metrics-token-file", str(token)]
    assert run_cli(*argv) == EXIT_CONFIG
    err = capsys.readouterr().err.strip()
    assert err.startswith("receiver run: ") and len(err.splitlines()) == 1
    assert "t0ken" not in err
