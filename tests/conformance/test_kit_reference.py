"""The conformance kit against the reference platform (gateway/receiver): every rule passes."""

from __future__ import annotations

from pathlib import Path

import trio

from gateway.conformance import run_kit
from gateway.conformance.kit import Settings
from gateway.conformance.run import kit_signer
from gateway.receiver import ReceiverSettings, serve_receiver


async def test_the_reference_receiver_passes_every_rule(tmp_path: Path) -> None:
    public = bytes(kit_signer().verify_key).hex()
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            handle = await nursery.start(serve_receiver, ReceiverSettings(db_path=tmp_path / "p.db"))
            handle.store.register("kit-gw-1", "kit-token-one-0123456789abcdef", public)
            handle.store.register("kit-gw-2", "kit-token-two-0123456789abcdef", public)
            await handle.submit_command("kit-gw-1", "requestMeters",
                                        {"port": "sas0", "address": 1})
            settings = Settings(handle.url, "kit-gw-1", "kit-token-one-0123456789abcdef",
                                "kit-gw-2", "kit-token-two-0123456789abcdef",
                                command_pending=True, timeout_s=2.0)
            results = await run_kit(settings)
            nursery.cancel_scope.cancel()
    report = "\n".join(f"{r.status} {r.rule} {r.detail}" for r in results)
    assert all(r.status == "PASS" for r in results), report
    assert len({r.rule for r in results}) == len(results) >= 25
