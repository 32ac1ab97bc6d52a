"""gateway.commands: allow-list, at-most-once per id (across restarts), audit, outcome mapping."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from drivers.base import CommandOutcome, CommandResult, MachineCommand, MachineRef
from drivers.link import LinkBrokenError
from gateway.commands import INTERRUPTED, CommandRouter, CommandSettings
from gateway.events import system_draft
from gateway.feed.state import AlertBoard
from gateway.outbox import Outbox
from gateway.signing import decode_envelope
from tests.gateway.uplink_fakes import FakeDriver

ALL = frozenset({"disableMachine", "enableMachine", "requestMeters", "setClock",
                 "remoteHandpayReset", "acknowledgeAlert"})
MACHINE = {"port": "sas0", "address": 1}


@asynccontextmanager
async def running(make_outbox: Callable[[], Outbox]) -> AsyncIterator[Outbox]:
    outbox = make_outbox()
    async with trio.open_nursery() as nursery:
        await nursery.start(outbox.run_writer)
        yield outbox
        nursery.cancel_scope.cancel()


async def envelopes(outbox: Outbox, event_type: str) -> list[dict[str, Any]]:
    rows = await outbox.read_after(0, 10_000)
    return [env for env in (decode_envelope(body) for _, body in rows)
            if env["event"] == event_type]


def router_for(tmp_path: Path, outbox: Outbox, driver: FakeDriver,
               allowed: frozenset[str] = ALL) -> CommandRouter:
    return CommandRouter(CommandSettings(allowed=allowed, db_path=tmp_path / "commands.db"),
                         outbox, {driver.port: driver})


async def append_tilt(outbox: Outbox) -> int:
    return await outbox.append(system_draft("tilt", {"kind": "reel"}, now=time.time(),
                                            monotonic=trio.current_time(),
                                            machine=MachineRef("sas0", 1)))


def request(command_id: str, name: str = "disableMachine", target: Any = MACHINE,
            args: Any = None) -> dict[str, Any]:
    return {"id": command_id, "name": name, "target": target, "args": args or {}}


def test_default_allow_list_is_the_harmless_pair(tmp_path: Path) -> None:
    settings = CommandSettings(db_path=tmp_path / "c.db")
    assert settings.allowed == frozenset({"acknowledgeAlert", "requestMeters"})


async def test_executes_once_audits_once_answers_the_same(tmp_path: Path, make_outbox) -> None:
    driver = FakeDriver()
    with trio.fail_after(10):
        async with running(make_outbox) as outbox:
            router = router_for(tmp_path, outbox, driver)
            first = await router.handle(request("c-1"), "platform")
            again = await router.handle(request("c-1"), "platform")
            audits = await envelopes(outbox, "commandExecuted")
            router.close()
    assert first == again == {"id": "c-1", "result": "ok", "reason": "", "data": {}}
    assert driver.executed == [MachineCommand("disableMachine", 1, {})]
    assert len(audits) == 1
    assert audits[0]["data"] == {"command_id": "c-1", "name": "disableMachine",
                                 "requested_by": "platform", "target": MACHINE, "result": "ok"}
    assert audits[0]["machine"] == {"port": "sas0", "address": 1, "serial": None, "asset": None}


async def test_remembered_across_a_restart(tmp_path: Path, make_outbox) -> None:
    driver = FakeDriver(outcome=CommandOutcome(CommandResult.OK, data={
        "meters": {"coin_in": 7, "games_played": 2}, "denomination_cents": 5}))
    with trio.fail_after(10):
        async with running(make_outbox) as outbox:
            router = router_for(tmp_path, outbox, driver)
            first = await router.handle(request("c-2", "requestMeters"), "staff:ann")
            router.close()
            restarted = router_for(tmp_path, outbox, driver)
            again = await restarted.handle(request("c-2", "requestMeters"), "platform")
            audits = await envelopes(outbox, "commandExecuted")
            restarted.close()
    assert first == again
    # Money exact (7 credits of 5 cents), counts with their unit (docs/uplink-protocol.md).
    assert first["data"] == {"denomination": {"minor": 5, "currency": "USD"},
                             "money": {"coin_in": {"minor": 35, "currency": "USD"}},
                             "counts": {"games_played": {"value": 2, "unit": "games"}}}
    assert len(driver.executed) == 1 and len(audits) == 1
    assert audits[0]["data"]["requested_by"] == "staff:ann"


async def test_concurrent_repeat_waits_for_the_first(tmp_path: Path, make_outbox) -> None:
    driver = FakeDriver()
    driver.gate = trio.Event()
    answers: list[dict[str, Any]] = []
    with trio.fail_after(10):
        async with running(make_outbox) as outbox:
            router = router_for(tmp_path, outbox, driver)

            async def ask() -> None:
                answers.append(await router.handle(request("c-3"), "platform"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                await driver.wait_executed(1)
                nursery.start_soon(ask)
                await trio.testing.wait_all_tasks_blocked()
                driver.gate.set()
            audits = await envelopes(outbox, "commandExecuted")
            router.close()
    assert len(driver.executed) == 1 and len(audits) == 1
    assert answers[0] == answers[1] and answers[0]["result"] == "ok"


async def test_crash_while_executing_answers_interrupted_never_twice(tmp_path: Path,
                                                                    make_outbox) -> None:
    driver = FakeDriver()
    driver.gate = trio.Event()  # never set: the machine is being told when the process dies
    with trio.fail_after(10):
        async with running(make_outbox) as outbox:
            router = router_for(tmp_path, outbox, driver)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(router.handle, request("c-4"), "platform")
                await driver.wait_executed(1)
                nursery.cancel_scope.cancel()  # the process is gone mid-execution
            router.close()
            driver.gate = None
            restarted = router_for(tmp_path, outbox, driver)
            answer = await restarted.handle(request("c-4"), "platform")
            again = await restarted.handle(request("c-4"), "platform")
            audits = await envelopes(outbox, "commandExecuted")
            restarted.close()
    assert answer == again == {"id": "c-4", "result": "failed", "reason": INTERRUPTED, "data": {}}
    assert len(driver.executed) == 1  # the repeat did not execute
    assert [a["data"]["result"] for a in audits] == ["failed"]
    assert audits[0]["data"]["reason"] == INTERRUPTED


async def test_not_allowed_is_rejected_and_audited(tmp_path: Path, make_outbox) -> None:
    driver = FakeDriver()
    with trio.fail_after(10):
        async with running(make_outbox) as outbox:
            router = router_for(tmp_path, outbox, driver,
                                allowed=frozenset({"acknowledgeAlert", "requestMeters"}))
            answer = await router.handle(request("c-5", "disableMachine"), "platform")
            again = await router.handle(request("c-5", "disableMachine"), "platform")
            audits = await envelopes(outbox, "commandExecuted")
            router.close()
    assert answer == again == {"id": "c-5", "result": "rejected",
                               "reason": "not allowed by configuration", "data": {}}
    assert driver.executed == []
    assert len(audits) == 1
    assert audits[0]["data"]["result"] == "rejected"
    assert audits[0]["data"]["reason"] == "not allowed by configuration"


@pytest.mark.parametrize(("req", "reason"), [
    (request("m-1", target={"port": "nope", "address": 1}), "unknown port 'nope'"),
    (request("m-2", name="formatDisk"), "unknown command 'formatDisk'"),
    (request("m-3", name=7), "malformed command: name must be a non-empty string"),
    (request("m-4", target="sas0/1"), "malformed command: disableMachine needs target"),
    (request("m-5", target={"port": "sas0"}), "malformed command: disableMachine needs target"),
    (request("m-6", target={"port": "sas0", "address": True}),
     "malformed command: disableMachine needs target"),
    (request("m-7", args=[1, 2]), "malformed command: args must be a JSON object"),
    (request("m-8", name="setClock", args={"time": "yesterday"}),
     "malformed command: setClock needs"),
    (request("m-9", name="setClock", args={"time": "2026-11-21T06:00:00"}),
     "malformed command: setClock needs"),
    (request("m-10", name="acknowledgeAlert", target={"alert_seq": 0}),
     "malformed command: acknowledgeAlert needs"),
    (request("m-11", name="acknowledgeAlert", target={"alert_seq": 3}, args={"note": 5}),
     "malformed command: note must be a string"),
    ({"id": "m-12", "name": "disableMachine", "target": {"port": b"x", "address": 1}},
     "malformed command: target must be a JSON object"),
    # Numbers SQLite and msgpack cannot hold (issue 15: OverflowError in the store, exit 1).
    (request("m-13", target={"port": "sas0", "address": 2**70}),
     "malformed command: target must be a JSON object"),
    (request("m-14", name="acknowledgeAlert", target={"alert_seq": 2**70}),
     "malformed command: target must be a JSON object"),
    (request("m-15", args={"n": -(2**64)}), "malformed command: args must be a JSON object"),
    (request("m-16", target={"port": "sas0", "address": 1, "deep": [[[[[[[[[[1]]]]]]]]]]}),
     "malformed command: target must be a JSON object"),
])
async def test_refusals_are_rejected_and_audited(tmp_path: Path, make_outbox,
                                                 req: dict[str, Any], reason: str) -> None:
    driver = FakeDriver()
    with trio.fail_after(10):
        async with running(make_outbox) as outbox:
            router = router_for(tmp_path, outbox, driver)
            answer = await router.handle(req, "platform")
            audits = await envelopes(outbox, "commandExecuted")
            router.close()
    assert answer["result"] == "rejected" and answer["reason"].startswith(reason)
    assert driver.executed == []
    assert [(a["data"]["command_id"], a["data"]["result"]) for a in audits] == [
        (req["id"], "rejected")]


@pytest.mark.parametrize("bad", [{"name": "disableMachine"}, {"id": ""}, {"id": 12},
                                 {"id": "x" * 129}, "not a map"])
async def test_without_a_usable_id_rejected_not_audited(tmp_path: Path, make_outbox,
                                                        bad: Any) -> None:
    driver = FakeDriver()
    with trio.fail_after(10):
        async with running(make_outbox) as outbox:
            router = router_for(tmp_path, outbox, driver)
            answer = await router.handle(bad, "platform")
            audits = await envelopes(outbox, "commandExecuted")
            router.close()
    assert answer["result"] == "rejected" and "id must be" in answer["reason"]
    assert audits == [] and driver.executed == []


@pytest.mark.parametrize("outcome", [
    CommandOutcome(CommandResult.REJECTED, "unsupported command setClock"),
    CommandOutcome(CommandResult.FAILED, "machine offline"),
    CommandOutcome(CommandResult.OK, data={"meters": {"coin_in": 100, "coin_out": 5}}),
])
async def test_driver_outcome_maps_directly(tmp_path: Path, make_outbox,
                                            outcome: CommandOutcome) -> None:
    driver = FakeDriver(outcome=outcome)
    with trio.fail_after(10):
        async with running(make_outbox) as outbox:
            router = router_for(tmp_path, outbox, driver)
            answer = await router.handle(
                request("o-1", "setClock", args={"time": "2026-11-21T06:00:00Z"}), "platform")
            audits = await envelopes(outbox, "commandExecuted")
            router.close()
    assert answer == {"id": "o-1", "result": str(outcome.result), "reason": outcome.reason,
                      "data": dict(outcome.data)}
    assert driver.executed == [MachineCommand("setClock", 1, {"time": "2026-11-21T06:00:00Z"})]
    assert audits[0]["data"]["result"] == str(outcome.result)
    assert audits[0]["data"].get("reason", "") == outcome.reason


async def test_each_machine_command_reaches_the_driver(tmp_path: Path, make_outbox) -> None:
    driver = FakeDriver()
    names = ["disableMachine", "enableMachine", "requestMeters", "remoteHandpayReset"]
    with trio.fail_after(10):
        async with running(make_outbox) as outbox:
            router = router_for(tmp_path, outbox, driver)
            for index, name in enumerate(names):
                answer = await router.handle(request(f"n-{index}", name,
                                                     {"port": "sas0", "address": 3}), "platform")
                assert answer["result"] == "ok"
            router.close()
    assert [(c.name, c.address) for c in driver.executed] == [(n, 3) for n in names]


async def test_broken_port_fails_the_command(tmp_path: Path, make_outbox) -> None:
    class BrokenDriver(FakeDriver):
        async def execute(self, command: MachineCommand) -> CommandOutcome:
            self.executed.append(command)
            raise LinkBrokenError("/dev/ttyS0 vanished")

    driver = BrokenDriver()
    with trio.fail_after(10):
        async with running(make_outbox) as outbox:
            router = router_for(tmp_path, outbox, driver)
            answer = await router.handle(request("b-1"), "platform")
            router.close()
    assert answer["result"] == "failed" and "vanished" in answer["reason"]


async def test_acknowledge_alert_appends_the_acknowledgement(tmp_path: Path,
                                                             make_outbox) -> None:
    driver = FakeDriver()
    with trio.fail_after(10):
        async with running(make_outbox) as outbox:
            router = router_for(tmp_path, outbox, driver)
            tilt = await append_tilt(outbox)
            answer = await router.handle(
                request("a-1", "acknowledgeAlert", {"alert_seq": tilt}, {"note": "paid by hand"}),
                "staff:bob")
            again = await router.handle(
                request("a-1", "acknowledgeAlert", {"alert_seq": tilt}, {"note": "paid by hand"}),
                "staff:bob")
            acks = await envelopes(outbox, "alertAcknowledged")
            audits = await envelopes(outbox, "commandExecuted")
            router.close()
    assert answer == again == {"id": "a-1", "result": "ok", "reason": "",
                               "data": {"seq": acks[0]["seq"]}}
    assert [a["data"] for a in acks] == [{"alert_seq": tilt, "by": "staff:bob",
                                          "note": "paid by hand"}]
    assert len(audits) == 1 and audits[0]["seq"] > acks[0]["seq"]
    assert audits[0]["data"]["target"] == {"alert_seq": tilt}
    assert driver.executed == []


async def test_acknowledge_alert_only_for_an_alert_that_exists(tmp_path: Path,
                                                               make_outbox) -> None:
    """Issue 15: acknowledgeAlert recorded an acknowledgement for any seq. Without the feed's
    board the router checks the outbox: the seq must hold an event that opens an alert."""
    driver = FakeDriver()
    with trio.fail_after(10):
        async with running(make_outbox) as outbox:
            router = router_for(tmp_path, outbox, driver)
            tilt = await append_tilt(outbox)
            meters = await outbox.append(system_draft("gatewayStarted", {"version": "x",
                                                                         "ports": []},
                                                      now=time.time()))
            missing = await router.handle(
                request("n-1", "acknowledgeAlert", {"alert_seq": 10_000}), "platform")
            not_alert = await router.handle(
                request("n-2", "acknowledgeAlert", {"alert_seq": meters}), "platform")
            ok = await router.handle(
                request("n-3", "acknowledgeAlert", {"alert_seq": tilt}), "platform")
            acks = await envelopes(outbox, "alertAcknowledged")
            router.close()
    assert (missing["result"], missing["reason"]) == ("rejected", "no alert has that seq")
    assert (not_alert["result"], not_alert["reason"]) == ("rejected", "no alert has that seq")
    assert ok["result"] == "ok"
    assert [a["data"]["alert_seq"] for a in acks] == [tilt]


async def test_acknowledge_alert_checks_the_board_when_there_is_one(tmp_path: Path,
                                                                    make_outbox) -> None:
    driver = FakeDriver()
    board = AlertBoard()
    with trio.fail_after(10):
        async with running(make_outbox) as outbox:
            outbox.commit_listeners.append(lambda envs: [board.apply(e) for e in envs])
            router = router_for(tmp_path, outbox, driver)
            router.alerts = board
            door = await outbox.append(system_draft("doorOpened", {"door": "main"},
                                                    now=time.time(),
                                                    machine=MachineRef("sas0", 1)))
            first = await router.handle(
                request("b-1", "acknowledgeAlert", {"alert_seq": door}), "platform")
            second = await router.handle(
                request("b-2", "acknowledgeAlert", {"alert_seq": door}), "staff:ann")
            router.close()
    assert first["result"] == "ok"
    assert (second["result"], second["reason"]) == ("rejected",
                                                    "already acknowledged by platform")
