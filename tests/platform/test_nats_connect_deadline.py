"""`nats_connect` ends at its deadline however nats-py takes the cancellation. Under load (average
12) `platform init --nats-connect-timeout 3` against a server refusing the client hung past the
test's 60 s (tests/platform/test_nats_security.py, 1 of 2 runs): a cancellation that races a
completion inside nats-py's own nested asyncio.wait_for is lost on Python 3.11, and its connect
loop then retries forever -- and the one cancellation asyncio.wait_for sends was that one."""

from __future__ import annotations

import asyncio
import threading

import nats

from gateway.platform.store import NatsSettings, nats_connect
from gateway.receiver.backend import BackendError


def test_a_connect_that_loses_its_cancellation_still_ends_at_the_deadline(monkeypatch) -> None:
    cancellations: list[int] = []

    async def connect_losing_one_cancellation(**options: object) -> None:
        # nats-py's first-connection loop (max_reconnect_attempts=-1): retry, and once the
        # cancellation is lost, retry on.
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                cancellations.append(1)
                if len(cancellations) > 1:
                    raise

    monkeypatch.setattr(nats, "connect", connect_losing_one_cancellation)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(nats_connect(NatsSettings(servers=("nats://127.0.0.1:9",),
                                                  connect_deadline_s=0.2)))
        except BaseException as err:   # handed to the test thread
            outcome.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=30)   # guards the test against the hang it looks for
    assert not thread.is_alive(), "nats_connect hung past its 0.2 s deadline"
    [err] = outcome
    assert isinstance(err, BackendError) and "within 0.2 s: TimeoutError" in str(err), err
    assert len(cancellations) == 2
