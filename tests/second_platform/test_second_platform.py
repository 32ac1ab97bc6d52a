"""The conformance kit against a second platform on another stack (asyncio `websockets`),
written from the docs alone: it passes every rule, and each deliberately broken variant fails
exactly the rule its flaw breaks (others pass or are skipped because they build on it)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from gateway.conformance import Result, run_kit
from gateway.conformance.kit import Settings
from gateway.conformance.run import kit_signer
from tests.second_platform.platform import FLAWS, SecondPlatform

PUBLIC_KEY_FILE = f"{bytes(kit_signer().verify_key).hex()} {kit_signer().kid}\n"


@asynccontextmanager
async def second_platform(flaws: frozenset[str]) -> AsyncIterator[tuple[SecondPlatform, Settings]]:
    platform = SecondPlatform(flaws)
    token_1 = platform.register("kit-gw-1", PUBLIC_KEY_FILE)
    token_2 = platform.register("kit-gw-2", PUBLIC_KEY_FILE)
    platform.queue_command("kit-gw-1", "requestMeters", {"port": "sas0", "address": 1})
    ready = threading.Event()
    loop_box: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    async def main() -> None:
        started, stop = asyncio.Event(), asyncio.Event()
        loop_box.append((asyncio.get_running_loop(), stop))
        serving = asyncio.create_task(platform.serve(started, stop))
        await started.wait()
        ready.set()
        await serving

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    await trio.to_thread.run_sync(ready.wait)
    settings = Settings(f"ws://127.0.0.1:{platform.port}/v1/stream", "kit-gw-1", token_1,
                        "kit-gw-2", token_2, command_pending=True, timeout_s=2.0)
    try:
        yield platform, settings
    finally:
        loop, stop = loop_box[0]
        loop.call_soon_threadsafe(stop.set)
        await trio.to_thread.run_sync(thread.join)


def report(results: list[Result]) -> str:
    return "\n".join(f"{r.status} {r.rule} {r.detail}" for r in results)


async def test_the_second_platform_passes_every_rule() -> None:
    with trio.fail_after(60):
        async with second_platform(frozenset()) as (_, settings):
            results = await run_kit(settings)
    assert all(r.status == "PASS" for r in results), report(results)


@pytest.mark.parametrize("flaw", sorted(FLAWS))
async def test_each_flaw_fails_exactly_its_rule(flaw: str) -> None:
    with trio.fail_after(60):
        async with second_platform(frozenset({flaw})) as (_, settings):
            results = await run_kit(settings)
    failed = [r.rule for r in results if r.status == "FAIL"]
    assert failed == [FLAWS[flaw]], report(results)
