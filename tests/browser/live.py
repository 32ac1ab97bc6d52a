"""A feed server and its outbox running in a trio thread, so a synchronous Playwright test can
drive the real page against it, plus a busy floor to put on it.

Playwright's sync API and trio both want the main thread's event loop; the gateway side gets a
thread of its own and the test talks to it through `trio.from_thread` (waits on its results,
never sleeps).
"""

from __future__ import annotations

import os
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import trio
import trio.from_thread

from drivers.base import MachineRef
from gateway.events import system_draft
from gateway.feed.protocol import TokenEntry, hash_token
from gateway.feed.server import FeedServer, FeedSettings
from gateway.outbox import Outbox, OutboxSettings
from gateway.signing import Signer

CHROMIUM = "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else (
    shutil.which("chromium") or shutil.which("chromium-browser"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TOKENS = (TokenEntry("ann", "attendant", hash_token("attendant-token")),
          TokenEntry("vic", "viewer", hash_token("viewer-token")))
OUTPUT = Path(__file__).parents[2] / "test-output"


def need_browser() -> None:
    """Skip without Playwright or Chromium on a workstation; fail in CI (CI=true), where a
    missing browser must not turn the board's tests into a silent pass."""
    missing = None
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = "playwright is not installed (pip install -e '.[test]')"
    if missing is None and CHROMIUM is None:
        missing = "chromium is not installed (apt-get install chromium)"
    if missing is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and {missing}")
    pytest.skip(missing)


class LiveFeed:
    """Outbox + feed server in a background trio thread. `status` is what the server's
    status() returns, mutable by the test; `acks` the alert seqs acknowledged, in order."""

    def __init__(self, tmp_path: Path, **overrides: Any) -> None:
        self.tmp_path = tmp_path
        self.settings = replace(FeedSettings(tokens=TOKENS), **overrides)
        self.status: dict[str, Any] = {"uplink_status": {
            "state": "up", "connected": True, "since": time.time() - 3600,
            "reason": "connected, events acknowledged"}}
        self.acks: list[tuple[int, str]] = []
        self.port = 0
        self.outbox: Outbox | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._stop: trio.Event | None = None
        self._feed_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self.server: FeedServer | None = None

    # -- thread side -------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            trio.run(self._run)
        except BaseException as err:
            self._failure = err
            self._ready.set()

    async def _run(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        settings = OutboxSettings(path=self.tmp_path / "outbox.db", gateway_id="board-gw",
                                  venue="Test Venue", region="test")
        self.outbox = Outbox.open(settings, Signer(nacl.signing.SigningKey.generate()))
        self.outbox.commit_listeners.append(self._seen)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.outbox.run_writer)
                await self._start_feed()
                self._ready.set()
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            self.outbox.close()

    def _seen(self, envelopes: list[dict[str, Any]]) -> None:
        for envelope in envelopes:
            if envelope["event"] == "alertAcknowledged":
                self.acks.append((envelope["data"]["alert_seq"], envelope["data"]["by"]))

    async def _start_feed(self) -> None:
        assert self._nursery is not None and self.outbox is not None

        async def serve(*, task_status: trio.TaskStatus[int]) -> None:
            with trio.CancelScope() as self._feed_scope:
                self.server = FeedServer(replace(self.settings, port=self.port), self.outbox,
                                         lambda: self.status)
                await self.server.run(task_status=task_status)

        self.port = await self._nursery.start(serve)

    async def _append(self, event: str, data: dict[str, Any] | None, port: str | None,
                      address: int) -> int:
        assert self.outbox is not None
        return await self.outbox.append(system_draft(
            event, data, now=time.time(), monotonic=trio.current_time(),
            machine=MachineRef(port, address) if port else None))

    async def _busy(self, floor: BusyFloor, stop: trio.Event) -> None:
        # Each second's events are due at a fixed tick from the start, so the time the appends
        # take (long on a loaded machine) does not slow the floor down.
        tick = trio.current_time()
        while not stop.is_set():
            for event, data, port, address in floor.next_second():
                await self._append(event, data, port, address)
            tick += 1.0
            with trio.move_on_at(tick):
                await stop.wait()

    # -- test side ---------------------------------------------------------------------------

    def __enter__(self) -> LiveFeed:
        self._thread.start()
        self._ready.wait(30)
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None and self._token is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def append(self, event: str, data: dict[str, Any] | None = None, *,
               port: str | None = "bank-a-01", address: int = 1) -> int:
        return self.call(self._append, event, data, port, address)

    def preload(self, floor: BusyFloor, count: int) -> None:
        async def load() -> None:
            for event, data, port, address in floor.preload(count):
                await self._append(event, data, port, address)
        self.call(load)

    def stop_feed(self) -> None:
        """The gateway goes away (its listener closes; the outbox stays)."""
        assert self._feed_scope is not None
        trio.from_thread.run_sync(self._feed_scope.cancel, trio_token=self._token)

    def start_feed(self) -> None:
        self.call(self._start_feed)

    @contextmanager
    def busy(self, floor: BusyFloor) -> Iterator[BusyFloor]:
        """Run `floor` (events every second) in the gateway's thread for the block's duration."""
        stop: trio.Event = self.call(_make_event)
        assert self._nursery is not None
        trio.from_thread.run_sync(self._nursery.start_soon, self._busy, floor, stop,
                                  trio_token=self._token)
        try:
            yield floor
        finally:
            trio.from_thread.run_sync(stop.set, trio_token=self._token)


async def _make_event() -> trio.Event:
    return trio.Event()


TILTS = ("bill_jam", "printer_comm_error", "reel_tilt", "hopper_empty", "low_backup_battery",
         "printer_paper_out", "general_tilt", "bill_acceptor_failure", "reel_2_tilt",
         "cashbox_full")
DOORS = ("main", "drop", "card_cage", "cashbox", "belly")


class BusyFloor:
    """A floor on a bad night: `machines` machines over `banks` banks, `opens_per_s` new alerts
    a second (and fewer closes, so the open count stays high). Deterministic with `seed`."""

    def __init__(self, machines: int = 160, banks: int = 8, opens_per_s: int = 6,
                 closes_per_s: int = 3, seed: int = 17) -> None:
        self.rng = random.Random(seed)
        self.machines = [(f"bank-{chr(97 + i % banks)}-{i // banks + 1:02d}", 1)
                         for i in range(machines)]
        self.opens_per_s = opens_per_s
        self.closes_per_s = closes_per_s
        self.open_doors: set[tuple[str, int, str]] = set()
        self.handpays: set[tuple[str, int]] = set()
        self.tilts: set[tuple[str, int, str]] = set()
        self.opened = 0

    def opener(self) -> tuple[str, dict[str, Any], str, int]:
        """One event that opens a new alert (never a repeat of an open one)."""
        while True:
            port, address = self.rng.choice(self.machines)
            roll = self.rng.random()
            if roll < 0.1 and (port, address) not in self.handpays:
                self.handpays.add((port, address))
                amount = self.rng.choice((120000, 250000, 1_500_00, 980000))
                self.opened += 1
                return ("handpayPending", {"amount": {"minor": amount, "currency": "USD"}},
                        port, address)
            if roll < 0.25:
                door = self.rng.choice(DOORS)
                if (port, address, door) not in self.open_doors:
                    self.open_doors.add((port, address, door))
                    self.opened += 1
                    return "doorOpened", {"door": door}, port, address
                continue
            kind = self.rng.choice(TILTS)
            if (port, address, kind) not in self.tilts:
                self.tilts.add((port, address, kind))
                self.opened += 1
                return "tilt", {"kind": kind}, port, address

    def closer(self) -> tuple[str, dict[str, Any], str, int] | None:
        if self.open_doors and self.rng.random() < 0.6:
            port, address, door = self.rng.choice(sorted(self.open_doors))
            self.open_doors.discard((port, address, door))
            return "doorClosed", {"door": door}, port, address
        if self.handpays:
            port, address = self.rng.choice(sorted(self.handpays))
            self.handpays.discard((port, address))
            return "handpayReset", {}, port, address
        return None

    def preload(self, count: int) -> list[tuple[str, dict[str, Any], str, int]]:
        return [self.opener() for _ in range(count)]

    def next_second(self) -> list[tuple[str, dict[str, Any], str, int]]:
        out = [self.opener() for _ in range(self.opens_per_s)]
        out += [c for c in (self.closer() for _ in range(self.closes_per_s)) if c is not None]
        self.rng.shuffle(out)
        return out


class TrioThread:
    """Runs `main(nursery)` in a trio thread of its own until the block ends; `value` is what
    it returned, `call(fn, *args)` runs an async function there and returns its result."""

    def __init__(self, main: Callable[[trio.Nursery], Any]) -> None:
        self._main_fn = main
        self.value: Any = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            trio.run(self._run)
        except BaseException as err:
            self._failure = err
            self._ready.set()

    async def _run(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.value = await self._main_fn(nursery)
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def __enter__(self) -> TrioThread:
        self._thread.start()
        self._ready.wait(60)
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None and self._token is not None:
            trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(30)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        return trio.from_thread.run_sync(fn, *args, trio_token=self._token)
