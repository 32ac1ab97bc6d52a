"""Commands (two-way): the platform (uplink) and floor supervisors (feed) ask, a machine acts.

    request = {"id": str, "name": str, "target": {"port": str, "address": int} | {"alert_seq": int}
               | None, "args": dict}
    answer  = {"id": str, "result": "ok" | "rejected" | "failed", "reason": str, "data": dict}

`CommandRouter.handle(request, requested_by)` is the one entry point. Each command id is executed
AT MOST ONCE, across restarts: the router keeps its own small SQLite file (WAL,
synchronous=FULL) with one row per id, moved through

    started   written (durable) before the driver is called
    executed  the outcome is durable; the commandExecuted audit event may not be yet
    done      the audit event is durable in the outbox; only now is the answer given

A repeated id is answered from that row: `done` returns the stored answer (no execution, no audit);
`executed` (a crash between outcome and audit) appends the audit, then answers; `started` (a crash
while the machine was being told) answers "failed: interrupted" and audits that, because whether
the machine acted is unknown and executing twice is worse than not at all. A repeat that arrives
while the first is still running waits for it and gets the same answer.

Every command with a usable id is audited, including refusals (not on the allow-list, unknown
port, malformed arguments): a `commandExecuted` event {command_id, name, requested_by, target?,
args?, result, reason?}. A request without a usable id cannot be remembered or audited and is
answered "rejected" only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import msgpack
import structlog
import trio

from drivers.base import CommandOutcome, CommandResult, Driver, MachineCommand, MachineRef
from drivers.link import LinkError
from gateway.bounded import INT_MAX, InputRejected, check_plain
from gateway.errors import GatewayError, StoreError
from gateway.events import Draft, system_draft
from gateway.feed.state import OPENING_EVENTS
from gateway.meters import meters_result
from gateway.signing import decode_envelope

__all__ = [
    "COMMAND_NAMES",
    "AuditOutbox",
    "CommandRouter",
    "CommandSettings",
]

log = structlog.get_logger(__name__)

# Command name -> what the driver does (documentation; drivers map MachineCommand.name to the wire).
MACHINE_COMMANDS = {
    "disableMachine": "SAS LP 01 (shutdown)",
    "enableMachine": "SAS LP 02 (startup)",
    "requestMeters": "SAS meter long polls",
    "setClock": "SAS LP 7F (set date and time)",
    "remoteHandpayReset": "SAS LP 94",
}
COMMAND_NAMES = frozenset({*MACHINE_COMMANDS, "acknowledgeAlert"})

ID_MAX = 128
NOTE_MAX = 500
INTERRUPTED = "interrupted: the gateway stopped while executing it; not repeated"

SCHEMA = """
CREATE TABLE IF NOT EXISTS commands (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('started', 'executed', 'done')),
    result TEXT,
    reason TEXT NOT NULL DEFAULT '',
    data BLOB,
    audit BLOB,
    started_at REAL NOT NULL,
    done_at REAL
);
"""


@dataclass(frozen=True, kw_only=True)
class CommandSettings:
    """`allowed`: command names this gateway executes (others are rejected and audited);
    `db_path`: the router's own SQLite file (remembers every command id)."""

    allowed: frozenset[str] = frozenset({"acknowledgeAlert", "requestMeters"})
    db_path: Path
    currency: str = "USD"  # for requestMeters money (gateway.meters)


class AuditOutbox(Protocol):
    """What the router needs of gateway.outbox.Outbox: a durable append and a read."""

    async def append(self, draft: Draft) -> int: ...

    async def read_after(self, seq: int, limit: int) -> list[tuple[int, bytes]]: ...


class AlertLookup(Protocol):
    """The feed's alert board (gateway.feed.state.AlertBoard): why an alert cannot be
    acknowledged now, or None if it can."""

    def ack_refusal(self, alert_seq: int) -> str | None: ...


NO_SUCH_ALERT = "no alert has that seq"


@dataclass(frozen=True, slots=True)
class _Plan:
    """A validated request: what to do (or why not, in `refusal`)."""

    name: str
    target: Any
    args: dict[str, Any] | None
    machine: MachineRef | None = None
    refusal: str = ""


def _answer(command_id: str, result: str, reason: str = "",
            data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    return {"id": command_id, "result": result, "reason": reason, "data": dict(data or {})}


def _is_plain(value: Any) -> bool:
    """JSON-shaped within budget (str keys, 64-bit ints, finite floats, at most 8 deep), so it
    can be stored, audited and shown on the feed: an integer like 2**70 fits neither SQLite nor
    msgpack and would raise OverflowError in the store."""
    try:
        check_plain(value, max_depth=8, max_items=1000)
    except InputRejected:
        return False
    return True


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= INT_MAX


def _plan(request: Mapping[str, Any], allowed: frozenset[str],
          drivers: Mapping[str, Driver]) -> _Plan:
    name, target, args = request.get("name"), request.get("target"), request.get("args", {})
    args = {} if args is None else args
    audit_name = name if isinstance(name, str) else ""
    audit_target = target if _is_plain(target) else None
    audit_args = args if isinstance(args, dict) and _is_plain(args) else None

    def refuse(reason: str) -> _Plan:
        return _Plan(audit_name, audit_target, audit_args, refusal=reason)

    if not isinstance(name, str) or not name:
        return refuse("malformed command: name must be a non-empty string")
    if name not in COMMAND_NAMES:
        return refuse(f"unknown command {name[:64]!r}")
    if name not in allowed:
        return refuse("not allowed by configuration")
    if audit_args is None:
        return refuse("malformed command: args must be a JSON object")
    if target is not None and audit_target is None:
        return refuse("malformed command: target must be a JSON object")
    if name == "acknowledgeAlert":
        alert_seq = target.get("alert_seq") if isinstance(target, dict) else None
        if not _positive_int(alert_seq) or alert_seq < 1 or set(target) != {"alert_seq"}:
            return refuse("malformed command: acknowledgeAlert needs target {\"alert_seq\": int}")
        note = args.get("note")
        if note is not None and (not isinstance(note, str) or len(note) > NOTE_MAX):
            return refuse(f"malformed command: note must be a string of at most {NOTE_MAX} "
                          f"characters")
        return _Plan(name, target, args)
    if (not isinstance(target, dict) or set(target) != {"port", "address"}
            or not isinstance(target["port"], str) or not _positive_int(target["address"])):
        return refuse(f"malformed command: {name} needs target {{\"port\": str, "
                      f"\"address\": int}}")
    if target["port"] not in drivers:
        return refuse(f"unknown port {target['port'][:64]!r}")
    if name == "setClock":
        stamp = args.get("time")
        try:
            if not isinstance(stamp, str) or "T" not in stamp:
                raise ValueError(stamp)
            parsed = dt.datetime.fromisoformat(stamp)
            if parsed.tzinfo is None:
                raise ValueError(stamp)
        except ValueError:
            return refuse("malformed command: setClock needs args {\"time\": RFC 3339 with an "
                          "offset}")
    return _Plan(name, target, args, MachineRef(target["port"], target["address"]))


class CommandRouter:
    """Validates, executes at most once per id, audits, answers. One per gateway process;
    `close()` when done. The feed calls `handle(request, requested_by="staff:<name>")`, the uplink
    `handle(request, "platform")`."""

    def __init__(self, settings: CommandSettings, outbox: AuditOutbox,
                 drivers: Mapping[str, Driver], alerts: AlertLookup | None = None) -> None:
        self.settings = settings
        self.outbox = outbox
        self.drivers = drivers
        # The feed's board when the feed runs (the daemon sets it); else the outbox is asked.
        self.alerts = alerts
        self._running: dict[str, trio.Event] = {}
        self._limiter = trio.CapacityLimiter(1)  # one thread on the connection at a time
        self.executions = 0
        try:
            settings.db_path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(settings.db_path, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(SCHEMA)
        except (sqlite3.Error, OSError) as err:
            raise StoreError(f"cannot open the command store {settings.db_path}: {err}") from err

    def close(self) -> None:
        self._db.close()

    # -- the store (each call one short statement, in a worker thread: the fsync blocks) ---------

    async def _sql(self, statement: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            try:
                return self._db.execute(statement, params).fetchall()
            except sqlite3.Error as err:
                raise StoreError(f"command store {self.settings.db_path}: {err}") from err

        with trio.CancelScope(shield=True):  # a started write must land or fail, not vanish
            return await trio.to_thread.run_sync(run, limiter=self._limiter)

    async def _row(self, command_id: str) -> tuple[Any, ...] | None:
        rows = await self._sql("SELECT state, result, reason, data, audit FROM commands "
                               "WHERE id = ?", (command_id,))
        return rows[0] if rows else None

    # -- the entry point -------------------------------------------------------------------------

    async def handle(self, request: Mapping[str, Any], requested_by: str) -> dict[str, Any]:
        """Answer `request` (see the module docstring); raises StoreError only if a store fails."""
        command_id = request.get("id") if isinstance(request, Mapping) else None
        if not isinstance(command_id, str) or not command_id or len(command_id) > ID_MAX:
            shown = command_id[:ID_MAX] if isinstance(command_id, str) else ""
            return _answer(shown, "rejected", f"malformed command: id must be a non-empty string "
                                              f"of at most {ID_MAX} characters")
        while (running := self._running.get(command_id)) is not None:
            await running.wait()
        self._running[command_id] = done = trio.Event()
        try:
            row = await self._row(command_id)
            if row is None:
                return await self._first(command_id, request, requested_by)
            return await self._repeat(command_id, row)
        finally:
            del self._running[command_id]
            done.set()

    async def _repeat(self, command_id: str, row: tuple[Any, ...]) -> dict[str, Any]:
        state, result, reason, data, audit = row
        if state == "done":
            log.info("command repeated", command_id=command_id, result=result)
            return _answer(command_id, result, reason, msgpack.unpackb(data) if data else {})
        audit_data = msgpack.unpackb(audit)
        if state == "started":
            log.warning("command interrupted by a restart", command_id=command_id,
                        name=audit_data["name"])
            result, reason, data = "failed", INTERRUPTED, None
            audit_data.update(result=result, reason=reason)
            await self._sql("UPDATE commands SET state = 'executed', result = ?, reason = ?, "
                            "audit = ? WHERE id = ?",
                            (result, reason, msgpack.packb(audit_data), command_id))
        return await self._audit_and_finish(command_id, audit_data, result, reason,
                                            msgpack.unpackb(data) if data else {})

    async def _first(self, command_id: str, request: Mapping[str, Any],
                     requested_by: str) -> dict[str, Any]:
        plan = _plan(request, self.settings.allowed, self.drivers)
        if plan.name == "acknowledgeAlert" and not plan.refusal:
            refusal = await self._alert_refusal(plan.target["alert_seq"])
            if refusal is not None:
                plan = dataclasses.replace(plan, refusal=refusal)
        audit: dict[str, Any] = {"command_id": command_id, "name": plan.name,
                                 "requested_by": requested_by}
        if plan.target is not None:
            audit["target"] = plan.target
        if plan.args:
            audit["args"] = plan.args
        if plan.refusal:
            outcome = CommandOutcome(CommandResult.REJECTED, plan.refusal)
            log.warning("command refused", command_id=command_id, name=plan.name,
                        requested_by=requested_by, reason=plan.refusal)
        else:
            await self._sql("INSERT INTO commands (id, name, requested_by, state, audit, "
                            "started_at) VALUES (?, ?, ?, 'started', ?, ?)",
                            (command_id, plan.name, requested_by,
                             msgpack.packb({**audit, "result": "failed"}), time.time()))
            outcome = await self._execute(plan, requested_by)
            log.info("command executed", command_id=command_id, name=plan.name,
                     requested_by=requested_by, result=str(outcome.result),
                     reason=outcome.reason)
        result, data = str(outcome.result), dict(outcome.data)
        audit["result"] = result
        if outcome.reason:
            audit["reason"] = outcome.reason
        await self._sql(
            "INSERT INTO commands (id, name, requested_by, state, result, reason, data, audit, "
            "started_at) VALUES (?, ?, ?, 'executed', ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE "
            "SET state = 'executed', result = excluded.result, reason = excluded.reason, "
            "data = excluded.data, audit = excluded.audit",
            (command_id, plan.name, requested_by, result, outcome.reason,
             msgpack.packb(data), msgpack.packb(audit), time.time()))
        return await self._audit_and_finish(command_id, audit, result, outcome.reason, data)

    async def _audit_and_finish(self, command_id: str, audit: dict[str, Any], result: str,
                                reason: str, data: dict[str, Any]) -> dict[str, Any]:
        if not audit.get("reason"):
            audit.pop("reason", None)
        target = audit.get("target")
        machine = None
        if (isinstance(target, dict) and isinstance(target.get("port"), str)
                and _positive_int(target.get("address"))):
            machine = MachineRef(target["port"], target["address"])
        await self.outbox.append(system_draft("commandExecuted", audit, now=time.time(),
                                              machine=machine, monotonic=trio.current_time()))
        await self._sql("UPDATE commands SET state = 'done', done_at = ? WHERE id = ?",
                        (time.time(), command_id))
        return _answer(command_id, result, reason, data)

    async def _alert_refusal(self, alert_seq: int) -> str | None:
        """Why `alert_seq` cannot be acknowledged: the feed's board knows open alerts and who
        acknowledged them; without it, the seq must at least hold an event that opens one."""
        if self.alerts is not None:
            return self.alerts.ack_refusal(alert_seq)
        rows = await self.outbox.read_after(alert_seq - 1, 1)
        if not rows or rows[0][0] != alert_seq:
            return NO_SUCH_ALERT
        try:
            event = decode_envelope(rows[0][1]).get("event")
        except ValueError:  # a damaged row: msgpack's errors are all ValueErrors
            return "that seq cannot be read"
        return None if event in OPENING_EVENTS else NO_SUCH_ALERT

    async def _execute(self, plan: _Plan, requested_by: str) -> CommandOutcome:
        self.executions += 1
        if plan.name == "acknowledgeAlert":
            assert isinstance(plan.target, dict) and plan.args is not None
            data: dict[str, Any] = {"alert_seq": plan.target["alert_seq"], "by": requested_by}
            if plan.args.get("note"):
                data["note"] = plan.args["note"]
            seq = await self.outbox.append(system_draft(
                "alertAcknowledged", data, now=time.time(), monotonic=trio.current_time()))
            return CommandOutcome(CommandResult.OK, data={"seq": seq})
        assert plan.machine is not None
        driver = self.drivers[plan.machine.port]
        command = MachineCommand(plan.name, plan.machine.address, dict(plan.args or {}))
        try:
            outcome = await driver.execute(command)
        except (LinkError, GatewayError) as err:
            # The port went away under the command: an expected failure, not a bug.
            return CommandOutcome(CommandResult.FAILED, f"{type(err).__name__}: {err}")
        if not _is_plain(dict(outcome.data)):
            return CommandOutcome(outcome.result, outcome.reason,
                                  {"unrepresentable": repr(dict(outcome.data))[:1000]})
        if plan.name == "requestMeters" and outcome.result == CommandResult.OK:
            return CommandOutcome(CommandResult.OK, outcome.reason, meters_result(
                dict(outcome.data.get("meters") or {}), outcome.data.get("denomination_cents"),
                self.settings.currency))
        return CommandOutcome(CommandResult(outcome.result), outcome.reason, outcome.data)
