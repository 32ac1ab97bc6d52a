"""The platform's state on NATS JetStream, asyncio side (runs in the bridge's loop, or a CLI's).

- the events stream (`names.EVENTS_STREAM`, subjects `casino.>`), replicated, de-duplicated by
  `Nats-Msg-Id` = the event id over `duplicate_window_s`;
- the registry bucket: `gw.<gateway>` -> registration (token SHA-256, region, venue, keys,
  revoked kids), `tok.<token sha256>` -> gateway id;
- the chains bucket: `<gateway>.<epoch>` -> head (high_water, last_hash, counters), advanced
  by compare-and-set only after every publish of the batch was acknowledged;
- the commands bucket: `<gateway>.<hash of id>` -> a command and, once answered, its result.
docs/platform.md describes the layout for the platform's own services.
"""

from __future__ import annotations

import asyncio
import collections
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.signing
import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.kv import KeyValue

from gateway.platform import names
from gateway.receiver.backend import BackendError
from gateway.signing import key_id

__all__ = ["NatsSettings", "Platform", "StreamLimits", "nats_connect"]

log = structlog.get_logger(__name__)

NATS_ERRORS = (nats.errors.Error, asyncio.TimeoutError, OSError)
DONE_KEPT = 10_000  # answered commands a receiver keeps in memory (the bucket keeps them all)


# "stream name already in use with a different configuration": the stream exists; update it.
_STREAM_EXISTS = 10058


async def _add_or_update(js: Any, config: StreamConfig) -> None:
    try:
        await js.add_stream(config)
    except nats.js.errors.BadRequestError as err:
        if err.err_code != _STREAM_EXISTS:
            raise
        await js.update_stream(config)


async def _until_placed(deadline: float, make: Callable[[], Awaitable[Any]]) -> None:
    """Retry a stream or bucket creation until `deadline`: a cluster that just elected its meta
    leader can still refuse one (no peers yet for R3, "insufficient resources", a 503)."""
    while True:
        try:
            await make()
            return
        except NATS_ERRORS:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


@dataclass(frozen=True, kw_only=True)
class NatsSettings:
    servers: tuple[str, ...]
    creds_file: Path | None = None       # JWT + nkey credentials (decentralised auth)
    nkey_seed_file: Path | None = None   # an nkey seed (nkey users)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    publish_timeout_s: float = 10.0     # one batch's acks; then the whole batch again
    publish_attempts: int = 3           # x publish_timeout_s in all; then close 1011
    name: str = "casino-receiver"
    connect_deadline_s: float = 15.0    # the first connection; later ones retry forever


@dataclass(frozen=True, kw_only=True)
class StreamLimits:
    replicas: int = 3
    duplicate_window_s: float = 900.0  # > the longest resend after a receiver dies (docs)
    max_age_s: float = 0.0             # 0: keep until max_bytes
    max_bytes: int = -1


async def nats_connect(settings: NatsSettings) -> NATS:
    """Connect with reconnection to any of `servers` forever; TLS when a CA or client cert is
    given or a server URL is tls://."""
    tls = None
    if settings.ca_file or settings.cert_file or any(s.startswith("tls://")
                                                     for s in settings.servers):
        tls = ssl.create_default_context(cafile=str(settings.ca_file) if settings.ca_file
                                         else None)
        if settings.cert_file:
            tls.load_cert_chain(str(settings.cert_file),
                                str(settings.key_file) if settings.key_file else None)

    async def error_cb(err: Exception) -> None:
        log.warning("nats error", error=str(err) or type(err).__name__)

    async def disconnected_cb() -> None:
        log.info("nats disconnected")

    async def reconnected_cb() -> None:
        log.info("nats reconnected")

    options: dict[str, Any] = {
        "servers": list(settings.servers), "name": settings.name, "tls": tls,
        "connect_timeout": 2, "reconnect_time_wait": 0.25, "max_reconnect_attempts": -1,
        "allow_reconnect": True, "error_cb": error_cb, "disconnected_cb": disconnected_cb,
        "reconnected_cb": reconnected_cb, "pending_size": 64 * 1024 * 1024,
    }
    if settings.creds_file:
        options["user_credentials"] = str(settings.creds_file)
    if settings.nkey_seed_file:
        options["nkeys_seed"] = str(settings.nkey_seed_file)
    # nats-py retries the first connection forever too (max_reconnect_attempts=-1): a wrong CA,
    # credentials or address would hang a CLI or a starting receiver. Bounded, one line.
    try:
        return await _within(nats.connect(**options), settings.connect_deadline_s)
    except (*NATS_ERRORS, ssl.SSLError) as err:
        raise BackendError(1011, f"cannot connect to NATS {','.join(settings.servers)} within "
                           f"{settings.connect_deadline_s:g} s: {str(err) or type(err).__name__}"
                           ) from None


async def _within(connecting: Awaitable[NATS], deadline_s: float) -> NATS:
    """`connecting`'s result, or TimeoutError after `deadline_s`. Not asyncio.wait_for: it
    cancels once, and nats-py's connect loop can lose that cancellation (one racing a completion
    inside its own nested wait_for, on Python 3.11) and retry forever -- `platform init` hung so
    under load. Cancelled until it has ended."""
    task = asyncio.ensure_future(connecting)
    try:
        await asyncio.wait({task}, timeout=deadline_s)
    finally:
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
    if task.cancelled():
        raise TimeoutError()
    return task.result()


def _dump(value: dict[str, Any]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class Platform:
    """One NATS connection and handles on the stream and buckets (asyncio only)."""

    def __init__(self, nc: NATS, settings: NatsSettings) -> None:
        self.nc = nc
        self.settings = settings
        self.js: JetStreamContext = nc.jetstream(timeout=settings.publish_timeout_s,
                                                 publish_async_max_pending=20_000)
        self.registry: KeyValue
        self.chains: KeyValue
        self.commands: KeyValue
        self.command_rows: dict[str, dict[str, Any]] = {}  # command id -> row (watched)
        self._done: collections.deque[str] = collections.deque()
        self._watch_task: asyncio.Task[None] | None = None
        self._acks = _Acks(nc)
        # Read by the receiver's metrics (gateway/receiver/metrics.py) at scrape time.
        self.in_flight = 0            # events published, not yet acknowledged
        self.published = 0            # publishes acknowledged
        self.publish_duplicates = 0   # ... of which JetStream reported as duplicates
        self.cas_conflicts = 0        # KV compare-and-set refused (KeyWrongLastSequence)
        self.on_publish_acked: Callable[[float], None] = lambda seconds: None

    @classmethod
    async def open(cls, settings: NatsSettings) -> Platform:
        """Connect and bind to the stream and buckets (made by `casino-gateway platform init`)."""
        nc = await nats_connect(settings)
        self = cls(nc, settings)
        # A cluster still electing its stream leader (a node just started or restarted) times
        # out JetStream API requests for a few seconds: bind again, three times at most.
        for attempt in range(3):
            try:
                await self._bind()
                return self
            except nats.js.errors.NotFoundError:
                await nc.close()
                raise BackendError(1011, "the JetStream stream or buckets do not exist: run "
                                   "`casino-gateway platform init` first") from None
            except nats.errors.TimeoutError:
                if attempt == 2:
                    await nc.close()
                    raise
                log.warning("jetstream not answering yet; binding again", attempt=attempt + 1)
                await asyncio.sleep(1.0 + attempt)
        raise AssertionError("unreachable")

    async def _bind(self) -> None:
        await self.js.stream_info(names.EVENTS_STREAM)
        self.registry = await self.js.key_value(names.REGISTRY)
        self.chains = await self.js.key_value(names.CHAINS)
        self.commands = await self.js.key_value(names.COMMANDS)

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            try:
                await self._watch_task
            except asyncio.CancelledError:
                pass
        await self.nc.drain()

    # -- setup --------------------------------------------------------------------------------

    @staticmethod
    async def init(settings: NatsSettings, limits: StreamLimits, ready_s: float = 30.0) -> None:
        """Create (or update) the events stream and the three buckets, once JetStream answers
        (a cluster that just started elects its meta leader first; up to `ready_s`)."""
        nc = await nats_connect(settings)
        try:
            deadline = asyncio.get_running_loop().time() + ready_s
            while True:
                try:
                    await nc.jetstream(timeout=1).account_info()
                    break
                except NATS_ERRORS:
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.1)  # "no responders" comes back at once
            js = nc.jetstream(timeout=10)
            config = StreamConfig(
                name=names.EVENTS_STREAM, subjects=[f"{names.ROOT}.>"],
                retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
                num_replicas=limits.replicas, duplicate_window=limits.duplicate_window_s,
                max_age=limits.max_age_s or None, max_bytes=limits.max_bytes,
                discard=DiscardPolicy.OLD, allow_direct=True)
            await _until_placed(deadline, lambda: _add_or_update(js, config))
            for bucket, history in ((names.REGISTRY, 5), (names.CHAINS, 1),
                                    (names.COMMANDS, 1)):
                await _until_placed(deadline, lambda b=bucket, h=history: js.create_key_value(
                    bucket=b, history=h, replicas=limits.replicas, storage=StorageType.FILE))
        finally:
            await nc.close()

    # -- registry -------------------------------------------------------------------------------

    async def _get(self, kv: KeyValue, key: str) -> tuple[dict[str, Any] | None, int]:
        try:
            entry = await kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None, 0
        if entry.value is None:
            return None, entry.revision or 0
        return json.loads(entry.value), entry.revision or 0

    async def gateway(self, gateway_id: str) -> dict[str, Any] | None:
        return (await self._get(self.registry, f"gw.{names.token(gateway_id)}"))[0]

    async def gateway_of_token(self, token_sha256: str) -> str | None:
        found, _ = await self._get(self.registry, f"tok.{token_sha256}")
        return None if found is None else str(found["gateway_id"])

    async def register(self, gateway_id: str, token_sha256: str, public_key_hex: str,
                       region: str, venue: str) -> str:
        """Register (or re-key) a gateway; a new token invalidates the old one at once."""
        verify_key = nacl.signing.VerifyKey(bytes.fromhex(public_key_hex.strip()))
        kid = key_id(verify_key)
        key = f"gw.{names.token(gateway_id)}"
        while True:
            entry, revision = await self._get(self.registry, key)
            entry = entry or {"gateway_id": gateway_id, "keys": {}, "revoked": {},
                              "registered_at": time.time()}
            if kid in entry["revoked"]:
                raise ValueError(f"key {kid} of {gateway_id} was revoked; register a new key")
            old_token = entry.get("token_sha256")
            entry.update(token_sha256=token_sha256, region=region, venue=venue)
            entry["keys"][kid] = bytes(verify_key).hex()
            try:
                await self.registry.update(key, _dump(entry), last=revision)
                break
            except nats.js.errors.KeyWrongLastSequenceError:
                self.cas_conflicts += 1
                continue
        await self.registry.put(f"tok.{token_sha256}", _dump({"gateway_id": gateway_id}))
        if old_token and old_token != token_sha256:
            await self.registry.delete(f"tok.{old_token}")
        return kid

    async def change_keys(self, gateway_id: str, learn: dict[str, str] | None = None,
                          revoke: str | None = None) -> bool:
        """Add learnt keys (kid -> hex) or revoke a kid, by compare-and-set. Returns whether
        the gateway is registered (and, for `revoke`, whether the kid was one of its keys)."""
        key = f"gw.{names.token(gateway_id)}"
        while True:
            entry, revision = await self._get(self.registry, key)
            if entry is None:
                return False
            known = True
            for kid, hex_key in (learn or {}).items():
                if kid not in entry["revoked"]:
                    entry["keys"][kid] = hex_key
            if revoke is not None:
                hex_key = entry["keys"].pop(revoke, None)
                known = hex_key is not None
                if hex_key is not None:  # what it signed before stays verifiable (evidence)
                    entry.setdefault("revoked_keys", {})[revoke] = hex_key
                entry["revoked"][revoke] = time.time()
            try:
                await self.registry.update(key, _dump(entry), last=revision)
                return known
            except nats.js.errors.KeyWrongLastSequenceError:
                self.cas_conflicts += 1
                continue

    # -- takeover -----------------------------------------------------------------------------

    async def request_takeover(self, gateway_id: str) -> None:
        """Ask whichever receiver holds `gateway_id` to stop its connection; returns when it
        has (its reply), at once when none does (no responders)."""
        try:
            await self.nc.request(f"{names.TAKEOVER}.{names.token(gateway_id)}", b"",
                                  timeout=5)
            log.warning("receiver took a gateway over from another receiver",
                        gateway_id=gateway_id)
        except nats.errors.NoRespondersError:
            return
        except nats.errors.TimeoutError:
            log.warning("receiver takeover not confirmed within 5 s; the mark's compare-and-set "
                        "guards the stream", gateway_id=gateway_id)

    async def subscribe_takeover(self, gateway_id: str,
                                 stop: Callable[[], Any]) -> Any:
        """Answer takeover requests for `gateway_id` by running `stop()` (blocking, in an
        executor thread: it waits for the trio side) and then replying."""
        loop = asyncio.get_running_loop()
        running: set[asyncio.Task[None]] = set()

        async def answer(msg: Any) -> None:
            await loop.run_in_executor(None, stop)
            await msg.respond(b"stopped")

        async def handler(msg: Any) -> None:
            # In a task of its own: stopping the connection unsubscribes this subscription,
            # which cancels the subscription's callback task (and the answer with it).
            task = loop.create_task(answer(msg))
            running.add(task)
            task.add_done_callback(running.discard)

        return await self.nc.subscribe(f"{names.TAKEOVER}.{names.token(gateway_id)}",
                                       cb=handler)

    # -- chains ---------------------------------------------------------------------------------

    async def head(self, gateway_id: str, epoch: str) -> tuple[dict[str, Any] | None, int]:
        return await self._get(self.chains, names.chain_key(gateway_id, epoch))

    async def heads(self) -> dict[str, dict[str, Any]]:
        """Every stream's head, by `<gateway token>.<epoch>`."""
        out: dict[str, dict[str, Any]] = {}
        watcher = await self.chains.watchall(ignore_deletes=True)
        try:
            async for entry in watcher:
                if entry is None:
                    break
                if entry.value:
                    out[entry.key] = json.loads(entry.value)
        finally:
            await watcher.stop()
        return out

    async def commit(self, messages: list[tuple[str, bytes, str]], key: str,
                     head: dict[str, Any], revision: int) -> tuple[int, int]:
        """Publish `messages` (subject, payload, Nats-Msg-Id), pipelined; once JetStream
        acknowledged every one, advance the head at `key` from `revision` by compare-and-set.
        Returns (new revision, publishes the stream reported as duplicates)."""
        duplicates = 0
        if messages:
            duplicates = await self._publish_all(messages)
        value = _dump(head)
        for attempt in range(self.settings.publish_attempts):
            try:
                return await self.chains.update(key, value, last=revision), duplicates
            except nats.js.errors.KeyWrongLastSequenceError:
                self.cas_conflicts += 1
                current = await self.chains.get(key)
                if current.value == value:  # our own update, its answer lost in a failover
                    return current.revision or 0, duplicates
                raise BackendError(4004, "another connection of this gateway advanced its mark "
                                   "(taken over)") from None
            except NATS_ERRORS as err:
                log.warning("receiver mark update failed; retrying", key=key,
                            error=str(err) or type(err).__name__, attempt=attempt + 1)
                await asyncio.sleep(0.2 * (attempt + 1))  # a KV leader election, typically
        raise BackendError(1011, "JetStream did not store the mark; retry")

    async def _publish_all(self, messages: list[tuple[str, bytes, str]]) -> int:
        """Publish, pipelined, and wait for every ack. On a failure (no stream leader during
        an election, a lost connection, acks later than `publish_timeout_s`) publish the whole
        batch again after a short pause -- safe, each message keeps its Nats-Msg-Id -- for up
        to `publish_attempts` x `publish_timeout_s` in all; then BackendError (close 1011)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.publish_timeout_s * self.settings.publish_attempts
        pause, attempt, problem = 0.1, 0, ""
        while True:
            attempt += 1
            batch = await self._acks.expect(len(messages))
            started = loop.time()
            self.in_flight += len(messages)
            try:
                for subject, payload, msg_id in messages:
                    await self.nc.publish(subject, payload, reply=batch.reply,
                                          headers={"Nats-Msg-Id": msg_id})
                await asyncio.wait_for(asyncio.shield(batch.done),
                                       self.settings.publish_timeout_s)
                if batch.error is None:
                    self.on_publish_acked(loop.time() - started)
                    self.published += batch.acked
                    self.publish_duplicates += batch.duplicates
                    return batch.duplicates
                problem = batch.error
            except NATS_ERRORS as err:
                problem = str(err) or type(err).__name__
            finally:
                self.in_flight -= len(messages)
                self._acks.forget(batch)
            if loop.time() + pause > deadline:
                break
            log.info("receiver publish not acknowledged; again", error=problem,
                     attempt=attempt, messages=len(messages))
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
        raise BackendError(1011, f"JetStream did not acknowledge the batch: {problem}")

    # -- commands -------------------------------------------------------------------------------

    async def watch_commands(self, changed: Callable[[], None]) -> None:
        """Keep `command_rows` equal to the commands bucket; call `changed()` after updates."""
        async def run() -> None:
            while True:
                watcher = None
                try:
                    watcher = await self.commands.watchall()
                    async for entry in watcher:
                        if entry is not None and entry.value:
                            self._remember(json.loads(entry.value))
                        changed()
                except asyncio.CancelledError:
                    if watcher is not None:
                        await watcher.stop()
                    raise
                except Exception as err:  # a watch lost with its server: watch again
                    log.warning("receiver command watch lost; again", error=str(err))
                    await asyncio.sleep(0.5)

        self._watch_task = asyncio.get_running_loop().create_task(run())

    def _remember(self, row: dict[str, Any]) -> None:
        """Open commands all, answered ones only the last DONE_KEPT (for wait_command)."""
        self.command_rows[row["id"]] = row
        if row["status"] == "done":
            self._done.append(row["id"])
            while len(self._done) > DONE_KEPT:
                old = self._done.popleft()
                if self.command_rows.get(old, {}).get("status") == "done":
                    del self.command_rows[old]

    async def add_command(self, gateway_id: str, name: str, target: dict[str, Any] | None,
                          args: dict[str, Any] | None, command_id: str) -> str:
        row = {"id": command_id, "gateway_id": gateway_id, "name": name, "target": target,
               "args": args or {}, "status": "pending", "result": None, "reason": None,
               "data": None, "created_at": time.time(), "done_at": None}
        try:
            await self.commands.create(names.command_key(gateway_id, command_id), _dump(row))
        except nats.js.errors.KeyWrongLastSequenceError:
            self.cas_conflicts += 1
            raise ValueError(f"command id {command_id!r} is already used") from None
        self.command_rows.setdefault(command_id, row)  # the watch brings it too, a bit later
        return command_id

    async def command(self, gateway_id: str, command_id: str) -> tuple[dict[str, Any] | None, int]:
        return await self._get(self.commands, names.command_key(gateway_id, command_id))

    async def open_commands(self, gateway_id: str, include_sent: bool) -> list[dict[str, Any]]:
        statuses = ("pending", "sent") if include_sent else ("pending",)
        rows = [row for row in self.command_rows.values()
                if row["gateway_id"] == gateway_id and row["status"] in statuses]
        return sorted(rows, key=lambda row: (row["created_at"], row["id"]))

    async def set_command(self, gateway_id: str, command_id: str,
                          change: Callable[[dict[str, Any]], bool]) -> bool:
        """Apply `change(row)` (False: leave it) by compare-and-set; False if no such row."""
        key = names.command_key(gateway_id, command_id)
        while True:
            row, revision = await self._get(self.commands, key)
            if row is None or not change(row):
                return False
            try:
                await self.commands.update(key, _dump(row), last=revision)
                return True
            except nats.js.errors.KeyWrongLastSequenceError:
                self.cas_conflicts += 1
                continue


@dataclass(eq=False)
class _Batch:
    reply: str
    expected: int
    done: asyncio.Future[None]
    acked: int = 0
    duplicates: int = 0
    error: str | None = None


class _Acks:
    """JetStream publish acks for whole batches: one reply subject per batch (attempt), acks
    counted, not matched one by one. nats-py's publish_async keeps a future, a random token
    and a JSON parse per message: ~40% of the receiver's publish CPU (bench/jetstream.py)."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self.prefix = ""
        self.batches: dict[str, _Batch] = {}
        self.counter = 0

    async def expect(self, count: int) -> _Batch:
        if not self.prefix:
            self.prefix = self.nc.new_inbox()
            await self.nc.subscribe(f"{self.prefix}.*", cb=self._on_ack)
        self.counter += 1
        batch = _Batch(f"{self.prefix}.{self.counter}", count,
                       asyncio.get_running_loop().create_future())
        self.batches[batch.reply] = batch
        return batch

    def forget(self, batch: _Batch) -> None:
        self.batches.pop(batch.reply, None)

    async def _on_ack(self, msg: Any) -> None:
        batch = self.batches.get(msg.subject)
        if batch is None or batch.done.done():
            return  # a late ack of an attempt given up
        data = msg.data
        if msg.headers and msg.headers.get("Status") == "503":
            batch.error = "no responders: the stream has no leader"
        elif b'"error"' in data:
            batch.error = json.loads(data)["error"].get("description", "publish refused")
        elif b'"duplicate"' in data and json.loads(data).get("duplicate") is True:
            # nats-server writes `"duplicate": true` (with a space): parse, never match bytes.
            batch.duplicates += 1
        batch.acked += 1
        if batch.error is not None or batch.acked == batch.expected:
            batch.done.set_result(None)
