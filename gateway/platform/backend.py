"""The receiver's JetStream backend (trio side): stateless receivers on one NATS cluster.

Everything a receiver knows about a gateway is read from JetStream when the gateway connects
(registry, head of its stream), so any receiver serves any gateway, and a gateway that fails
over resumes from the same mark. Per batch: the events (already verified by the server) pass
`verdict.decide` against the connection's copy of the head, are published with
`Nats-Msg-Id` = event id, and only after every publish is acknowledged is the head advanced by
compare-and-set; then the server acks the gateway. A compare-and-set that fails means another
connection of the gateway advanced the mark: this one is closed 4004 (taken over).
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import nacl.exceptions
import structlog
import trio
from nacl.signing import VerifyKey

from gateway.platform import names
from gateway.platform.bridge import AsyncioThread
from gateway.platform.store import NATS_ERRORS, NatsSettings, Platform
from gateway.receiver.backend import BackendError
from gateway.receiver.store import Checked, IngestResult, token_digest
from gateway.receiver.verdict import COUNTERS, decide
from gateway.signing import GENESIS

__all__ = ["JetStreamBackend", "NatsSettings", "open_backend"]

log = structlog.get_logger(__name__)


@asynccontextmanager
async def open_backend(settings: NatsSettings) -> AsyncIterator[JetStreamBackend]:
    bridge = AsyncioThread()
    try:
        platform = await bridge.run(Platform.open, settings)
        backend = JetStreamBackend(bridge, platform, trio.lowlevel.current_trio_token())
        await bridge.run(platform.watch_commands, backend._commands_updated)
        try:
            yield backend
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(5):
                    await bridge.run(platform.close)
    finally:
        bridge.close()


class JetStreamBackend:
    def __init__(self, bridge: AsyncioThread, platform: Platform,
                 trio_token: trio.lowlevel.TrioToken) -> None:
        self.bridge = bridge
        self.platform = platform
        self.trio_token = trio_token
        self._changed = trio.Event()

    async def _run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run on the asyncio side; a NATS failure becomes BackendError (close 1011)."""
        try:
            return await self.bridge.run(fn, *args)
        except NATS_ERRORS as err:
            raise BackendError(1011, f"NATS unavailable: {str(err) or type(err).__name__}") from None

    async def token_known(self, token: str) -> bool:
        return await self._run(self.platform.gateway_of_token, token_digest(token)) is not None

    async def check_token(self, gateway_id: str, token: str) -> bool:
        entry = await self._run(self.platform.gateway, gateway_id)
        presented = token_digest(token)
        if entry is None:
            hmac.compare_digest(presented, presented)  # same work either way
            return False
        return hmac.compare_digest(str(entry["token_sha256"]), presented)

    async def take_over(self, gateway_id: str) -> None:
        await self._run(self.platform.request_takeover, gateway_id)

    async def claim(self, gateway_id: str,
                    on_taken_over: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        stop = partial(trio.from_thread.run, on_taken_over, trio_token=self.trio_token)
        subscription = await self._run(self.platform.subscribe_takeover, gateway_id, stop)

        async def release() -> None:
            try:
                await self.bridge.run(subscription.unsubscribe)
            except NATS_ERRORS:
                pass  # the connection is gone, and the subscription with it
        return release

    async def open_stream(self, gateway_id: str, epoch: str) -> JetStreamStream:
        entry = await self._run(self.platform.gateway, gateway_id)
        head, revision = await self._run(self.platform.head, gateway_id, epoch)
        if entry is None:
            raise BackendError(1011, f"gateway {gateway_id} is no longer registered")
        keys: dict[str, VerifyKey] = {}
        for kid, hex_key in entry["keys"].items():
            try:
                keys[kid] = VerifyKey(bytes.fromhex(hex_key))
            except (ValueError, nacl.exceptions.CryptoError):
                log.error("receiver bad registered key", gateway_id=gateway_id, kid=kid)
        return JetStreamStream(self, gateway_id, epoch, entry, keys, head, revision)

    # -- commands -------------------------------------------------------------------------------

    def _commands_updated(self) -> None:
        """Called in the asyncio thread by the commands watch."""
        try:
            self.trio_token.run_sync_soon(self._wake)
        except trio.RunFinishedError:
            pass

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def commands_changed(self) -> trio.Event:
        return self._changed

    async def add_command(self, gateway_id: str, name: str, target: dict[str, Any] | None,
                          args: dict[str, Any] | None, command_id: str | None) -> str:
        return await self._run(self.platform.add_command, gateway_id, name, target, args,
                               command_id or uuid.uuid4().hex)

    async def open_commands(self, gateway_id: str, include_sent: bool) -> list[dict[str, Any]]:
        return await self._run(self.platform.open_commands, gateway_id, include_sent)

    async def mark_sent(self, gateway_id: str, command_ids: list[str]) -> None:
        def sent(row: dict[str, Any]) -> bool:
            if row["status"] != "pending":
                return False
            row["status"] = "sent"
            return True
        for command_id in command_ids:
            await self._run(self.platform.set_command, gateway_id, command_id, sent)

    async def complete_command(self, gateway_id: str, command_id: str, result: str, reason: str,
                               data: dict[str, Any]) -> bool:
        def done(row: dict[str, Any]) -> bool:
            if row["status"] == "done":
                return False
            row.update(status="done", result=result, reason=reason,
                       data=json.loads(json.dumps(data, default=repr)), done_at=time.time())
            return True
        return bool(await self._run(self.platform.set_command, gateway_id, command_id, done))

    async def command(self, command_id: str) -> dict[str, Any] | None:
        row = self.platform.command_rows.get(command_id)
        if row is None:
            return None
        found, _ = await self._run(self.platform.command, row["gateway_id"], command_id)
        return found


class JetStreamStream:
    """One connection's stream: the head as last read or written, and its KV revision."""

    def __init__(self, backend: JetStreamBackend, gateway_id: str, epoch: str,
                 entry: dict[str, Any], keys: dict[str, VerifyKey], head: dict[str, Any] | None,
                 revision: int) -> None:
        self.backend, self.gateway_id, self.epoch = backend, gateway_id, epoch
        self.keys = keys
        self.revoked = frozenset(entry.get("revoked", {}))
        self.head = head or {"high_water": 0, "last_hash": GENESIS.hex(),
                             **dict.fromkeys(COUNTERS, 0)}
        self.revision = revision
        self.high_water = int(self.head["high_water"])
        self.key = names.chain_key(gateway_id, epoch)
        self.prefix = f"{names.ROOT}.{entry['region']}.{entry['venue']}.{names.token(gateway_id)}"

    async def ingest(self, frames: list[list[Checked]]) -> list[IngestResult]:
        decision = decide(self.gateway_id, self.epoch, self.high_water,
                          bytes.fromhex(self.head["last_hash"]), frames, self.keys,
                          self.revoked.__contains__)
        if decision.learned:
            # Before the mark moves past the keyRotated: a later connection must know the key.
            await self.backend._run(self.backend.platform.change_keys, self.gateway_id,
                                    {kid: bytes(key).hex() for kid, key in
                                     decision.learned.items()})
        if decision.accepted or any(decision.counts.values()):
            head = dict(self.head)
            for name, count in decision.counts.items():
                head[name] = head.get(name, 0) + count
            head.update(high_water=decision.high_water, last_hash=decision.last_hash.hex())
            id_prefix = f"{self.gateway_id}:{self.epoch}:"
            messages = [(f"{self.prefix}.{_channel(a.channel)}.{_event(a.event)}", a.raw,
                         f"{id_prefix}{a.seq}") for a in decision.accepted]
            self.revision, duplicates = await self.backend._run(
                self.backend.platform.commit, messages, self.key, head, self.revision)
            if duplicates:
                # Published before by a receiver that died before it moved the mark.
                log.info("receiver republished events the stream already held",
                         gateway_id=self.gateway_id, epoch=self.epoch, duplicates=duplicates)
            self.head = head
            self.high_water = decision.high_water
        return decision.results


def _channel(channel: str) -> str:
    return channel if channel in names.CHANNELS else "unknown"


def _event(event: str) -> str:
    return event if names.TYPE.match(event) else "unknown"
