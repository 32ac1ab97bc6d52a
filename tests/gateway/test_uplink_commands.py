"""Platform commands end to end over real loopback sockets: receiver -> proxy -> uplink client ->
CommandRouter -> a fake driver, the result back, the audit event up the stream. Every case ends
with the receiver holding every event exactly once in a chain that verifies."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from drivers.base import MachineCommand, MachineRef
from gateway.commands import CommandRouter, CommandSettings
from gateway.events import system_draft
from gateway.outbox import Outbox
from gateway.receiver import ReceiverHandle, ReceiverSettings, serve_receiver
from gateway.receiver.cli import add_commands
from gateway.signing import decode_envelope
from gateway.uplink.client import UplinkClient, UplinkSettings
from tests.gateway.test_uplink_client import FAST, TOKEN, until
from tests.gateway.uplink_fakes import (
    FakeDriver,
    Proxy,
    assert_exactly_once,
    register,
    write_token,
)

ALL = frozenset({"disableMachine", "enableMachine", "requestMeters", "setClock",
                 "remoteHandpayReset", "acknowledgeAlert"})
MACHINE = {"port": "sas0", "address": 1}


@dataclass
class Floor:
    outbox: Outbox
    driver: FakeDriver
    handle: ReceiverHandle
    proxy: Proxy
    client: UplinkClient

    @property
    def gateway_id(self) -> str:
        return self.outbox.gateway_id

    async def all_delivered(self) -> None:
        while self.client.statistics()["last_ack_seq"] < self.outbox.last_seq:
            await self.client.wait_changed()

    async def audits(self) -> list[dict[str, Any]]:
        rows = await self.outbox.read_after(0, 10_000)
        return [env["data"] for env in (decode_envelope(body) for _, body in rows)
                if env["event"] == "commandExecuted"]

    def assert_platform_has_everything_once(self) -> None:
        keys = {self.outbox.signer.kid: self.outbox.signer.verify_key}
        assert_exactly_once(self.handle.store, self.gateway_id, self.outbox.epoch, keys,
                            self.outbox.last_seq)


@asynccontextmanager
async def floor(tmp_path: Path, make_outbox, *, allowed: frozenset[str] = ALL,
                commands: bool = True) -> AsyncIterator[Floor]:
    outbox = make_outbox()
    driver = FakeDriver()
    router = CommandRouter(CommandSettings(allowed=allowed, db_path=tmp_path / "commands.db"),
                           outbox, {driver.port: driver})
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(outbox.run_writer)
            handle = await nursery.start(serve_receiver,
                                         ReceiverSettings(db_path=tmp_path / "platform.db"))
            register(handle.store, outbox, TOKEN)
            proxy = Proxy(handle.port)
            port = await nursery.start(proxy.run)
            client = UplinkClient(
                UplinkSettings(url=f"ws://127.0.0.1:{port}/v1/stream",
                               token_file=write_token(tmp_path, TOKEN), **FAST),  # type: ignore[arg-type]
                outbox, command_handler=router.handle if commands else None)
            await nursery.start(client.run)
            await until(client, lambda s: s["connected"])
            yield Floor(outbox, driver, handle, proxy, client)
            nursery.cancel_scope.cancel()
    finally:
        router.close()


async def test_platform_command_round_trip(tmp_path: Path, make_outbox) -> None:
    with trio.fail_after(20):
        async with floor(tmp_path, make_outbox) as f:
            command_id = await f.handle.submit_command(f.gateway_id, "disableMachine", MACHINE)
            row = await f.handle.wait_command(command_id)
            await f.all_delivered()
            audits = await f.audits()
    assert (row["status"], row["result"], row["reason"], row["data"]) == ("done", "ok", "", {})
    assert f.driver.executed == [MachineCommand("disableMachine", 1, {})]
    assert audits == [{"command_id": command_id, "name": "disableMachine",
                       "requested_by": "platform", "target": MACHINE, "result": "ok"}]
    f.assert_platform_has_everything_once()


async def test_lost_result_repeat_is_answered_without_executing_again(tmp_path: Path,
                                                                      make_outbox) -> None:
    with trio.fail_after(20):
        async with floor(tmp_path, make_outbox) as f:
            f.proxy.drop_results = True  # the gateway answers, the platform never hears it
            command_id = await f.handle.submit_command(f.gateway_id, "requestMeters", MACHINE)
            await f.proxy.wait_for(lambda: len(f.proxy.results) == 1)
            assert f.handle.store.command(command_id)["status"] == "sent"
            f.proxy.drop_results = False
            f.proxy.cut()  # ... and the link dies: the platform re-sends the open command
            row = await f.handle.wait_command(command_id)
            await f.all_delivered()
            audits = await f.audits()
    assert f.proxy.commands_seen == 2 and len(f.proxy.results) == 2
    assert f.proxy.results[0] == f.proxy.results[1]
    assert row["result"] == "ok"
    assert len(f.driver.executed) == 1 and len(audits) == 1
    f.assert_platform_has_everything_once()


async def test_link_lost_while_machine_is_slow_runs_once(tmp_path: Path, make_outbox) -> None:
    with trio.fail_after(20):
        async with floor(tmp_path, make_outbox) as f:
            f.driver.gate = trio.Event()
            command_id = await f.handle.submit_command(f.gateway_id, "enableMachine", MACHINE)
            await f.driver.wait_executed(1)
            # Acks keep flowing while the machine is busy: the command runs in its own task.
            await f.outbox.append_system("lossMarker", {"reason": "test: traffic while a command runs"})
            await f.all_delivered()
            f.proxy.cut()
            await f.proxy.wait_for(lambda: f.proxy.commands_seen == 2)  # the re-send arrived
            f.driver.gate.set()
            row = await f.handle.wait_command(command_id)
            await f.all_delivered()
            audits = await f.audits()
    assert row["result"] == "ok"
    assert len(f.driver.executed) == 1 and len(audits) == 1
    f.assert_platform_has_everything_once()


async def test_not_allowed_is_rejected_and_audited(tmp_path: Path, make_outbox) -> None:
    with trio.fail_after(20):
        async with floor(tmp_path, make_outbox,
                         allowed=frozenset({"acknowledgeAlert", "requestMeters"})) as f:
            command_id = await f.handle.submit_command(f.gateway_id, "remoteHandpayReset",
                                                       MACHINE)
            row = await f.handle.wait_command(command_id)
            await f.all_delivered()
            audits = await f.audits()
    assert (row["result"], row["reason"]) == ("rejected", "not allowed by configuration")
    assert f.driver.executed == []
    assert audits == [{"command_id": command_id, "name": "remoteHandpayReset",
                       "requested_by": "platform", "target": MACHINE, "result": "rejected",
                       "reason": "not allowed by configuration"}]
    f.assert_platform_has_everything_once()  # the audit event reached the platform, once


async def test_acknowledge_alert_from_the_platform(tmp_path: Path, make_outbox) -> None:
    with trio.fail_after(20):
        async with floor(tmp_path, make_outbox) as f:
            tilt = await f.outbox.append(system_draft(
                "tilt", {"kind": "reel"}, now=time.time(), machine=MachineRef("sas0", 1)))
            command_id = await f.handle.submit_command(
                f.gateway_id, "acknowledgeAlert", {"alert_seq": tilt}, {"note": "seen"})
            row = await f.handle.wait_command(command_id)
            await f.all_delivered()
    assert row["result"] == "ok" and isinstance(row["data"]["seq"], int)
    stored = dict(f.handle.store.events(f.gateway_id, f.outbox.epoch))
    ack = decode_envelope(stored[row["data"]["seq"]])
    assert ack["event"] == "alertAcknowledged"
    assert ack["data"] == {"alert_seq": tilt, "by": "platform", "note": "seen"}
    f.assert_platform_has_everything_once()


async def test_commands_not_enabled(tmp_path: Path, make_outbox) -> None:
    with trio.fail_after(20):
        async with floor(tmp_path, make_outbox, commands=False) as f:
            command_id = await f.handle.submit_command(f.gateway_id, "requestMeters", MACHINE)
            row = await f.handle.wait_command(command_id)
            await f.all_delivered()
            audits = await f.audits()
    assert (row["result"], row["reason"]) == ("rejected", "commands not enabled")
    assert audits == [] and f.driver.executed == []
    f.assert_platform_has_everything_once()


MALFORMED = [
    ({"type": "command"}, "", "malformed command: id must be"),
    ({"type": "command", "id": 5, "name": "requestMeters"}, "", "malformed command: id must be"),
    ({"type": "command", "id": "x1", "name": 7}, "x1", "malformed command: name must be"),
    ({"type": "command", "id": "x2", "name": "requestMeters", "target": MACHINE, "args": "no"},
     "x2", "malformed command: args must be"),
    ({"type": "command", "id": "x3", "name": "requestMeters", "target": [1, 2]}, "x3",
     "malformed command: requestMeters needs target"),
    ({"type": "command", "id": "x4", "name": "requestMeters",
      "target": {"port": "nope", "address": 1}}, "x4", "unknown port 'nope'"),
    ({"type": "command", "id": "x5", "name": "requestMeters", "target": MACHINE}, "x5", ""),
]


async def test_malformed_command_frames_get_error_results(tmp_path: Path, make_outbox) -> None:
    with trio.fail_after(20):
        async with floor(tmp_path, make_outbox) as f:
            for body, _, _ in MALFORMED:
                await f.proxy.inject(msgpack.packb(body))
            await f.proxy.wait_for(lambda: len(f.proxy.results) == len(MALFORMED))
            await f.all_delivered()
            stats = f.client.statistics()
            audits = await f.audits()
    assert stats["connected"] and stats["reconnects"] == 0  # answered, never a close
    results = sorted(f.proxy.results, key=lambda r: (r.id, r.reason))
    expected = sorted(MALFORMED, key=lambda m: (m[1], m[2]))
    for result, (_, command_id, reason) in zip(results, expected, strict=True):
        assert result.id == command_id
        assert result.reason.startswith(reason)
        assert result.result == ("ok" if command_id == "x5" else "rejected")
    assert [c.name for c in f.driver.executed] == ["requestMeters"]
    assert sorted((a["command_id"], a["result"]) for a in audits) == [
        ("x1", "rejected"), ("x2", "rejected"), ("x3", "rejected"), ("x4", "rejected"),
        ("x5", "ok")]
    f.assert_platform_has_everything_once()


# -- the operator's side: `casino-gateway receiver command` against a running receiver --------------

def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="casino-gateway")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def printed_result(out: str) -> dict[str, Any]:
    return [json.loads(line) for line in out.splitlines() if line.startswith('{"data"')][-1]


async def test_cli_command_waits_for_the_result(tmp_path: Path, make_outbox,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "platform.db")
    with trio.fail_after(30):
        async with floor(tmp_path, make_outbox,
                         allowed=frozenset({"acknowledgeAlert", "requestMeters"})) as f:
            ok = await trio.to_thread.run_sync(
                run_cli, "receiver", "command", f.gateway_id, "requestMeters", "--target-port",
                "sas0", "--target-address", "1", "--id", "cli-1", "--db", db, "--wait", "20")
            ok_out = capsys.readouterr().out
            refused = await trio.to_thread.run_sync(
                run_cli, "receiver", "command", f.gateway_id, "disableMachine", "--target-port",
                "sas0", "--target-address", "1", "--db", db)
            refused_out = capsys.readouterr().out
            await f.all_delivered()
    assert ok == 0
    assert printed_result(ok_out) == {"id": "cli-1", "result": "ok", "reason": "",
                                      "data": {"money": {}, "counts": {}}}
    assert refused == 1
    assert printed_result(refused_out)["reason"] == "not allowed by configuration"
    # A refusal says why in `data` too (docs/uplink-protocol.md section 10).
    assert printed_result(refused_out)["data"] == {"reason": "not allowed by configuration"}
    assert [c.name for c in f.driver.executed] == ["requestMeters"]
    assert run_cli("receiver", "commands", "--db", db) == 0
    listing = [line for line in capsys.readouterr().out.splitlines() if f.gateway_id in line]
    assert len(listing) == 2
    assert listing[0].startswith("cli-1  ") and listing[0].endswith("done  ok")
    assert listing[1].endswith("done  rejected: not allowed by configuration")
    f.assert_platform_has_everything_once()
